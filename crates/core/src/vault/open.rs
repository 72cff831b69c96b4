//! Creating a vault, and unlocking one with a passphrase or the recovery key.

use carnet_storage::{Batch, Store};

use super::keychain::{Expected, Keychain};
use super::session::Session;
use super::Vault;
use crate::access::{check_user_name, Role};
use crate::envelope::{seal_frame, seal_frame_as};
use crate::error::{integrity, ProblemKind};
use crate::keyring::{KdfParams, SlotSecret};
use crate::keystore::ROOT_DOC;
use crate::records::{
    space, JobSlot, LogHeadV1, RegistryV1, UserV1, UsersV1, UsersV2, META_LOG_HEAD, META_REGISTRY,
    META_USERS,
};
use crate::recovery::RecoveryKey;
use crate::sealing::{LogHeadRecord, RegistryRecord, UsersRecord};
use crate::secret::Passphrase;
use crate::Error;

/// The format of new vaults (ADR 0015).
pub(crate) const NEW_VAULT_FORMAT: u16 = 2;

impl<S: Store> Vault<S> {
    /// Creates a new vault in an empty `store`, with one passphrase slot for `user`.
    ///
    /// The passphrase must have at least [`Passphrase::MIN_CHARS`] characters. The keyring is
    /// written last, so an interrupted `create` leaves no half-made vault that unlocks.
    pub fn create(
        store: S,
        user: &str,
        passphrase: &Passphrase,
        kdf: KdfParams,
    ) -> Result<Self, Error> {
        Self::create_in_format(store, user, passphrase, kdf, NEW_VAULT_FORMAT)
    }

    /// [`Vault::create`] in `format` (1 or 2): format 1 for tests of what format 2 upgrades.
    pub(crate) fn create_in_format(
        store: S,
        user: &str,
        passphrase: &Passphrase,
        kdf: KdfParams,
        format: u16,
    ) -> Result<Self, Error> {
        if store.read_doc(ROOT_DOC)?.is_some() {
            return Err(Error::AlreadyAVault);
        }
        check_user_name(user)?;
        passphrase.check_new(user)?;
        let mut keys = Keychain::generate(format, user, passphrase, kdf)?;
        let vault_id = *keys.vault_id();
        let users = vec![UserV1 {
            name: user.to_string(),
            role: Role::Admin.code(),
        }];
        // Format 2: serial 0, as the new keyring holds.
        let users = if keys.format() >= 2 {
            seal_frame_as::<UsersRecord, _>(
                2,
                keys.registry()?,
                &vault_id,
                &(),
                &UsersV2 { serial: 0, users },
            )?
        } else {
            seal_frame::<UsersRecord, _>(keys.registry()?, &vault_id, &(), &UsersV1 { users })?
        };
        let head = LogHeadV1 {
            count: 0,
            head: [0; 32],
        };
        let registry = RegistryV1 {
            patients: 0,
            head: [0; 32],
        };
        let mut batch = Batch::new();
        batch.put(space::META, META_USERS, users);
        batch.put(
            space::META,
            META_LOG_HEAD,
            seal_frame::<LogHeadRecord, _>(keys.newest_log_key()?, &vault_id, &(), &head)?,
        );
        batch.put(
            space::META,
            META_REGISTRY,
            seal_frame::<RegistryRecord, _>(keys.registry()?, &vault_id, &(), &registry)?,
        );
        // The keyring goes last: until it exists, this is not a vault.
        store.commit(batch)?;
        store.flush()?;
        keys.write_new(&store)?;
        Ok(Vault::assemble(
            store,
            Session::new(user, Role::Admin, false),
            keys,
        ))
    }

    /// Unlocks the vault in `store` with `user`'s passphrase.
    ///
    /// Fails with [`Error::WrongPassphrase`] (wrong passphrase or damaged slot),
    /// [`Error::UnknownUser`], [`Error::NotAVault`], [`Error::UnsupportedFormat`], or
    /// [`Error::Integrity`] when the keyring or the vault keys were altered. Writes only in
    /// format 2, when the slot holds an older keyring key than the vault's newest (or is
    /// legacy): the keyring is rewritten once with the slot re-protected. A process that
    /// remembers what it saw of the vault should use [`Vault::unlock_expecting`].
    pub fn unlock(store: S, user: &str, passphrase: &Passphrase) -> Result<Self, Error> {
        Self::unlock_expecting(store, user, passphrase, &Expected::default())
    }

