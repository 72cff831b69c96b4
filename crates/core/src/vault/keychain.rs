//! The key hierarchy of an unlocked vault, and the two documents that hold it: the keyring
//! (`root`: the slots and the sealed master keys) and the key store (`keys`: the wrapped vault
//! keys and every wrapped patient key). One state machine: creating it, unlocking it, adding and
//! destroying patient keys, slots, and the steps of a master-key rotation
//! (docs/key-management.md).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use carnet_storage::Store;

use subtle::ConstantTimeEq;

use crate::crypto;
use crate::envelope::{self, open_frame, parse_error, seal_frame, Sealed};
use crate::error::{integrity, ProblemKind};
use crate::keyring::{
    KdfParams, Keyring, KeyringKeys, KeyringParseError, Slot, SlotAccess, SlotSecret,
    FLAG_BASELINE_PENDING, FLAG_REPLACE_RECOVERY, RECOVERY_SLOT,
};
use crate::keys::{
    BlindKey, EpochKey, KeyringKey, LogKey, PatientKey, PatientKeys, PatientWrapKey, RegistryKey,
    SealingKey, WrappedKey, REGISTRY_KEY_VERSION,
};
use crate::keystore::{KeyStore, KEYS_DOC, ROOT_DOC};
use crate::model::PatientId;
use crate::records::{
    Blind, PatientKeyAt, VaultKeyV1, VaultKeysV1, PURPOSE_BLIND, PURPOSE_KEYRING, PURPOSE_LOG,
    PURPOSE_REGISTRY,
};
use crate::recovery::RecoveryKey;
use crate::sealing::{PatientKeyRecord, RecordKind, VaultKeysRecord};
use crate::secret::Passphrase;
use crate::Error;

mod master_rotation;

/// What the caller saw of the vault before (a machine's memory of it), checked at unlock
/// before anything is written: [`crate::Vault::unlock_expecting`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expected {
    /// The format the vault was seen in: a format-1 keyring where 2 was seen is refused.
    pub format: u16,
    /// The keyring-key version the unlocking slot was seen holding: a slot holding an older
    /// one (or a legacy slot) is refused.
    pub keyring_key_version: u32,
    /// How long the unlock waits for another process's key operation that holds the keys
    /// half rewritten (at least 10 s; see [`Expected::waiting`]).
    pub wait: std::time::Duration,
}

impl Expected {
    /// An expectation of `format`, with the unlocking slot holding `keyring_key_version`.
    pub fn new(format: u16, keyring_key_version: u32) -> Self {
        Expected {
            format,
            keyring_key_version,
            wait: std::time::Duration::ZERO,
        }
    }

    /// This expectation, waiting up to `wait` (at least 10 s) at unlock for another process's
    /// key operation that holds the keyring and the key store half rewritten.
    pub fn waiting(self, wait: std::time::Duration) -> Self {
        Expected { wait, ..self }
    }
}

/// Every key of an unlocked vault.
pub(super) struct Keychain {
    keyring: Keyring,
    /// The master key of the keyring's current epoch.
    master: EpochKey,
    /// The next epoch's master, while a master-key rotation is under way.
    pending: Option<EpochKey>,
    /// Wraps patient keys: derived from the master of the key store's epoch.
    wrap_patient: PatientWrapKey,
    blind: BlindKey,
    /// The registry keys by version (the highest seals; format 1 has one).
    registry: BTreeMap<u32, RegistryKey>,
    /// The access-log keys by version (the highest seals new entries).
    log: BTreeMap<u32, LogKey>,
    /// The key store's index of wrapped keys (the document `keys`, read at unlock). Every
    /// change is written to the document first.
    index: Mutex<KeyStore>,
    /// The keyring keys by version (format 2; empty in format 1): every version a slot holds,
    /// to MAC the keyring for each.
    keyring_keys: KeyringKeys,
    /// The unlocking user's slot, opened: to re-protect it (a new keyring key) without asking
    /// for the passphrase again.
    access: SlotAccess,
    /// Whether the slot that unlocked was legacy (format 1's protection) when it was opened.
    opened_legacy: bool,
}

