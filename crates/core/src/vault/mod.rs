//! The [`Vault`]: an unlocked vault over any [`Store`], and every operation on it, one job per
//! file (docs/architecture.md, "Modules"):
//!
//! | file | job |
//! | --- | --- |
//! | `open.rs` | creating a vault and unlocking one |
//! | `session.rs` | who unlocked it, with which role; permission checks |
//! | `keychain.rs` | the key hierarchy: the keyring, the master keys, the vault keys, the key store |
//! | `patients.rs` | opening a patient: its record, key and manifest |
//! | `notes.rs` | opening note versions and checking a patient's note chain |
//! | `read.rs` | reads, and the cache of chains already verified |
//! | `write.rs` | the write transaction, and the writes built on it |
//! | `contention.rs` | many threads on one vault: writers that lost a race retry, reads that saw two moments read again |
//! | `import.rs` | bulk import |
//! | `references.rs` | patient references: giving them, finding a patient by one |
//! | `search.rs` | search |
//! | `verify.rs` | checking the whole vault |
//! | `logging.rs` | the access log: appending, reading, checkpoints |
//! | `jobs.rs` | job records of long operations |
//! | `users.rs` | users, slots, passphrases, the recovery key, revocation |
//! | `rotate_master.rs`, `rotate_patients.rs`, `erase.rs`, `status.rs` | key lifecycle |
//! | `upgrade.rs` | upgrading a format-1 vault to format 2 |

use std::sync::{Mutex, MutexGuard};

use carnet_storage::{DocReader, Store};

#[cfg(test)]
mod attacks;
mod contention;
mod erase;
mod fence;
mod import;
mod jobs;
mod keychain;
mod logging;
mod notes;
mod open;
mod patients;
mod read;
mod references;
#[cfg(test)]
mod review_attacks;
#[cfg(test)]
mod review_concurrency;
mod rotate_master;
mod rotate_patients;
mod search;
mod session;
mod status;
mod upgrade;
mod users;
mod verify;
mod write;

pub use import::{Import, ImportSummary};
pub use keychain::Expected;
pub use rotate_master::MasterRotation;
pub use rotate_patients::{PatientRotation, Patients};
pub use status::KeyStatus;
pub use upgrade::Upgrade;
pub use users::Revocation;
pub use verify::VerifyReport;

use crate::keyring::KdfParams;
use keychain::Keychain;
use logging::LogState;
use read::ChainCache;
use session::Session;

/// Whether the store whose documents `docs` reads holds a vault (its keyring), without
/// unlocking or writing anything: any [`Store`], or [`carnet_storage::SledStore::documents`]
/// for a directory before opening it. A damaged keyring still counts (unlocking then says
/// what is wrong).
pub fn is_vault(docs: &impl DocReader) -> Result<bool, crate::Error> {
    Ok(docs.document(crate::keystore::ROOT_DOC)?.is_some())
}

/// The id of the vault whose documents `docs` reads, without unlocking anything (the keyring
/// names it in clear): `None` when there is no vault; an error when its keyring is damaged.
pub fn vault_id(docs: &impl DocReader) -> Result<Option<[u8; 16]>, crate::Error> {
    let Some(root) = docs.document(crate::keystore::ROOT_DOC)? else {
        return Ok(None);
    };
    crate::keyring::Keyring::parse(&root)
        .map(|k| Some(k.vault_id))
        .map_err(|_| {
            crate::error::integrity("keyring", crate::error::ProblemKind::Malformed, "malformed")
        })
}

/// An unlocked vault over any [`Store`].
///
/// Every read authenticates what it returns, including that no record of the patient was
/// removed, moved or replaced (the patient's note chain is checked against its manifest).
/// Every write is one atomic batch, made durable before the call returns.
pub struct Vault<S: Store> {
    store: S,
    /// Who unlocked the vault, and what they may do.
    session: Session,
    /// Every key this vault holds while unlocked.
    keys: Keychain,
    /// Chains of patients already verified, for fast single-note reads.
    chains: ChainCache,
    /// When reads' access-log entries reach the disk.
    log: LogState,
    /// Held while a transaction or a log entry writes (key store, then records), so that
    /// writers of this `Vault` cannot interleave between the two.
    write_lock: Mutex<()>,
    /// The fence of key operations as read with the keys (`fence.rs`).
    fence: fence::FenceSeen,
    /// How long to wait for another process's key operation.
    patience: fence::Patience,
    /// Held by a single write (`add_patient`, `add_note`, `amend_note`) from reading the state
    /// it changes to its commit: this `Vault`'s writers take turns instead of losing
    /// compare-and-swap races to each other (`contention.rs`).
    txn_lock: Mutex<()>,
    /// Where patients' references were found (`references.rs`).
    refs: Mutex<references::RefIndex>,
}

impl<S: Store> Vault<S> {
    fn assemble(store: S, session: Session, keys: Keychain) -> Self {
        Vault {
            store,
            session,
            keys,
            chains: ChainCache::default(),
            log: LogState::default(),
            fence: fence::FenceSeen::default(),
            patience: fence::Patience::default(),
            write_lock: Mutex::default(),
            txn_lock: Mutex::default(),
            refs: Mutex::default(),
        }
    }

    /// The current master key epoch (1 for a new vault; each rotation adds one).
    pub fn epoch(&self) -> u32 {
        self.keys.epoch()
    }

    /// The KDF parameters of `user`'s slot, if the user exists.
    pub fn kdf_params(&self, user: &str) -> Option<KdfParams> {
        self.keys.slot_kdf(user)
    }

    /// The vault's format: 1, or 2 (ADR 0015). A format-1 vault stays readable and writable;
    /// [`Vault::upgrade`] makes it format 2.
    pub fn format(&self) -> u16 {
        self.keys.format()
    }

    /// Whether the slot that unlocked this vault was a legacy one (format 1's protection,
    /// open to master-key injection) when it was opened: in a format-1 vault, always; in
    /// format 2, a slot its user had not reopened since the upgrade (it is re-protected now).
    /// A machine that saw this user's slot re-protected before should treat a legacy slot as
    /// a downgrade.
    pub fn unlocked_legacy_slot(&self) -> bool {
        self.keys.opened_legacy()
    }

    /// The keyring-key version the unlocking slot holds now (format 2; 0 in format 1): with
    /// [`Vault::format`], what a process remembers to give [`Vault::unlock_expecting`] next
    /// time.
    pub fn keyring_key_version(&self) -> u32 {
        self.keys.held_keyring_key_version()
    }

    /// The underlying store (for backups and diagnostics; it holds only ciphertext).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The vault's id (bound into every record's associated data).
    fn vault_id(&self) -> &[u8; 16] {
        self.keys.vault_id()
    }

    /// Held by anything that writes records or documents, in the order it must.
    fn writing(&self) -> MutexGuard<'_, ()> {
        // Poisoning is harmless: the guard protects no data, only the order of writes.
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: Store> Vault<S> {
    /// Held by a single write from reading its state to its commit (see `txn_lock`).
    fn txn_turn(&self) -> MutexGuard<'_, ()> {
        // Poisoning is harmless: the guard protects no data, only whose turn it is.
        self.txn_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: Store> Drop for Vault<S> {
    /// Flushes access-log entries that [`crate::ReadLog::Grouped`] left unflushed (an error
    /// cannot be reported from here: call [`Vault::sync_log`] to see it).
    fn drop(&mut self) {
        let _ = self.sync_log();
    }
}

impl<S: Store> std::fmt::Debug for Vault<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("epoch", &self.keys.epoch())
            .finish_non_exhaustive()
    }
}