    /// [`Vault::unlock`], refusing ([`Error::Integrity`], rolled back) a keyring or a slot
    /// older than `expected` (what this process saw before: [`Vault::format`],
    /// [`Vault::keyring_key_version`]) before anything is written. A downgrade to format 1's
    /// keyring, or an older copy of the user's slot put back, would reopen master-key
    /// injection.
    pub fn unlock_expecting(
        store: S,
        user: &str,
        passphrase: &Passphrase,
        expected: &Expected,
    ) -> Result<Self, Error> {
        Self::unlock_with(
            store,
            user,
            &SlotSecret::Passphrase(passphrase, KdfParams::default()),
            expected,
        )
    }

    /// Unlocks the vault with its recovery key, acting as `user` (who must exist): for example
    /// to give that user a new passphrase when every passphrase is lost. A recovery key that
    /// does not open this vault is [`Error::WrongPassphrase`].
    pub fn unlock_with_recovery_key(
        store: S,
        user: &str,
        key: &RecoveryKey,
    ) -> Result<Self, Error> {
        Self::unlock_with_recovery_key_expecting(store, user, key, &Expected::default())
    }

    /// [`Vault::unlock_with_recovery_key`], with the checks of [`Vault::unlock_expecting`]
    /// for the recovery key's slot.
    pub fn unlock_with_recovery_key_expecting(
        store: S,
        user: &str,
        key: &RecoveryKey,
        expected: &Expected,
    ) -> Result<Self, Error> {
        Self::unlock_with(store, user, &SlotSecret::Recovery(key), expected)
    }

    fn unlock_with(
        store: S,
        user: &str,
        secret: &SlotSecret<'_>,
        expected: &Expected,
    ) -> Result<Self, Error> {
        // The fence before the keys, and again after (fence.rs): keys read while a key
        // operation moved the fence are read again.
        let mut attempt = 0;
        let started = std::time::Instant::now();
        let (keys, fence_before) = loop {
            let fence_before = store.get(space::META, JobSlot::Fence.meta_key())?;
            match Keychain::unlock(&store, user, secret, expected) {
                Ok(keys) => break (keys, fence_before),
                // The keyring and the key store are two documents: read between two steps
                // of another process's key operation, they disagree. Not the store's doing
                // if the fence moved meanwhile, or an operation holds the store's lock.
                Err(Error::Integrity(e)) => {
                    let moved = store.get(space::META, JobSlot::Fence.meta_key())? != fence_before;
                    if !moved && store.key_operations_locked()? != Some(true) {
                        return Err(Error::Integrity(e));
                    }
                    if attempt >= 50 && started.elapsed() >= expected.wait {
                        return Err(Error::Busy {
                            operation: "key operation",
                            for_at_most: super::fence::LEASE,
                        });
                    }
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        let via_recovery = matches!(secret, SlotSecret::Recovery(_));
        // The role is read below; until then the session may only read the users record.
        let mut vault =
            Vault::assemble(store, Session::new(user, Role::Auditor, via_recovery), keys);
        vault.fence = match vault.read_fence() {
            Ok(f) if f.stored == fence_before => f,
            // Moved meanwhile, or sealed under a registry key newer than the keys read (a
            // revocation between the two reads): the keys are read again.
            Ok(_) | Err(Error::Integrity(_)) => vault.read_keys_and_fence()?,
            Err(e) => return Err(e),
        };
        vault.reread_role()?;
        Ok(vault)
    }

    /// The unlocking user's role, from the users record. A slot whose user is no longer listed
    /// (a revocation interrupted between its steps, or a user removed by another process)
    /// opens nothing.
    pub(super) fn reread_role(&mut self) -> Result<(), Error> {
        let (users, _) = self.load_users()?;
        let user = self.session.user().to_string();
        let listed = users
            .users
            .iter()
            .find(|u| u.name == user)
            .ok_or(Error::UnknownUser)?;
        let role = Role::from_code(listed.role)
            .ok_or_else(|| integrity("users", ProblemKind::Malformed, "unknown role"))?;
        self.session = Session::new(&user, role, self.session.via_recovery());
        Ok(())
    }
}