impl Keychain {
    /// The keys of a new vault whose first slot, for `user`, opens with `passphrase`: a fresh
    /// vault id, master key (epoch 1) and vault keys, the vault keys wrapped in the key store.
    /// Nothing is written yet ([`Keychain::write_new`]).
    pub(super) fn generate(
        format: u16,
        user: &str,
        passphrase: &Passphrase,
        kdf: KdfParams,
    ) -> Result<Keychain, Error> {
        let mut vault_id = [0u8; 16];
        crypto::fill_random(&mut vault_id)?;
        let master = EpochKey::random(1)?;
        // Format 2: a keyring key, inside the first slot and among the vault keys.
        let keyring_key = if format >= 2 {
            Some(KeyringKey::random(1)?)
        } else {
            None
        };
        let (slot, access) = Slot::create(
            &vault_id,
            user,
            SlotSecret::Passphrase(passphrase, kdf),
            &master,
            keyring_key.as_ref(),
        )?;
        let keyring = Keyring::new(format, vault_id, master.epoch(), slot);
        let blind = BlindKey::random()?;
        let registry = RegistryKey::random(REGISTRY_KEY_VERSION)?;
        let log = LogKey::random(1)?;
        let record = VaultKeysV1 {
            keys: vec![
                VaultKeyV1 {
                    purpose: PURPOSE_BLIND,
                    version: 1,
                    key: *blind.bytes_to_wrap(),
                },
                VaultKeyV1 {
                    purpose: PURPOSE_REGISTRY,
                    version: REGISTRY_KEY_VERSION,
                    key: *registry.bytes_to_wrap(),
                },
                VaultKeyV1 {
                    purpose: PURPOSE_LOG,
                    version: 1,
                    key: *log.bytes_to_wrap(),
                },
            ]
            .into_iter()
            .chain(keyring_key.as_ref().map(|k| VaultKeyV1 {
                purpose: PURPOSE_KEYRING,
                version: k.version(),
                key: *k.bytes_to_wrap(),
            }))
            .collect(),
        };
        let mut index = KeyStore::new(master.epoch());
        index.vault_keys = Some(WrappedKey::new(seal_frame::<VaultKeysRecord, _>(
            &master.vault_keys_wrap(),
            &vault_id,
            &(),
            &record,
        )?));
        Ok(Keychain {
            keyring,
            wrap_patient: master.patient_keys_wrap(),
            master,
            pending: None,
            blind,
            registry: [(REGISTRY_KEY_VERSION, registry)].into_iter().collect(),
            log: [(1, log)].into_iter().collect(),
            index: Mutex::new(index),
            opened_legacy: keyring_key.is_none(),
            keyring_keys: keyring_key.map(|k| (k.version(), k)).into_iter().collect(),
            access,
        })
    }

    /// Writes a new vault's key store, then its keyring: until the keyring exists, the store
    /// holds no vault.
    pub(super) fn write_new<S: Store>(&mut self, store: &S) -> Result<(), Error> {
        let index = self.index().encode(self.vault_id());
        store.replace_doc(KEYS_DOC, &index)?;
        let root = self.keyring.encode(&self.master, &self.keyring_keys)?;
        store.replace_doc(ROOT_DOC, &root)?;
        Ok(())
    }

    /// Opens `user`'s slot with `secret` and unwraps the vault keys.
    ///
    /// Fails with [`Error::WrongPassphrase`] (wrong passphrase or damaged slot),
    /// [`Error::UnknownUser`], [`Error::NotAVault`], [`Error::UnsupportedFormat`], or
    /// [`Error::Integrity`] when the keyring or the vault keys were altered.
    pub(super) fn unlock<S: Store>(
        store: &S,
        user: &str,
        secret: &SlotSecret<'_>,
        expected: &Expected,
    ) -> Result<Keychain, Error> {
        let root = store.read_doc(ROOT_DOC)?.ok_or(Error::NotAVault)?;
        // A keyring that is not one, beside a key store, is a vault's damaged keyring.
        let has_key_store = store.read_doc(KEYS_DOC)?.is_some();
        let keyring = Keyring::parse(&root).map_err(|e| match e {
            KeyringParseError::Foreign if has_key_store => integrity(
                "keyring",
                ProblemKind::Malformed,
                "damaged: its header is not a Carnet keyring's",
            ),
            KeyringParseError::Foreign => Error::Foreign,
            KeyringParseError::FutureVersion(v) => Error::UnsupportedFormat {
                found: u32::from(v),
                supported: u32::from(crate::keyring::VERSION),
            },
            KeyringParseError::Malformed => {
                integrity("keyring", ProblemKind::Malformed, "malformed")
            }
        })?;
        let opened = keyring.unlock(user, secret)?;
        // What the caller saw before (a machine's memory), checked before anything is written:
        // a keyring or a slot older than that is a downgrade, which would reopen injection.
        let held = opened.key.as_ref().map_or(0, KeyringKey::version);
        if expected.format >= 2 && keyring.version() < 2 {
            return Err(integrity(
                "keyring",
                ProblemKind::RolledBack,
                "format 1 where this machine saw format 2 (a downgrade)",
            ));
        }
        if expected.keyring_key_version > held {
            return Err(integrity(
                "keyring",
                ProblemKind::RolledBack,
                if held == 0 {
                    "your key slot is in format 1's protection where this machine saw it upgraded (a downgrade)".to_string()
                } else {
                    format!(
                        "your key slot holds keyring key version {held} where this machine saw {} (an older copy of it put back)",
                        expected.keyring_key_version
                    )
                },
            ));
        }
        let masters = opened.masters;
        let index = KeyStore::parse(
            &store
                .read_doc(KEYS_DOC)?
                .ok_or_else(|| integrity("key store", ProblemKind::Missing, "missing"))?,
            &keyring.vault_id,
        )?;
        // The key store is wrapped under the current epoch, or, between the two steps of a
        // master-key rotation, under the next one (docs/key-management.md, "Rotating the
        // master key").
        let index_master = match &masters.pending {
            _ if index.epoch == keyring.epoch => &masters.current,
            Some(next) if next.epoch() == index.epoch => next,
            _ => {
                return Err(integrity(
                    "key store",
                    ProblemKind::Inconsistent,
                    "wrapped under an epoch the keyring cannot open",
                ))
            }
        };
        let stored = index
            .vault_keys
            .clone()
            .ok_or_else(|| integrity("vault keys", ProblemKind::Missing, "missing"))?;
        if Sealed::parse(stored.as_bytes()).map(|s| s.key_version).ok() != Some(index.epoch) {
            return Err(integrity(
                "vault keys",
                ProblemKind::Inconsistent,
                "not sealed under the current epoch",
            ));
        }
        let (keys, _) = open_frame::<VaultKeysRecord, VaultKeysV1>(
            "vault keys",
            stored.as_bytes(),
            &index_master.vault_keys_wrap(),
            &keyring.vault_id,
            &(),
        )?;
        let find = |purpose: u8| {
            keys.keys
                .iter()
                .find(|k| k.purpose == purpose)
                .map(|k| k.key)
                .ok_or_else(|| {
                    integrity("vault keys", ProblemKind::Missing, "a vault key is missing")
                })
        };
        let keyring_keys: KeyringKeys = keys
            .keys
            .iter()
            .filter(|k| k.purpose == PURPOSE_KEYRING)
            .map(|k| (k.version, KeyringKey::from_bytes(k.version, k.key)))
            .collect();
        // The keyring key the slot holds must be the vault's of that version.
        if let Some(held) = &opened.key {
            let known = keyring_keys
                .get(&held.version())
                .is_some_and(|k| bool::from(k.bytes_to_wrap().ct_eq(held.bytes_to_wrap())));
            if !known {
                return Err(integrity(
                    "keyring",
                    ProblemKind::Inconsistent,
                    "the slot's keyring key is not the vault's",
                ));
            }
        }
        let mut chain = Keychain {
            blind: BlindKey::from_bytes(find(PURPOSE_BLIND)?),
            registry: keys
                .keys
                .iter()
                .filter(|k| k.purpose == PURPOSE_REGISTRY)
                .map(|k| (k.version, RegistryKey::from_bytes(k.version, k.key)))
                .collect(),
            log: keys
                .keys
                .iter()
                .filter(|k| k.purpose == PURPOSE_LOG)
                .map(|k| (k.version, LogKey::from_bytes(k.version, k.key)))
                .collect(),
            wrap_patient: index_master.patient_keys_wrap(),
            keyring,
            master: masters.current,
            pending: masters.pending,
            index: Mutex::new(index),
            keyring_keys,
            access: opened.access,
            opened_legacy: opened.key.is_none(),
        };
        chain.adopt_newest_keyring_key(store, opened.key.as_ref())?;
        Ok(chain)
    }

    /// The vault's keys read again with the slot `old` opened (another process changed them),
    /// refusing a keyring or slot older than `old` held.
    pub(super) fn reload<S: Store>(store: &S, old: &Keychain) -> Result<Keychain, Error> {
        let expected = Expected::new(old.format(), old.held_keyring_key_version());
        Keychain::unlock(store, "", &SlotSecret::Access(&old.access), &expected)
    }

    /// Format 2: a slot that holds an older keyring key than the vault's newest (a revocation
    /// happened since its user last unlocked), or none (a slot carried over from format 1), is
    /// re-protected with the newest now that its user's secret opened it. Writes the keyring.
    fn adopt_newest_keyring_key<S: Store>(
        &mut self,
        store: &S,
        held: Option<&KeyringKey>,
    ) -> Result<(), Error> {
        if self.keyring.version() < 2 {
            return Ok(());
        }
        // Not while another process's key operation runs: it may be replacing the keyring
        // (a revocation's end), which this write would undo. The next unlock does it.
        if store.key_operations_locked()? == Some(true) {
            return Ok(());
        }
        let Some(newest) = self.keyring_keys.values().next_back() else {
            return Ok(());
        };
        if held.is_some_and(|h| h.version() >= newest.version()) {
            return Ok(());
        }
        let mut keyring = self.keyring.clone();
        keyring.reprotect(&self.access, newest)?;
        let root = keyring.encode(&self.master, &self.keyring_keys)?;
        store.replace_doc(ROOT_DOC, &root)?;
        self.keyring = keyring;
        Ok(())
    }

    fn index(&self) -> MutexGuard<'_, KeyStore> {
        // Every mutation of the index is made after the write it mirrors succeeded, so a
        // poisoned lock still guards a consistent index.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----- what the vault is -----

    /// The vault's id.
    pub(super) fn vault_id(&self) -> &[u8; 16] {
        &self.keyring.vault_id
    }

    /// The vault's format: its keyring's version (1 or 2).
    pub(super) fn format(&self) -> u16 {
        self.keyring.version()
    }

    /// Whether the slot that unlocked was legacy when opened: carried over from format 1 (or
    /// the vault is in format 1).
    pub(super) fn opened_legacy(&self) -> bool {
        self.opened_legacy
    }

    /// Upgrade, step 1: a keyring key among the vault keys (version 1), unless there is one.
    pub(super) fn ensure_keyring_key<S: Store>(&mut self, store: &S) -> Result<(), Error> {
        if !self.keyring_keys.is_empty() {
            return Ok(());
        }
        let key = KeyringKey::random(1)?;
        self.rewrite_vault_keys(store, |keys| {
            keys.keys.push(VaultKeyV1 {
                purpose: PURPOSE_KEYRING,
                version: key.version(),
                key: *key.bytes_to_wrap(),
            });
        })?;
        self.keyring_keys.insert(key.version(), key);
        Ok(())
    }

    /// Upgrade, step 3: the keyring in version 2, holding `users_serial`; the unlocking
    /// user's slot re-protected with the keyring key, every other slot legacy until its user's
    /// next unlock. From here on the vault is in format 2.
    pub(super) fn switch_to_format_2<S: Store>(
        &mut self,
        store: &S,
        users_serial: u64,
        patient_key_floor: u32,
    ) -> Result<(), Error> {
        let key = self
            .keyring_keys
            .values()
            .next_back()
            .ok_or(Error::Internal("no keyring key to upgrade with"))?;
        let mut keyring = self.keyring.clone();
        keyring.upgrade_to_version_2();
        keyring.set_users_serial(users_serial);
        keyring.raise_patient_key_floor(patient_key_floor);
        keyring.set_flag(FLAG_BASELINE_PENDING, true);
        keyring.reprotect(&self.access, key)?;
        self.replace_keyring(store, keyring)
    }

    /// The keyring's current epoch.
    pub(super) fn epoch(&self) -> u32 {
        self.keyring.epoch
    }

    /// The epoch a master-key rotation left unfinished, if any.
    pub(super) fn pending_epoch(&self) -> Option<u32> {
        self.pending.as_ref().map(EpochKey::epoch)
    }

    /// The epoch the key store is wrapped under.
    pub(super) fn index_epoch(&self) -> u32 {
        self.index().epoch
    }

    // ----- vault keys -----

    /// The storage key of a patient's records.
    pub(super) fn blind(&self, id: &PatientId) -> Blind {
        self.blind.blind(id)
    }

    /// The registry key that seals: the newest version.
    pub(super) fn registry(&self) -> Result<&RegistryKey, Error> {
        self.registry
            .values()
            .next_back()
            .ok_or_else(|| integrity("vault keys", ProblemKind::Missing, "no registry key"))
    }

    /// The registry key of `version`, to open a record sealed under it.
    pub(super) fn registry_key(&self, version: u32) -> Result<&RegistryKey, Error> {
        self.registry.get(&version).ok_or_else(|| {
            integrity(
                "vault keys",
                ProblemKind::Missing,
                format!("registry key version {version} missing (retired, or never made)"),
            )
        })
    }

    /// The log key of `version`.
    pub(super) fn log_key(&self, version: u32) -> Result<&LogKey, Error> {
        self.log.get(&version).ok_or_else(|| {
            integrity(
                "access log",
                ProblemKind::Missing,
                format!("log key version {version} missing"),
            )
        })
    }

    /// The log key that seals new entries: the newest.
    pub(super) fn newest_log_key(&self) -> Result<&LogKey, Error> {
        self.log
            .values()
            .next_back()
            .ok_or_else(|| integrity("access log", ProblemKind::Missing, "no log key"))
    }

    /// Adds new vault-key versions after a revocation: an access-log key (later entries are
    /// closed to the removed user) and, in format 2, a registry key and a keyring key. The
    /// unlocking user's slot gets the new keyring key at once; the other slots at their users'
    /// next unlock. Replaces the key store whole, then the keyring. Records still sealed under
    /// the older registry key are re-sealed by the caller, then
    /// [`Keychain::retire_old_vault_keys`].
    pub(super) fn renew_vault_keys<S: Store>(&mut self, store: &S) -> Result<(), Error> {
        let log = LogKey::random(self.log.keys().next_back().copied().unwrap_or(0) + 1)?;
        let v2 = self.format() >= 2;
        let registry = if v2 {
            let next = self.registry.keys().next_back().copied().unwrap_or(0) + 1;
            Some(RegistryKey::random(next)?)
        } else {
            None
        };
        let keyring_key = if v2 {
            let next = self.keyring_keys.keys().next_back().copied().unwrap_or(0) + 1;
            Some(KeyringKey::random(next)?)
        } else {
            None
        };
        self.rewrite_vault_keys(store, |keys| {
            keys.keys.push(VaultKeyV1 {
                purpose: PURPOSE_LOG,
                version: log.version(),
                key: *log.bytes_to_wrap(),
            });
            if let Some(r) = &registry {
                keys.keys.push(VaultKeyV1 {
                    purpose: PURPOSE_REGISTRY,
                    version: r.version(),
                    key: *r.bytes_to_wrap(),
                });
            }
            if let Some(k) = &keyring_key {
                keys.keys.push(VaultKeyV1 {
                    purpose: PURPOSE_KEYRING,
                    version: k.version(),
                    key: *k.bytes_to_wrap(),
                });
            }
        })?;
        self.log.insert(log.version(), log);
        if let Some(r) = registry {
            self.registry.insert(r.version(), r);
        }
        if let Some(k) = keyring_key {
            let mut keyring = self.keyring.clone();
            // (The unlocking slot is gone when it was the recovery key's, being replaced.)
            if keyring.has_slot_of(&self.access) {
                keyring.reprotect(&self.access, &k)?;
            }
            self.keyring_keys.insert(k.version(), k);
            self.replace_keyring(store, keyring)?;
        }
        Ok(())
    }

    /// Removes from the vault keys every registry key but the newest (every record sealed under
    /// them has been re-sealed: an older copy of one no longer opens), and every keyring key no
    /// slot holds any more. Format 2; replaces the key store whole.
    pub(super) fn retire_old_vault_keys<S: Store>(&mut self, store: &S) -> Result<(), Error> {
        if self.format() < 2 {
            return Ok(());
        }
        let newest_registry = self.registry.keys().next_back().copied().unwrap_or(0);
        let (held, _) = self.keyring.versions_held();
        let newest_keyring = self.keyring_keys.keys().next_back().copied().unwrap_or(0);
        let keep_keyring = |v: u32| held.contains(&v) || v == newest_keyring;
        let stale = self.registry.keys().any(|v| *v != newest_registry)
            || self.keyring_keys.keys().any(|v| !keep_keyring(*v));
        if !stale {
            return Ok(());
        }
        self.rewrite_vault_keys(store, |keys| {
            keys.keys.retain(|k| match k.purpose {
                PURPOSE_REGISTRY => k.version == newest_registry,
                PURPOSE_KEYRING => keep_keyring(k.version),
                _ => true,
            });
        })?;
        self.registry.retain(|v, _| *v == newest_registry);
        self.keyring_keys.retain(|v, _| keep_keyring(*v));
        Ok(())
    }

    /// Opens the vault keys, changes them with `change`, and replaces the key store whole with
    /// them re-sealed (under the current epoch, which the key store must be at).
    fn rewrite_vault_keys<S: Store>(
        &mut self,
        store: &S,
        change: impl FnOnce(&mut VaultKeysV1),
    ) -> Result<(), Error> {
        let vault_id = *self.vault_id();
        let wrap = self.master.vault_keys_wrap();
        let mut index = self.index();
        if index.epoch != self.master.epoch() {
            return Err(Error::Internal(
                "the key store is not under the current epoch",
            ));
        }
        let stored = index
            .vault_keys
            .clone()
            .ok_or_else(|| integrity("vault keys", ProblemKind::Missing, "missing"))?;
        let (mut keys, _) = open_frame::<VaultKeysRecord, VaultKeysV1>(
            "vault keys",
            stored.as_bytes(),
            &wrap,
            &vault_id,
            &(),
        )?;
        change(&mut keys);
        let mut next = KeyStore::new(index.epoch);
        next.vault_keys = Some(WrappedKey::new(seal_frame::<VaultKeysRecord, _>(
            &wrap,
            &vault_id,
            &(),
            &keys,
        )?));
        next.patient = index.patient.clone();
        next.earlier = index.earlier.clone();
        store.replace_doc(KEYS_DOC, &next.encode(&vault_id))?;
        *index = next;
        Ok(())
    }

    // ----- patient keys -----

    /// The record keys of one version of a patient's key.
    pub(super) fn patient_keys(&self, at: PatientKeyAt) -> Result<PatientKeys, Error> {
        let wrapped = self
            .index()
            .patient
            .get(&at)
            .cloned()
            .ok_or_else(|| integrity(at.to_string(), ProblemKind::Missing, "missing"))?;
        Ok(self.open_patient_key(&at, &wrapped)?.derive())
    }

    /// Reads the key store again and takes in the patient keys another process sharing the
    /// store appended since (a `Vault` on PostgreSQL beside others): keys already known stay as
    /// they are, and a new one is authenticated when it is opened, as at unlock. A key store
    /// rewritten under another epoch (a master-key rotation elsewhere) is left alone: the keys
    /// missing stay missing. Returns whether any key was taken in.
    pub(super) fn refresh_patient_keys<S: Store>(&self, store: &S) -> Result<bool, Error> {
        let Some(bytes) = store.read_doc(KEYS_DOC)? else {
            return Ok(false);
        };
        let fresh = KeyStore::parse(&bytes, self.vault_id())?;
        let mut index = self.index();
        if fresh.epoch != index.epoch {
            return Ok(false);
        }
        let mut added = false;
        let earlier = fresh
            .earlier
            .into_iter()
            .flat_map(|(at, ws)| ws.into_iter().map(move |w| (at, w)));
        for (at, w) in fresh.patient.into_iter().chain(earlier) {
            match index.patient.get(&at) {
                None => {
                    index.patient.insert(at, w);
                    added = true;
                }
                // Another process appended another key for a place this one knows: a candidate
                // (the patient's record tells which key is its own; the same key is no news).
                Some(_) => added |= index.add_earlier(at, w),
            }
        }
        Ok(added)
    }

    /// Unwraps a patient key (docs/format.md, "Records", kind 2: raw 32 bytes, no frame).
    pub(super) fn open_patient_key(
        &self,
        at: &PatientKeyAt,
        wrapped: &WrappedKey,
    ) -> Result<PatientKey, Error> {
        let location = at.to_string();
        let sealed = Sealed::parse(wrapped.as_bytes()).map_err(|e| parse_error(&location, e))?;
        if sealed.key_version != self.wrap_patient.epoch() {
            return Err(integrity(
                &location,
                ProblemKind::Inconsistent,
                "not wrapped under the current epoch",
            ));
        }
        let plain = sealed.open_at::<PatientKeyRecord>(
            &location,
            &self.wrap_patient,
            self.vault_id(),
            at,
        )?;
        let raw: [u8; 32] = plain[..]
            .try_into()
            .map_err(|_| envelope::malformed_payload(&location))?;
        Ok(PatientKey::from_bytes(at.version, raw))
    }

    /// A fresh patient key for `at`, and its wrapped form (not stored yet: see
    /// [`Keychain::append_patient_keys`]).
    pub(super) fn new_patient_key(
        &self,
        at: PatientKeyAt,
    ) -> Result<(PatientKey, WrappedKey), Error> {
        let key = PatientKey::random(at.version)?;
        let wrapped = envelope::seal::<PatientKeyRecord>(
            &self.wrap_patient,
            self.vault_id(),
            &at,
            key.bytes_to_wrap(),
        )?;
        Ok((key, WrappedKey::new(wrapped)))
    }

    /// The other keys the key store holds for `at` (see `KeyStore::earlier`).
    pub(super) fn patient_key_candidates(&self, at: &PatientKeyAt) -> Vec<WrappedKey> {
        self.index().earlier.get(at).cloned().unwrap_or_default()
    }

    /// Makes `w` the key used for `at` from now on: it opened the patient's record.
    pub(super) fn choose_patient_key(&self, at: PatientKeyAt, w: WrappedKey) {
        self.index().choose(at, w);
    }

    /// The wrapped key the key store holds for `at`, if any.
    /// A key wrapped under another epoch than the key store's is a leftover (an append of a
    /// process whose write was then refused, ADR 0019): not reused.
    pub(super) fn stored_patient_key(&self, at: &PatientKeyAt) -> Option<WrappedKey> {
        let epoch = self.wrap_patient.epoch();
        let index = self.index();
        let current =
            |w: &&WrappedKey| Sealed::parse(w.as_bytes()).is_ok_and(|s| s.key_version == epoch);
        index
            .patient
            .get(at)
            .filter(current)
            .or_else(|| index.earlier.get(at).and_then(|ws| ws.iter().find(current)))
            .cloned()
    }

    /// Whether the key store holds `at`.
    pub(super) fn has_patient_key(&self, at: &PatientKeyAt) -> bool {
        self.index().patient.contains_key(at)
    }

    /// Every patient key in the key store (patient and version).
    pub(super) fn patient_key_index(&self) -> Vec<PatientKeyAt> {
        self.index().patient.keys().copied().collect()
    }

    /// Every wrapped patient key, for `verify`.
    pub(super) fn wrapped_patient_keys(&self) -> Vec<(PatientKeyAt, WrappedKey)> {
        self.index()
            .patient
            .iter()
            .map(|(at, w)| (*at, w.clone()))
            .collect()
    }

    /// Adds wrapped patient keys to the key store: appended durably, or, after a torn append,
    /// by rewriting the whole document.
    pub(super) fn append_patient_keys<S: Store>(
        &self,
        store: &S,
        keys: Vec<(PatientKeyAt, WrappedKey)>,
    ) -> Result<(), Error> {
        let mut index = self.index();
        if index.torn {
            let mut next = KeyStore::new(index.epoch);
            next.vault_keys = index.vault_keys.clone();
            next.patient = index.patient.clone();
            next.earlier = index.earlier.clone();
            for (at, w) in &keys {
                next.choose(*at, w.clone());
            }
            store.replace_doc(KEYS_DOC, &next.encode(self.vault_id()))?;
            *index = next;
            return Ok(());
        }
        let mut bytes = Vec::new();
        for (at, w) in &keys {
            bytes.extend_from_slice(&KeyStore::patient_entry(at, w));
        }
        store.append_doc(KEYS_DOC, &bytes)?;
        for (at, w) in keys {
            index.choose(at, w);
        }
        Ok(())
    }

    /// Removes patient key versions from the key store (rewriting it whole); returns how many.
    pub(super) fn destroy_patient_keys<S: Store>(
        &self,
        store: &S,
        which: &[PatientKeyAt],
    ) -> Result<u64, Error> {
        if which.is_empty() {
            return Ok(0);
        }
        let mut index = self.index();
        let mut next = KeyStore::new(index.epoch);
        next.vault_keys = index.vault_keys.clone();
        next.patient = index.patient.clone();
        next.earlier = index.earlier.clone();
        let mut n = 0;
        for at in which {
            if next.remove(at) {
                n += 1;
            }
        }
        store.replace_doc(KEYS_DOC, &next.encode(self.vault_id()))?;
        *index = next;
        Ok(n)
    }

    // ----- slots -----

    /// The KDF parameters of `user`'s slot, if the user has one.
    pub(super) fn slot_kdf(&self, user: &str) -> Option<KdfParams> {
        self.keyring.slot(user).map(|s| s.kdf())
    }

    /// Whether a slot named `name` exists.
    pub(super) fn has_slot(&self, name: &str) -> bool {
        self.keyring.slot(name).is_some()
    }

    /// How many slots the keyring holds (users and the recovery key).
    pub(super) fn slot_count(&self) -> u64 {
        self.keyring.slots().len() as u64
    }

    /// Writes a new slot named `name` opened by `secret`, replacing any slot of that name: the
    /// master of the current epoch (and of a pending one) sealed to it, the keyring replaced.
    pub(super) fn put_slot<S: Store>(
        &mut self,
        store: &S,
        name: &str,
        secret: SlotSecret<'_>,
    ) -> Result<(), Error> {
        let vault_id = *self.vault_id();
        // Keyed only in a version-2 keyring (an upgrade interrupted after its first step has a
        // keyring key among the vault keys and a version-1 keyring).
        let current = if self.keyring.version() >= 2 {
            self.keyring_keys.values().next_back()
        } else {
            None
        };
        let (mut slot, access) = Slot::create(&vault_id, name, secret, &self.master, current)?;
        if let Some(next) = &self.pending {
            slot.add_seal(&vault_id, next)?;
        }
        let mut keyring = self.keyring.clone();
        keyring.add_slot(slot);
        self.replace_keyring(store, keyring)?;
        // The unlocking user's own slot replaced (a passphrase change): later re-protections
        // use the new slot's secrets.
        if access.opens_same_slot(&self.access) {
            self.access = access;
        }
        Ok(())
    }

    /// Removes `name`'s slot (never the last user's) and replaces the keyring; in format 2 the
    /// keyring also records, authenticated, the revocation under way (`target`: the patient-key
    /// version it brings every patient to), so that it cannot be made to look finished.
    ///
    /// With `replace_recovery` (format 2), the recovery key's slot goes in the same write and
    /// the keyring says a new one is to be made at the end ([`Keychain::end_revocation`]): the
    /// new master is never sealed to the old recovery key.
    pub(super) fn remove_slot<S: Store>(
        &mut self,
        store: &S,
        name: Option<&str>,
        target: u32,
        replace_recovery: bool,
    ) -> Result<(), Error> {
        let mut keyring = self.keyring.clone();
        if let Some(name) = name {
            keyring.remove_slot(name)?;
        }
        if keyring.version() >= 2 {
            keyring.set_pending_revocation(Some(target));
            if replace_recovery {
                keyring.remove_recovery_slot();
                keyring.set_flag(FLAG_REPLACE_RECOVERY, true);
            }
        }
        self.replace_keyring(store, keyring)
    }

    /// Format 2: whether the revocation under way replaces the recovery key at its end.
    pub(super) fn replacing_recovery(&self) -> bool {
        self.keyring.has_flag(FLAG_REPLACE_RECOVERY)
    }

    /// The end of a revocation, in one keyring write: the mark cleared, the patient-key floor
    /// raised to its target (format 2), and, when the keyring says so, a new recovery slot
    /// opened by `recovery`.
    pub(super) fn end_revocation<S: Store>(
        &mut self,
        store: &S,
        target: u32,
        recovery: Option<&RecoveryKey>,
    ) -> Result<(), Error> {
        if self.keyring.version() < 2 {
            return Ok(());
        }
        let mut keyring = self.keyring.clone();
        if let Some(key) = recovery {
            let vault_id = *self.vault_id();
            let (slot, _) = Slot::create(
                &vault_id,
                RECOVERY_SLOT,
                SlotSecret::Recovery(key),
                &self.master,
                self.keyring_keys.values().next_back(),
            )?;
            keyring.add_slot(slot);
        }
        keyring.set_pending_revocation(None);
        keyring.set_flag(FLAG_REPLACE_RECOVERY, false);
        keyring.raise_patient_key_floor(target);
        self.replace_keyring(store, keyring)
    }

    /// Format 2: the lowest patient-key version a patient's record may be under (the target of
    /// the last revocation finished); 0 in format 1.
    pub(super) fn patient_key_floor(&self) -> u32 {
        self.keyring.patient_key_floor()
    }

    /// Format 2: the users record is one serial ahead of the keyring (a crash between the two
    /// writes): the keyring catches up, so that the next record is one ahead again, not two.
    pub(super) fn catch_up_users_serial<S: Store>(
        &mut self,
        store: &S,
        stored: u64,
    ) -> Result<(), Error> {
        if self.keyring.version() < 2 || stored <= self.keyring.users_serial() {
            return Ok(());
        }
        let mut keyring = self.keyring.clone();
        keyring.set_users_serial(stored);
        self.replace_keyring(store, keyring)
    }

    /// Format 2: whether an upgrade's baseline entries are still to be written.
    pub(super) fn baseline_pending(&self) -> bool {
        self.keyring.has_flag(FLAG_BASELINE_PENDING)
    }

    /// Format 2: the upgrade's baseline entries are written.
    pub(super) fn clear_baseline_pending<S: Store>(&mut self, store: &S) -> Result<(), Error> {
        if !self.baseline_pending() {
            return Ok(());
        }
        let mut keyring = self.keyring.clone();
        keyring.set_flag(FLAG_BASELINE_PENDING, false);
        self.replace_keyring(store, keyring)
    }

    /// Whether a keyring key is among the vault keys while the keyring is in version 1: an
    /// upgrade interrupted after its first step.
    pub(super) fn upgrade_started(&self) -> bool {
        self.keyring.version() < 2 && !self.keyring_keys.is_empty()
    }

    /// The keyring-key version the unlocking slot holds now (0: legacy, or format 1): what a
    /// machine remembers, to refuse an older copy of the slot later.
    pub(super) fn held_keyring_key_version(&self) -> u32 {
        self.keyring.held_version(&self.access)
    }

    /// Format 2: records in the keyring the revocation under way, or its end (`None`).
    pub(super) fn mark_revocation<S: Store>(
        &mut self,
        store: &S,
        target: Option<u32>,
    ) -> Result<(), Error> {
        if self.keyring.version() < 2 || self.keyring.pending_revocation() == target {
            return Ok(());
        }
        let mut keyring = self.keyring.clone();
        keyring.set_pending_revocation(target);
        self.replace_keyring(store, keyring)
    }

    /// Format 2: the serial number of the users record, as the keyring holds it.
    pub(super) fn users_serial(&self) -> u64 {
        self.keyring.users_serial()
    }

    /// Format 2: a users record of `serial` was written; the keyring's next write says so.
    pub(super) fn set_users_serial(&mut self, serial: u64) {
        self.keyring.set_users_serial(serial);
    }

    /// Format 2: the revocation under way that the keyring records, if any (its target
    /// patient-key version).
    pub(super) fn revocation_marked(&self) -> Option<u32> {
        self.keyring.pending_revocation()
    }

    /// The keyring keys this vault holds (what a user who unlocked it could keep).
    #[cfg(test)]
    pub(super) fn keyring_keys_for_tests(&self) -> Vec<KeyringKey> {
        self.keyring_keys
            .values()
            .map(|k| KeyringKey::from_bytes(k.version(), *k.bytes_to_wrap()))
            .collect()
    }

    /// Format 2: slots that hold an older keyring key than the newest (their users have not
    /// unlocked since a revocation: open to injection by the removed user until they do).
    pub(super) fn slots_behind(&self) -> u64 {
        let Some(newest) = self.keyring_keys.keys().next_back().copied() else {
            return 0;
        };
        self.keyring.slots_holding_below(newest)
    }

    /// Format 2: slots carried over from format 1 that their users have not reopened since
    /// (open to master-key injection until they do).
    pub(super) fn legacy_slots(&self) -> u64 {
        if self.keyring.version() < 2 {
            return 0;
        }
        self.keyring
            .slots()
            .iter()
            .filter(|s| s.is_legacy())
            .count() as u64
    }

    /// Writes `keyring`, authenticated under the current master, then holds it.
    fn replace_keyring<S: Store>(&mut self, store: &S, mut keyring: Keyring) -> Result<(), Error> {
        store.replace_doc(ROOT_DOC, &keyring.encode(&self.master, &self.keyring_keys)?)?;
        self.keyring = keyring;
        Ok(())
    }
}

/// Opens a wrapped key of kind `R` under `old` and seals it again under `new`, at `place`.
fn rewrap<R: RecordKind>(
    vault_id: &[u8; 16],
    location: &str,
    wrapped: &WrappedKey,
    place: &R::Place,
    old: &R::Key,
    new: &R::Key,
) -> Result<WrappedKey, Error> {
    let sealed = Sealed::parse(wrapped.as_bytes()).map_err(|e| parse_error(location, e))?;
    let plain = sealed.open_at::<R>(location, old, vault_id, place)?;
    Ok(WrappedKey::new(envelope::seal_as::<R>(
        sealed.format,
        new,
        vault_id,
        place,
        &plain,
    )?))
}
