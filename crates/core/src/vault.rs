//! The [`Vault`]: create, unlock, and every operation on patients and notes.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use carnet_storage::{Batch, Store};

use crate::crypto::{
    self, LABEL_BLIND, LABEL_PATIENT_MANIFEST, LABEL_PATIENT_NOTE, LABEL_PATIENT_RECORD,
    LABEL_WRAP_PATIENT_KEY, LABEL_WRAP_VAULT_KEYS,
};
use crate::envelope::{self, Kind, ParseError, Sealed};
use crate::frame;
use crate::keyring::{KdfParams, Keyring, KeyringParseError, Slot, SlotSecret};
use crate::keystore::{KeyStore, KEYS_DOC, ROOT_DOC};
use crate::model::{
    check_field, BirthDate, NewNote, NewPatient, Note, NoteBody, NoteId, Patient, PatientId,
    SearchHit, Timestamp,
};
use crate::records::{
    note_key, note_link, parse_note_key, patient_key_key, registry_link, space, Blind, JobV1,
    ManifestV1, NoteMetaV1, PatientV1, RegistryV1, UserV1, UsersV1, VaultKeyV1, VaultKeysV1,
    JOB_IMPORT, META_IMPORT_JOB, META_JOB, META_LOG_HEAD, META_REGISTRY, META_REVOKE_JOB,
    META_USERS, PURPOSE_BLIND, PURPOSE_LOG, PURPOSE_REGISTRY,
};
use crate::recovery::RecoveryKey;
use crate::secret::{Passphrase, SecretKey};
use crate::users::{seal_users, Duty, Role};
use crate::{Error, IntegrityError};

/// The user whose slot `create` makes unless told otherwise.
pub const DEFAULT_USER: &str = "admin";
/// Registry records are sealed under this version of the registry key.
pub(crate) const REGISTRY_KEY_VERSION: u32 = 1;
/// Notes per atomic batch during an import.
const IMPORT_BATCH_NOTES: usize = 1000;
/// Plaintext bytes per atomic batch during an import.
const IMPORT_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// An unlocked vault over any [`Store`].
///
/// Every read authenticates what it returns, including that no record of the patient was
/// removed, moved or replaced (the patient's note chain is checked against its manifest).
/// Every write is one atomic batch, made durable before the call returns.
pub struct Vault<S: Store> {
    pub(crate) store: S,
    /// Whose slot unlocked the vault.
    pub(crate) user: String,
    pub(crate) keyring: Keyring,
    /// The master key of the keyring's current epoch.
    pub(crate) master: SecretKey,
    /// The next epoch and its master, while a master-key rotation is under way.
    pub(crate) pending: Option<(u32, SecretKey)>,
    /// Wraps patient keys; derived from the master of the key store's epoch.
    pub(crate) wrap_patient: SecretKey,
    pub(crate) blind_key: SecretKey,
    pub(crate) registry_key: SecretKey,
    /// The unlocking user's role.
    pub(crate) role: Role,
    /// The access-log keys by version (the highest seals new entries).
    pub(crate) log_keys: std::collections::BTreeMap<u32, SecretKey>,
    /// Whether the recovery key (not a passphrase) unlocked the vault.
    pub(crate) via_recovery: bool,
    /// The key store's index of wrapped keys (the document `keys`, read at unlock).
    pub(crate) keys: Mutex<KeyStore>,
    /// Held while a transaction writes (key store, then records), so that writers of this
    /// `Vault` cannot interleave between the two.
    pub(crate) write_lock: Mutex<()>,
    /// Per patient, the latest version of each note as of a fully verified chain, keyed by the
    /// manifest it was verified against. Lets single-note reads skip re-verifying the whole
    /// chain while the manifest is unchanged (docs/architecture.md, "Reads").
    chains: Mutex<HashMap<Blind, VerifiedChain>>,
    /// When reads' access-log entries are flushed, and the last flush of a grouped one.
    pub(crate) read_log: crate::log::ReadLog,
    pub(crate) log_unsynced: Mutex<Option<std::time::Instant>>,
}

impl<S: Store> Drop for Vault<S> {
    /// Flushes access-log entries that [`crate::ReadLog::Grouped`] left unflushed (an error
    /// cannot be reported from here: call [`Vault::sync_log`] to see it).
    fn drop(&mut self) {
        let _ = self.sync_log();
    }
}

pub(crate) struct VerifiedChain {
    manifest: Vec<u8>,
    latest: HashMap<[u8; 16], u32>,
}

impl<S: Store> std::fmt::Debug for Vault<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("epoch", &self.keyring.epoch)
            .finish_non_exhaustive()
    }
}

/// A patient's keys for one key version, each derived for one purpose.
pub(crate) struct PatientKeys {
    pub(crate) version: u32,
    pub(crate) record: SecretKey,
    pub(crate) manifest: SecretKey,
    pub(crate) note: SecretKey,
}

impl PatientKeys {
    fn derive(version: u32, key: &SecretKey) -> Self {
        PatientKeys {
            version,
            record: crypto::subkey(key, LABEL_PATIENT_RECORD),
            manifest: crypto::subkey(key, LABEL_PATIENT_MANIFEST),
            note: crypto::subkey(key, LABEL_PATIENT_NOTE),
        }
    }
}

/// A patient's decrypted record, keys and manifest.
pub(crate) struct PatientState {
    pub(crate) blind: Blind,
    pub(crate) keys: PatientKeys,
    pub(crate) info: PatientV1,
    pub(crate) manifest: ManifestV1,
    /// The manifest's bytes as stored now (`None`: not stored yet), for compare-and-swap.
    pub(crate) manifest_stored: Option<Vec<u8>>,
    dirty: bool,
}

/// One decoded note version.
struct Decoded {
    note: [u8; 16],
    version: u32,
    meta: NoteMetaV1,
    bytes: u64,
    body: Option<NoteBody>,
}

/// The outcome of decrypting all of a patient's notes.
struct Scan {
    decoded: Vec<Decoded>,
    problems: Vec<IntegrityError>,
    stored: u64,
}

/// From this many note versions on, one patient's notes are decrypted on every core.
const PARALLEL_NOTES: usize = 64;

/// Which bodies a scan of a patient's notes keeps.
#[derive(Clone, Copy)]
enum Bodies {
    None,
    All,
    Current,
    Of([u8; 16]),
}

pub(crate) fn integrity(location: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Integrity(IntegrityError::new(location, problem))
}

pub(crate) fn parse_error(location: &str, e: ParseError) -> Error {
    match e {
        ParseError::FutureVersion(v) => Error::UnsupportedFormat {
            found: u32::from(v),
            supported: u32::from(envelope::FORMAT_VERSION),
        },
        ParseError::Foreign => integrity(location, "not a Carnet record"),
        ParseError::Malformed(what) => integrity(location, what),
    }
}

/// Parses and opens a record, decoding its frame. All failures are integrity errors.
pub(crate) fn open_frame<M: serde::de::DeserializeOwned>(
    location: &str,
    bytes: &[u8],
    kind: Kind,
    key: &SecretKey,
    vault_id: &[u8; 16],
    binding: &[u8],
) -> Result<(M, crate::secret::SecretBytes), Error> {
    let sealed = Sealed::parse(bytes).map_err(|e| parse_error(location, e))?;
    let plain = sealed.open_at(location, kind, key, vault_id, binding)?;
    let (meta, _) = frame::decode::<M>(&plain)
        .ok_or_else(|| integrity(location, "authenticated but malformed payload"))?;
    Ok((meta, plain))
}

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
        if store.read_doc(ROOT_DOC)?.is_some() {
            return Err(Error::AlreadyAVault);
        }
        if !passphrase.is_strong_enough() {
            return Err(Error::InvalidArgument(format!(
                "the passphrase is too short: use at least {} characters",
                Passphrase::MIN_CHARS
            )));
        }
        let mut vault_id = [0u8; 16];
        crypto::fill_random(&mut vault_id)?;
        let epoch = 1;
        let master = SecretKey::random()?;
        let slot = Slot::create(
            &vault_id,
            user,
            SlotSecret::Passphrase(passphrase, kdf),
            epoch,
            &master,
        )?;
        let mut keyring = Keyring::new(vault_id, epoch, slot);

        let blind = SecretKey::random()?;
        let registry = SecretKey::random()?;
        let log_key = SecretKey::random()?;
        let keys = VaultKeysV1 {
            keys: vec![
                VaultKeyV1 {
                    purpose: PURPOSE_BLIND,
                    version: 1,
                    key: *blind.expose(),
                },
                VaultKeyV1 {
                    purpose: PURPOSE_REGISTRY,
                    version: REGISTRY_KEY_VERSION,
                    key: *registry.expose(),
                },
                VaultKeyV1 {
                    purpose: PURPOSE_LOG,
                    version: 1,
                    key: *log_key.expose(),
                },
            ],
        };
        let wrap_vault = crypto::subkey(&master, LABEL_WRAP_VAULT_KEYS);
        let plain = frame::encode(&keys, &[])?;
        let sealed = envelope::seal(Kind::VaultKeys, epoch, &wrap_vault, &vault_id, &[], &plain)?;
        let mut key_store = KeyStore::new(epoch);
        key_store.vault_keys = Some(sealed);
        let mut batch = Batch::new();
        let reg = RegistryV1 {
            patients: 0,
            head: [0; 32],
        };
        crate::users::check_user_name(user)?;
        let users = UsersV1 {
            users: vec![UserV1 {
                name: user.to_string(),
                role: Role::Admin.code(),
            }],
        };
        batch.put(
            space::META,
            META_USERS,
            seal_users(&registry, &vault_id, &users)?,
        );
        let head = crate::log::LogHeadV1 {
            count: 0,
            head: [0; 32],
        };
        batch.put(
            space::META,
            META_LOG_HEAD,
            envelope::seal(
                Kind::LogHead,
                1,
                &log_key,
                &vault_id,
                META_LOG_HEAD,
                &frame::encode(&head, &[])?,
            )?,
        );
        batch.put(
            space::META,
            META_REGISTRY,
            seal_registry(&registry, &vault_id, &reg)?,
        );
        // The keyring goes last: until it exists, this is not a vault.
        store.commit(batch)?;
        store.flush()?;
        store.replace_doc(KEYS_DOC, &key_store.encode(&vault_id))?;
        store.replace_doc(ROOT_DOC, &keyring.encode(&master))?;
        Ok(Vault {
            store,
            user: user.to_string(),
            wrap_patient: crypto::subkey(&master, LABEL_WRAP_PATIENT_KEY),
            master,
            pending: None,
            keyring,
            keys: Mutex::new(key_store),
            write_lock: Mutex::default(),
            blind_key: blind,
            registry_key: registry,
            role: Role::Admin,
            log_keys: [(1, log_key)].into_iter().collect(),
            via_recovery: false,
            chains: Mutex::default(),
            read_log: crate::log::ReadLog::default(),
            log_unsynced: Mutex::default(),
        })
    }

    /// Unlocks the vault in `store` with `user`'s passphrase.
    ///
    /// Fails with [`Error::WrongPassphrase`] (wrong passphrase or damaged slot),
    /// [`Error::UnknownUser`], [`Error::NotAVault`], [`Error::UnsupportedFormat`], or
    /// [`Error::Integrity`] when the keyring or the vault keys were altered. Changes nothing.
    pub fn unlock(store: S, user: &str, passphrase: &Passphrase) -> Result<Self, Error> {
        Self::unlock_with(
            store,
            user,
            &SlotSecret::Passphrase(passphrase, KdfParams::default()),
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
        Self::unlock_with(store, user, &SlotSecret::Recovery(key))
    }

    fn unlock_with(store: S, user: &str, secret: &SlotSecret<'_>) -> Result<Self, Error> {
        let root = store.read_doc(ROOT_DOC)?.ok_or(Error::NotAVault)?;
        let keyring = Keyring::parse(&root).map_err(|e| match e {
            KeyringParseError::Foreign => Error::Foreign,
            KeyringParseError::FutureVersion(v) => Error::UnsupportedFormat {
                found: u32::from(v),
                supported: u32::from(crate::keyring::VERSION),
            },
            KeyringParseError::Malformed => integrity("keyring", "malformed"),
        })?;
        let masters = keyring.unlock(user, secret)?;
        let key_store = KeyStore::parse(
            &store
                .read_doc(KEYS_DOC)?
                .ok_or_else(|| integrity("key store", "missing"))?,
            &keyring.vault_id,
        )?;
        // The key store is wrapped under the current epoch, or, between the two steps of a
        // master-key rotation, under the next one (docs/key-management.md, "Rotating the master key").
        let store_master = match &masters.pending {
            _ if key_store.epoch == keyring.epoch => &masters.current,
            Some((e, m)) if *e == key_store.epoch => m,
            _ => {
                return Err(integrity(
                    "key store",
                    "wrapped under an epoch the keyring cannot open",
                ))
            }
        };
        let stored = key_store
            .vault_keys
            .clone()
            .ok_or_else(|| integrity("vault keys", "missing"))?;
        let wrap_vault = crypto::subkey(store_master, LABEL_WRAP_VAULT_KEYS);
        if Sealed::parse(&stored).map(|s| s.key_version).ok() != Some(key_store.epoch) {
            return Err(integrity(
                "vault keys",
                "not sealed under the current epoch",
            ));
        }
        let (keys, _) = open_frame::<VaultKeysV1>(
            "vault keys",
            &stored,
            Kind::VaultKeys,
            &wrap_vault,
            &keyring.vault_id,
            &[],
        )?;
        let find = |purpose: u8| {
            keys.keys
                .iter()
                .find(|k| k.purpose == purpose)
                .map(|k| SecretKey::from_bytes(k.key))
                .ok_or_else(|| integrity("vault keys", "a vault key is missing"))
        };
        let mut vault = Vault {
            blind_key: find(PURPOSE_BLIND)?,
            registry_key: find(PURPOSE_REGISTRY)?,
            role: Role::Auditor,
            log_keys: keys
                .keys
                .iter()
                .filter(|k| k.purpose == PURPOSE_LOG)
                .map(|k| (k.version, SecretKey::from_bytes(k.key)))
                .collect(),
            via_recovery: matches!(secret, SlotSecret::Recovery(_)),
            wrap_patient: crypto::subkey(store_master, LABEL_WRAP_PATIENT_KEY),
            store,
            user: user.to_string(),
            keyring,
            master: masters.current,
            pending: masters.pending,
            keys: Mutex::new(key_store),
            write_lock: Mutex::default(),
            chains: Mutex::default(),
            read_log: crate::log::ReadLog::default(),
            log_unsynced: Mutex::default(),
        };
        // A slot whose user is no longer listed (a revocation interrupted between its steps)
        // opens nothing.
        let (users, _) = vault.load_users()?;
        let listed = users
            .users
            .iter()
            .find(|u| u.name == user)
            .ok_or(Error::UnknownUser)?;
        vault.role =
            Role::from_code(listed.role).ok_or_else(|| integrity("users", "unknown role"))?;
        Ok(vault)
    }

    /// The current master key epoch (1 for a new vault; each rotation adds one).
    pub fn epoch(&self) -> u32 {
        self.keyring.epoch
    }

    /// The KDF parameters of `user`'s slot, if the user exists.
    pub fn kdf_params(&self, user: &str) -> Option<KdfParams> {
        self.keyring.slot(user).map(|s| s.kdf())
    }

    /// The underlying store (for backups and diagnostics; it holds only ciphertext).
    pub fn store(&self) -> &S {
        &self.store
    }

    pub(crate) fn blind(&self, id: &PatientId) -> Blind {
        Blind(crypto::hmac(
            &self.blind_key,
            &[LABEL_BLIND, id.as_str().as_bytes()],
        ))
    }

    pub(crate) fn vault_id(&self) -> &[u8; 16] {
        &self.keyring.vault_id
    }

    // ----- reading -----

    pub(crate) fn patient_keys(&self, blind: &Blind, version: u32) -> Result<PatientKeys, Error> {
        let location = format!("patient key {}/v{version}", blind.short());
        let stored = self
            .key_store()
            .patient
            .get(&(*blind, version))
            .cloned()
            .ok_or_else(|| integrity(&location, "missing"))?;
        let key = self.open_patient_key(&location, blind, version, &stored)?;
        Ok(PatientKeys::derive(version, &key))
    }

    /// Opens a sealed patient key (format.md, "Records", kind 2: raw 32 bytes, no frame).
    fn open_patient_key(
        &self,
        location: &str,
        blind: &Blind,
        version: u32,
        stored: &[u8],
    ) -> Result<SecretKey, Error> {
        let sealed = Sealed::parse(stored).map_err(|e| parse_error(location, e))?;
        if sealed.key_version != self.key_store().epoch {
            return Err(integrity(location, "not wrapped under the current epoch"));
        }
        let plain = sealed.open_at(
            location,
            Kind::PatientKey,
            &self.wrap_patient,
            self.vault_id(),
            &patient_key_key(blind, version),
        )?;
        let raw: [u8; 32] = plain[..]
            .try_into()
            .map_err(|_| integrity(location, "authenticated but malformed payload"))?;
        Ok(SecretKey::from_bytes(raw))
    }

    /// Adds wrapped patient keys to the key store: appended durably, or, after a torn append,
    /// by rewriting the whole document.
    pub(crate) fn append_keys(&self, keys: Vec<(Blind, u32, Vec<u8>)>) -> Result<(), Error> {
        let mut ks = self.key_store();
        if ks.torn {
            let mut next = KeyStore::new(ks.epoch);
            next.vault_keys = ks.vault_keys.clone();
            next.patient = ks.patient.clone();
            for (b, v, k) in &keys {
                next.patient.insert((*b, *v), k.clone());
            }
            self.store
                .replace_doc(KEYS_DOC, &next.encode(self.vault_id()))?;
            *ks = next;
            return Ok(());
        }
        let mut bytes = Vec::new();
        for (b, v, k) in &keys {
            bytes.extend_from_slice(&KeyStore::patient_entry(b, *v, k));
        }
        self.store.append_doc(KEYS_DOC, &bytes)?;
        for (b, v, k) in keys {
            ks.patient.insert((b, v), k);
        }
        Ok(())
    }

    pub(crate) fn key_store(&self) -> MutexGuard<'_, KeyStore> {
        // Every mutation of the index is a single insert made after the write it mirrors
        // succeeded, so a poisoned lock still guards a consistent index.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decrypts a patient's record and manifest stored under `blind`.
    pub(crate) fn load_patient(&self, blind: &Blind, stored: &[u8]) -> Result<PatientState, Error> {
        let location = format!("patient {}", blind.short());
        let sealed = Sealed::parse(stored).map_err(|e| parse_error(&location, e))?;
        let keys = self.patient_keys(blind, sealed.key_version)?;
        let (info, _) = open_frame::<PatientV1>(
            &location,
            stored,
            Kind::Patient,
            &keys.record,
            self.vault_id(),
            &blind.0,
        )?;
        let mlocation = format!("manifest {}", blind.short());
        let mstored = self
            .store
            .get(space::MANIFESTS, &blind.0)?
            .ok_or_else(|| integrity(&mlocation, "missing"))?;
        let msealed = Sealed::parse(&mstored).map_err(|e| parse_error(&mlocation, e))?;
        if msealed.key_version != keys.version {
            return Err(integrity(
                &mlocation,
                "sealed under another patient key version",
            ));
        }
        let (manifest, _) = open_frame::<ManifestV1>(
            &mlocation,
            &mstored,
            Kind::Manifest,
            &keys.manifest,
            self.vault_id(),
            &blind.0,
        )?;
        Ok(PatientState {
            blind: *blind,
            keys,
            info,
            manifest,
            manifest_stored: Some(mstored),
            dirty: false,
        })
    }

    fn find_patient(&self, id: &PatientId) -> Result<PatientState, Error> {
        let blind = self.blind(id);
        let Some(stored) = self.store.get(space::PATIENTS, &blind.0)? else {
            // Unknown, unless the patient's other records say it was registered.
            if self.store.get(space::MANIFESTS, &blind.0)?.is_some() {
                return Err(integrity(
                    format!("patient {}", blind.short()),
                    "missing (its manifest exists)",
                ));
            }
            return Err(Error::NoSuchPatient);
        };
        let st = self.load_patient(&blind, &stored)?;
        if st.info.id != id.as_str() {
            return Err(integrity(
                format!("patient {}", blind.short()),
                "identifier mismatch",
            ));
        }
        Ok(st)
    }

    fn open_note(
        &self,
        st: &PatientState,
        key: &[u8],
        stored: &[u8],
        keep: bool,
    ) -> Result<Decoded, Error> {
        let (blind, note, version) = parse_note_key(key)
            .filter(|(b, _, _)| *b == st.blind)
            .ok_or_else(|| {
                integrity(
                    format!("note under {}", st.blind.short()),
                    "malformed storage key",
                )
            })?;
        // Named only when something is wrong: formatting it for every note costs more than
        // its decryption's bookkeeping.
        let location = NoteLocation {
            blind: &blind,
            note,
            version,
        };
        let sealed = Sealed::parse(stored).map_err(|e| parse_error(&location.to_string(), e))?;
        // Between the steps of a patient-key rotation, notes may be sealed under the next (or
        // the previous) key version; any version still in the key store opens them.
        let other;
        let note_key = if sealed.key_version == st.keys.version {
            &st.keys.note
        } else {
            other = self.patient_keys(&blind, sealed.key_version)?;
            &other.note
        };
        // Opened and decoded once: the metadata and the body come from the same frame.
        let plain = sealed.open_at(&location, Kind::Note, note_key, self.vault_id(), key)?;
        let (meta, body) = frame::decode::<NoteMetaV1>(&plain).ok_or_else(|| {
            integrity(location.to_string(), "authenticated but malformed payload")
        })?;
        Ok(Decoded {
            note,
            version,
            meta,
            bytes: body.len() as u64,
            body: if keep {
                Some(NoteBody::new(body.to_vec())?)
            } else {
                None
            },
        })
    }

    /// Decrypts every note version of a patient and checks them against the manifest's chain.
    /// Returns the decoded versions (in storage order) and every problem found.
    fn scan_notes(&self, st: &PatientState, bodies: Bodies) -> Result<Scan, Error> {
        let raw: Vec<(Vec<u8>, Vec<u8>)> = self
            .store
            .scan_prefix(space::NOTES, &st.blind.0)
            .collect::<Result<_, _>>()?;
        self.check_notes(st, &raw, bodies)
    }

    /// [`Vault::scan_notes`] over entries already read: every stored version of one patient's
    /// notes (storage key, stored bytes), in storage order.
    fn check_notes(
        &self,
        st: &PatientState,
        raw: &[(Vec<u8>, Vec<u8>)],
        bodies: Bodies,
    ) -> Result<Scan, Error> {
        let open = |i: usize| {
            let (k, v) = &raw[i];
            let keep = match bodies {
                Bodies::None => false,
                Bodies::All => true,
                // Keys sort by (note id, version): the last of a note's run is its current version.
                Bodies::Current => raw
                    .get(i + 1)
                    .is_none_or(|(next, _)| next.get(32..48) != k.get(32..48)),
                Bodies::Of(n) => k.get(32..48) == Some(&n[..]),
            };
            self.open_note(st, k, v, keep)
        };
        // A large chart read on its own (not inside verify's or search's workers, which
        // already use every core) is decrypted on every core too, in equal slices.
        let opened: Vec<Result<Decoded, Error>> =
            if raw.len() >= PARALLEL_NOTES && !crate::par::in_worker() {
                crate::par::map_indices(raw.len(), open)
            } else {
                (0..raw.len()).map(open).collect()
            };
        let mut out = Vec::with_capacity(raw.len());
        let mut problems = Vec::new();
        for r in opened {
            match r {
                Ok(d) => out.push(d),
                Err(Error::Integrity(e)) => problems.push(e),
                Err(e) => return Err(e),
            }
        }
        problems.extend(check_chain(st, &out, raw.len()));
        Ok(Scan {
            decoded: out,
            problems,
            stored: raw.len() as u64,
        })
    }

    /// The patient's note versions, all authenticated, or the first integrity problem.
    fn notes_of(&self, st: &PatientState, bodies: Bodies) -> Result<Vec<Decoded>, Error> {
        let mut scan = self.scan_notes(st, bodies)?;
        if scan.problems.is_empty() {
            if let Some(m) = &st.manifest_stored {
                let mut latest = HashMap::new();
                for d in &scan.decoded {
                    let v = latest.entry(d.note).or_insert(d.version);
                    *v = (*v).max(d.version);
                }
                self.chains().insert(
                    st.blind,
                    VerifiedChain {
                        manifest: m.clone(),
                        latest,
                    },
                );
            }
            Ok(scan.decoded)
        } else {
            Err(Error::Integrity(scan.problems.swap_remove(0)))
        }
    }

    fn to_patient(st: &PatientState) -> Result<Patient, Error> {
        let bad = || {
            integrity(
                format!("patient {}", st.blind.short()),
                "invalid stored field",
            )
        };
        Ok(Patient {
            id: PatientId::new(st.info.id.clone()).map_err(|_| bad())?,
            name: st.info.name.clone(),
            birth_date: match st.info.birth_date.as_deref() {
                Some(d) => Some(BirthDate::parse(d).map_err(|_| bad())?),
                None => None,
            },
            created_at: Timestamp::from_unix_millis(st.info.created_at),
            notes: st.manifest.notes,
        })
    }

    /// Every patient, in the order they were registered.
    pub fn patients(&self) -> Result<Vec<Patient>, Error> {
        self.logged("patient list", None, None, || {
            self.require(Duty::Clinical)?;
            let mut states = self.all_patients()?;
            states.sort_by_key(|s| s.info.seq);
            states.iter().map(Self::to_patient).collect()
        })
    }

    fn all_patients(&self) -> Result<Vec<PatientState>, Error> {
        let mut out = Vec::new();
        for r in self.store.scan_prefix(space::PATIENTS, &[]) {
            let (k, v) = r?;
            let blind = Blind::from_slice(&k)
                .ok_or_else(|| integrity("patients", "malformed storage key"))?;
            out.push(self.load_patient(&blind, &v)?);
        }
        Ok(out)
    }

    /// One patient.
    pub fn patient(&self, id: &PatientId) -> Result<Patient, Error> {
        self.logged("patient show", Some(id), None, || {
            self.require(Duty::Clinical)?;
            Self::to_patient(&self.find_patient(id)?)
        })
    }

    /// The current version of each of the patient's notes, in the order the notes were added,
    /// without their bodies.
    pub fn notes(&self, id: &PatientId) -> Result<Vec<Note>, Error> {
        self.logged("note list", Some(id), None, || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            Ok(current_versions(self.notes_of(&st, Bodies::None)?))
        })
    }

    /// The current version of each of the patient's notes, with their bodies, in the order the
    /// notes were added: opening a patient's chart in one read (and one access-log entry,
    /// `note read`), instead of a [`Vault::note`] per note.
    pub fn read_notes(&self, id: &PatientId) -> Result<Vec<Note>, Error> {
        self.logged("note read", Some(id), None, || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            Ok(current_versions(self.notes_of(&st, Bodies::Current)?))
        })
    }

    /// The current version of one note, with its body.
    pub fn note(&self, id: &PatientId, note: &NoteId) -> Result<Note, Error> {
        self.logged("note show", Some(id), Some(note), || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            self.note_versions(&st, note, true)?
                .pop()
                .map(to_note)
                .ok_or(Error::NoSuchNote)
        })
    }

    /// Every version of one note, oldest first, with bodies.
    pub fn note_history(&self, id: &PatientId, note: &NoteId) -> Result<Vec<Note>, Error> {
        self.logged("note history", Some(id), Some(note), || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            Ok(self
                .note_versions(&st, note, false)?
                .into_iter()
                .map(to_note)
                .collect())
        })
    }

    /// A patient's whole record: the patient and every version of every note (in the order the
    /// notes were added, versions oldest first), for the patient's right of access or a move to
    /// another system. Logged as `export`.
    pub fn export(&self, id: &PatientId) -> Result<(Patient, Vec<Vec<Note>>), Error> {
        self.logged("export", Some(id), None, || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            let patient = Self::to_patient(&st)?;
            let all = self.notes_of(&st, Bodies::All)?;
            let order: Vec<NoteId> = current_versions_meta(&all);
            let mut by_note: HashMap<[u8; 16], Vec<Decoded>> = HashMap::new();
            for d in all {
                by_note.entry(d.note).or_default().push(d);
            }
            let mut notes = Vec::with_capacity(order.len());
            for n in order {
                let mut versions = by_note.remove(&n.0).unwrap_or_default();
                versions.sort_by_key(|d| d.version);
                notes.push(versions.into_iter().map(to_note).collect());
            }
            Ok((patient, notes))
        })
    }

    pub(crate) fn chains(&self) -> MutexGuard<'_, HashMap<Blind, VerifiedChain>> {
        // The map is only a cache of verified facts; a poisoned one is still consistent.
        self.chains.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The versions of one note, ascending (only the last one's body when `latest_only`).
    ///
    /// If this patient's chain was fully verified against the manifest stored now, only the
    /// note's own records are read: their versions must be exactly 1..=latest as verified.
    /// Otherwise the whole chain is verified first (and remembered).
    fn note_versions(
        &self,
        st: &PatientState,
        note: &NoteId,
        latest_only: bool,
    ) -> Result<Vec<Decoded>, Error> {
        let cached = st.manifest_stored.as_ref().and_then(|m| {
            let chains = self.chains();
            let c = chains.get(&st.blind).filter(|c| &c.manifest == m)?;
            Some(c.latest.get(&note.0).copied())
        });
        let mut versions = match cached {
            Some(None) => return Err(Error::NoSuchNote),
            Some(Some(latest)) => {
                let prefix = [&st.blind.0[..], &note.0[..]].concat();
                let raw: Vec<(Vec<u8>, Vec<u8>)> = self
                    .store
                    .scan_prefix(space::NOTES, &prefix)
                    .collect::<Result<_, _>>()?;
                if raw.len() as u64 != u64::from(latest) {
                    return Err(integrity(
                        format!("note {}/{}", st.blind.short(), note),
                        "versions were removed or added since the chain was verified",
                    ));
                }
                let mut out = Vec::with_capacity(raw.len());
                for (i, (k, v)) in raw.iter().enumerate() {
                    let d = self.open_note(st, k, v, !latest_only || i + 1 == raw.len())?;
                    if d.version != i as u32 + 1 || d.meta.seq >= st.manifest.next_seq {
                        return Err(integrity(
                            format!("note {}/{}/v{}", st.blind.short(), note, d.version),
                            "out of place in the patient's note chain",
                        ));
                    }
                    out.push(d);
                }
                out
            }
            None => self
                .notes_of(st, Bodies::Of(note.0))?
                .into_iter()
                .filter(|d| d.note == note.0)
                .collect(),
        };
        if versions.is_empty() {
            return Err(Error::NoSuchNote);
        }
        versions.sort_by_key(|d| d.version);
        Ok(versions)
    }

    /// Notes whose current body contains `text`, ignoring case; all patients, or one.
    /// Decrypts every note it scans (fine for a clinic's volume; see docs/architecture.md).
    pub fn search(&self, text: &str, patient: Option<&PatientId>) -> Result<Vec<SearchHit>, Error> {
        self.logged("search", patient, None, || {
            self.search_unlogged(text, patient)
        })
    }

    fn search_unlogged(
        &self,
        text: &str,
        patient: Option<&PatientId>,
    ) -> Result<Vec<SearchHit>, Error> {
        self.require(Duty::Clinical)?;
        let mut states = match patient {
            Some(id) => vec![self.find_patient(id)?],
            None => self.all_patients()?,
        };
        states.sort_by_key(|s| s.info.seq);
        let needle = text.to_lowercase();
        // Patients are searched on every core; hits keep the patients' order.
        let per_patient = crate::par::map_parallel(states.iter().map(Ok), |st| {
            let mut hits = Vec::new();
            for n in current_versions(self.notes_of(st, Bodies::Current)?) {
                let Some(body) = &n.body else { continue };
                if let Some(snippet) = find_snippet(body.as_bytes(), &needle) {
                    hits.push(SearchHit {
                        patient_id: PatientId::new(st.info.id.clone())?,
                        note_id: n.id,
                        version: n.version,
                        snippet,
                    });
                }
            }
            Ok::<_, Error>(hits)
        })?;
        let mut hits = Vec::new();
        for h in per_patient {
            hits.extend(h?);
        }
        Ok(hits)
    }

    // ----- writing -----

    /// Registers a patient. Fails with [`Error::PatientExists`] if the identifier is taken.
    pub fn add_patient(&self, patient: NewPatient) -> Result<(), Error> {
        let id = patient.id.clone();
        let result = self.require(Duty::Clinical).and_then(|()| {
            let mut txn = Txn::new(self);
            txn.log = Some(("patient add", Some(patient.id.as_str().to_string()), None));
            txn.create_patient(patient, Timestamp::now())?;
            txn.commit()
        });
        self.log_failure("patient add", Some(&id), result)
    }

    /// Stores a note for an existing patient; returns its new id once it is durable.
    pub fn add_note(&self, id: &PatientId, note: NewNote) -> Result<NoteId, Error> {
        let result = self.require(Duty::Clinical).and_then(|()| {
            let mut txn = Txn::new(self);
            let blind = txn.existing_patient(id)?;
            let note_id = txn.add_note(blind, note)?;
            txn.log = Some((
                "note add",
                Some(id.as_str().to_string()),
                Some(note_id.to_string()),
            ));
            txn.commit()?;
            Ok(note_id)
        });
        self.log_failure("note add", Some(id), result)
    }

    /// Appends a new version of a note (earlier versions stay readable); returns its version.
    /// `author: None` keeps the previous version's author; the kind is kept.
    pub fn amend_note(
        &self,
        id: &PatientId,
        note: &NoteId,
        body: NoteBody,
        author: Option<String>,
    ) -> Result<u32, Error> {
        let result = self.amend_unlogged(id, note, body, author);
        self.log_failure("note amend", Some(id), result)
    }

    fn amend_unlogged(
        &self,
        id: &PatientId,
        note: &NoteId,
        body: NoteBody,
        author: Option<String>,
    ) -> Result<u32, Error> {
        self.require(Duty::Clinical)?;
        check_field("the author", &author)?;
        let mut txn = Txn::new(self);
        let blind = txn.existing_patient(id)?;
        let st = &txn.patients[&blind];
        let latest = self
            .notes_of(st, Bodies::None)?
            .into_iter()
            .filter(|d| d.note == note.0)
            .max_by_key(|d| d.version)
            .ok_or(Error::NoSuchNote)?;
        let version = latest.version + 1;
        let meta = NoteMetaV1 {
            seq: 0,
            created_at: latest.meta.created_at,
            updated_at: Timestamp::now().unix_millis(),
            author: author.or_else(|| latest.meta.author.clone()),
            kind: latest.meta.kind.clone(),
        };
        txn.add_version(blind, note.0, version, meta, body.as_bytes())?;
        txn.log = Some((
            "note amend",
            Some(id.as_str().to_string()),
            Some(note.to_string()),
        ));
        txn.commit()?;
        Ok(version)
    }

    /// Starts a bulk import: notes are written in atomic batches (one flush per batch), and
    /// patients are created as needed. See [`Import`].
    pub fn import(&self) -> Import<'_, S> {
        Import {
            txn: Txn::new(self),
            pending_notes: 0,
            pending_bytes: 0,
            committed: ImportSummary::default(),
            staged: ImportSummary::default(),
            job: None,
        }
    }

    /// Starts or resumes a **resumable** import of the source whose SHA-256 is `source` (the
    /// import file's hash). Each batch records, atomically with its notes, how many of the
    /// source's records are imported; if an import of the same source was interrupted, the
    /// returned [`Import`] says (in [`Import::already_imported`]) how many leading records the
    /// caller must skip. Only one resumable import is tracked: starting one from another source
    /// abandons the record of an unfinished one ([`Import::abandoned`]).
    ///
    /// The last import's record stays when it completes: importing the same, unchanged file
    /// again then does nothing ([`Import::already_complete`]) unless `again` asks to import it
    /// once more, so re-running an import whose acknowledgment was lost adds no duplicate. An
    /// interrupted import of the same file is always resumed, with or without `again`.
    pub fn import_resumable(&self, source: [u8; 32], again: bool) -> Result<Import<'_, S>, Error> {
        self.require(Duty::Clinical)?;
        let mut import = self.import();
        let mut job = ImportJob {
            source,
            base: 0,
            stored: None,
            abandoned: None,
            complete: false,
        };
        if let Some(stored) = self.store.get(space::META, META_IMPORT_JOB)? {
            let (j, _) = open_frame::<JobV1>(
                "import job",
                &stored,
                Kind::Job,
                &self.registry_key,
                self.vault_id(),
                META_IMPORT_JOB,
            )?;
            if j.kind != JOB_IMPORT {
                return Err(integrity("import job", "of an unknown kind"));
            }
            let complete = j.target == IMPORT_COMPLETE;
            if j.source == source && !complete {
                // An interrupted import of this file: always resumed, never restarted.
                job.base = j.done;
            } else if j.source == source && !again {
                job.base = j.done;
                job.complete = true;
            } else if !complete {
                job.abandoned = Some(j.done);
            }
            job.stored = Some(stored);
        }
        import.job = Some(job);
        Ok(import)
    }

    // ----- verification -----

    /// Decrypts and authenticates every record and every link between records, and reports
    /// every problem found (it does not stop at the first). `progress` is called with
    /// (patients checked, patients in the registry).
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, Error> {
        self.verify_against(None, progress)
    }

    /// [`Vault::verify`], and also that the access log still contains `checkpoint` (taken
    /// earlier with [`Vault::log_checkpoint`] and kept off the server): no rollback behind it.
    pub fn verify_against(
        &self,
        checkpoint: Option<&crate::log::Checkpoint>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, Error> {
        // Verify shows no patient data, so it logs itself after the fact; a log too damaged to
        // append to is already among the problems it reports.
        let mut report = self.verify_unlogged(checkpoint, progress)?;
        let outcome = if report.is_ok() {
            "ok"
        } else {
            "integrity failure"
        };
        let event = crate::log::Event {
            action: "verify",
            patient: None,
            note: None,
            outcome: outcome.into(),
        };
        match self.log_event(&event) {
            Ok(()) => {}
            // Already reported (a damaged or rolled-back log cannot take the entry).
            Err(_) if !report.is_ok() => {}
            Err(Error::Integrity(e)) => report.problems.push(e),
            Err(e) => return Err(e),
        }
        Ok(report)
    }

    fn verify_unlogged(
        &self,
        checkpoint: Option<&crate::log::Checkpoint>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport {
            // The keyring and the vault keys were authenticated by `unlock`.
            records_checked: 2,
            problems: Vec::new(),
        };
        let registry = match self.load_registry() {
            Ok((r, _)) => Some(r),
            Err(Error::Integrity(e)) => {
                report.problems.push(e);
                None
            }
            Err(e) => return Err(e),
        };
        report.records_checked += 1;
        let total = registry.as_ref().map_or(0, |r| r.patients);
        match self.load_users() {
            Ok(_) => {}
            Err(Error::Integrity(e)) => report.problems.push(e),
            Err(e) => return Err(e),
        }
        report.records_checked += 1;
        report.records_checked += self.verify_log(checkpoint, &mut report.problems)?;
        // Job records (an unfinished rotation or import) must open too.
        for key in [META_JOB, META_IMPORT_JOB, META_REVOKE_JOB] {
            match self.load_job_at(key) {
                Ok(None) => {}
                Ok(Some(_)) => report.records_checked += 1,
                Err(Error::Integrity(e)) => {
                    report.records_checked += 1;
                    report.problems.push(e);
                }
                Err(e) => return Err(e),
            }
        }

        // Patients (each one's key and manifest with it).
        let mut patients: HashMap<Blind, PatientState> = HashMap::new();
        let mut seen_blinds = HashSet::new();
        for r in self.store.scan_prefix(space::PATIENTS, &[]) {
            let (k, v) = r?;
            report.records_checked += 1;
            let Some(blind) = Blind::from_slice(&k) else {
                report
                    .problems
                    .push(IntegrityError::new("patients", "malformed storage key"));
                continue;
            };
            seen_blinds.insert(blind);
            match self.load_patient(&blind, &v) {
                Ok(st) => {
                    patients.insert(blind, st);
                }
                Err(Error::Integrity(e)) => report.problems.push(e),
                Err(e) => return Err(e),
            }
        }
        if let Some(reg) = &registry {
            report
                .problems
                .extend(check_registry(reg, &patients, seen_blinds.len()));
        }

        // Every wrapped key in the key store opens. Keys of no registered patient are left by
        // a registration interrupted before its records were written: unused, not a problem.
        let wrapped: Vec<((Blind, u32), Vec<u8>)> = self
            .key_store()
            .patient
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for ((blind, version), stored) in wrapped {
            report.records_checked += 1;
            let location = format!("patient key {}/v{version}", blind.short());
            match self.open_patient_key(&location, &blind, version, &stored) {
                Ok(_) => {}
                Err(Error::Integrity(e)) => report.problems.push(e),
                Err(e) => return Err(e),
            }
        }

        // Manifests: no orphans (each patient's own was opened above).
        for r in self.store.scan_prefix(space::MANIFESTS, &[]) {
            let (k, _) = r?;
            report.records_checked += 1;
            let owner = k.get(..32).and_then(Blind::from_slice);
            if !owner.is_some_and(|b| seen_blinds.contains(&b)) {
                let short = owner.map_or_else(|| "?".into(), |b| b.short());
                report.problems.push(IntegrityError::new(
                    format!("manifest {short}"),
                    "belongs to no registered patient (orphan)",
                ));
            }
        }

        // Notes: one pass over the store, one patient's run of notes at a time (storage keys
        // start with the patient's blind), decrypted on every core; runs of no registered
        // patient are orphans. Patients with no stored note at all are checked after.
        let mut done = 0u64;
        let mut with_notes = HashSet::new();
        let runs = NoteRuns::new(self.store.scan_prefix(space::NOTES, &[]));
        let checked = crate::par::map_parallel(runs, |(owner, raw)| {
            let stored = raw.len() as u64;
            match owner.and_then(|b| patients.get(&b)) {
                Some(st) => self
                    .check_notes(st, &raw, Bodies::None)
                    .map(|scan| (owner, scan.stored, scan.problems)),
                None => {
                    let short = owner.map_or_else(|| "?".into(), |b| b.short());
                    let orphan = IntegrityError::new(
                        format!("note under {short}"),
                        "belongs to no registered patient (orphan)",
                    );
                    Ok((None, stored, vec![orphan; raw.len()]))
                }
            }
        })?;
        for result in checked {
            let (owner, stored, problems) = result?;
            report.records_checked += stored;
            report.problems.extend(problems);
            if let Some(b) = owner {
                with_notes.insert(b);
                done += 1;
                progress(done, total);
            }
        }
        let mut empty: Vec<&Blind> = patients
            .keys()
            .filter(|b| !with_notes.contains(*b))
            .collect();
        empty.sort();
        for blind in empty {
            report
                .problems
                .extend(check_chain(&patients[blind], &[], 0));
            done += 1;
            progress(done, total);
        }
        Ok(report)
    }

    pub(crate) fn load_registry(&self) -> Result<(RegistryV1, Vec<u8>), Error> {
        let stored = self
            .store
            .get(space::META, META_REGISTRY)?
            .ok_or_else(|| integrity("registry", "missing"))?;
        let (reg, _) = open_frame::<RegistryV1>(
            "registry",
            &stored,
            Kind::Registry,
            &self.registry_key,
            self.vault_id(),
            &[],
        )?;
        Ok((reg, stored))
    }
}

pub(crate) fn seal_registry(
    key: &SecretKey,
    vault_id: &[u8; 16],
    reg: &RegistryV1,
) -> Result<Vec<u8>, Error> {
    envelope::seal(
        Kind::Registry,
        REGISTRY_KEY_VERSION,
        key,
        vault_id,
        &[],
        &frame::encode(reg, &[])?,
    )
}

/// Where a note version is stored, as integrity errors name it.
struct NoteLocation<'a> {
    blind: &'a Blind,
    note: [u8; 16],
    version: u32,
}

impl std::fmt::Display for NoteLocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "note {}/{}/v{}",
            self.blind.short(),
            NoteId(self.note),
            self.version
        )
    }
}

/// Groups a scan of the notes space into runs of one patient each: (the blind the storage
/// keys start with, or `None` for malformed keys; the run's entries).
struct NoteRuns<I: Iterator> {
    entries: std::iter::Peekable<I>,
}

type RawEntry = (Vec<u8>, Vec<u8>);

impl<I: Iterator<Item = Result<RawEntry, carnet_storage::StoreError>>> NoteRuns<I> {
    fn new(entries: I) -> Self {
        NoteRuns {
            entries: entries.peekable(),
        }
    }
}

impl<I: Iterator<Item = Result<RawEntry, carnet_storage::StoreError>>> Iterator for NoteRuns<I> {
    type Item = Result<(Option<Blind>, Vec<RawEntry>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = match self.entries.next()? {
            Ok(e) => e,
            Err(e) => return Some(Err(e.into())),
        };
        let owner = first.0.get(..32).and_then(Blind::from_slice);
        let mut run = vec![first];
        while let Some(Ok((k, _))) = self.entries.peek() {
            if k.get(..32).and_then(Blind::from_slice) != owner {
                break;
            }
            // Invariant: `peek` just returned `Some(Ok(_))`.
            if let Some(Ok(e)) = self.entries.next() {
                run.push(e);
            }
        }
        Some(Ok((owner, run)))
    }
}

/// Checks the registry's count and chain against the patients found.
fn check_registry(
    reg: &RegistryV1,
    patients: &HashMap<Blind, PatientState>,
    found: usize,
) -> Vec<IntegrityError> {
    let mut problems = Vec::new();
    if reg.patients != found as u64 {
        problems.push(IntegrityError::new(
            "registry",
            format!(
                "lists {} patients but {} are stored (a patient was removed or added)",
                reg.patients, found
            ),
        ));
    }
    let mut order: Vec<(u64, Blind)> = patients.values().map(|s| (s.info.seq, s.blind)).collect();
    order.sort();
    if order.len() == found {
        let mut head = [0u8; 32];
        for (i, (seq, blind)) in order.iter().enumerate() {
            if *seq != i as u64 {
                problems.push(IntegrityError::new(
                    format!("patient {}", blind.short()),
                    "out of place in the registry chain",
                ));
                return problems;
            }
            head = registry_link(&head, blind);
        }
        if head != reg.head && reg.patients == found as u64 {
            problems.push(IntegrityError::new(
                "registry",
                "chain head does not match the patients stored",
            ));
        }
    }
    problems
}

/// Checks a patient's decoded note versions against its manifest: positions 0..next_seq each
/// exactly once, the recomputed chain head equal to the manifest's, versions of each note
/// numbered 1, 2, ... without gaps, and the note count.
fn check_chain(st: &PatientState, decoded: &[Decoded], stored: usize) -> Vec<IntegrityError> {
    let location = format!("manifest {}", st.blind.short());
    let m = &st.manifest;
    let mut problems = Vec::new();
    if stored as u64 != m.next_seq {
        problems.push(IntegrityError::new(
            &location,
            format!(
                "lists {} note versions but {} are stored (a record was removed, added or replaced)",
                m.next_seq, stored
            ),
        ));
    }
    if decoded.len() != stored {
        // Some records failed to open: already reported; the chain cannot be recomputed.
        return problems;
    }
    let mut order: Vec<&Decoded> = decoded.iter().collect();
    order.sort_by_key(|d| d.meta.seq);
    let mut head = [0u8; 32];
    let mut next_version: HashMap<[u8; 16], u32> = HashMap::new();
    for (i, d) in order.iter().enumerate() {
        let expected = next_version.entry(d.note).or_insert(1);
        if d.meta.seq != i as u64 || d.version != *expected {
            problems.push(IntegrityError::new(
                format!(
                    "note {}/{}/v{}",
                    st.blind.short(),
                    NoteId(d.note),
                    d.version
                ),
                "out of place in the patient's note chain",
            ));
            return problems;
        }
        *expected += 1;
        head = note_link(&head, &d.note, d.version);
    }
    if problems.is_empty() && head != m.head {
        problems.push(IntegrityError::new(
            &location,
            "chain head does not match the notes stored",
        ));
    }
    if next_version.len() as u64 != m.notes && problems.is_empty() {
        problems.push(IntegrityError::new(&location, "note count does not match"));
    }
    problems
}

fn to_note(d: Decoded) -> Note {
    Note {
        id: NoteId(d.note),
        version: d.version,
        created_at: Timestamp::from_unix_millis(d.meta.created_at),
        updated_at: Timestamp::from_unix_millis(d.meta.updated_at),
        author: d.meta.author.clone(),
        kind: d.meta.kind.clone(),
        bytes: d.bytes,
        body: d.body,
    }
}

/// The ids of the notes, ordered by when each note was first added.
fn current_versions_meta(decoded: &[Decoded]) -> Vec<NoteId> {
    let mut first: HashMap<[u8; 16], u64> = HashMap::new();
    for d in decoded {
        let s = first.entry(d.note).or_insert(d.meta.seq);
        *s = (*s).min(d.meta.seq);
    }
    let mut ids: Vec<([u8; 16], u64)> = first.into_iter().collect();
    ids.sort_by_key(|(_, s)| *s);
    ids.into_iter().map(|(n, _)| NoteId(n)).collect()
}

/// The latest version of each note, ordered by when the note was first added.
fn current_versions(decoded: Vec<Decoded>) -> Vec<Note> {
    let mut first_seq: HashMap<[u8; 16], u64> = HashMap::new();
    let mut latest: HashMap<[u8; 16], Decoded> = HashMap::new();
    for d in decoded {
        let s = first_seq.entry(d.note).or_insert(d.meta.seq);
        *s = (*s).min(d.meta.seq);
        match latest.get(&d.note) {
            Some(cur) if cur.version >= d.version => {}
            _ => {
                latest.insert(d.note, d);
            }
        }
    }
    let mut notes: Vec<Decoded> = latest.into_values().collect();
    notes.sort_by_key(|d| first_seq[&d.note]);
    notes.into_iter().map(to_note).collect()
}

/// The byte range in `text` of the first match of `needle` (already lower-cased), comparing
/// `text` lower-cased char by char as it is scanned, without copying it. Most positions fail on
/// their first char, so this is close to a plain substring search.
fn find_ignoring_case(text: &str, needle: &str) -> Option<(usize, usize)> {
    if needle.is_empty() {
        return Some((0, 0));
    }
    let first = needle.chars().next()?;
    for (i, c) in text.char_indices() {
        // Quick reject: the first char must lower-case to something starting with `first`
        // (an ASCII char lower-cases to exactly its ASCII lower case: no table lookup).
        let candidate = if c.is_ascii() {
            c.to_ascii_lowercase() == first
        } else {
            c == first || c.to_lowercase().next() == Some(first)
        };
        if !candidate {
            continue;
        }
        let mut want = needle.chars();
        let mut end = i;
        let mut matched = true;
        'scan: for (j, c) in text[i..].char_indices() {
            for l in c.to_lowercase() {
                match want.next() {
                    Some(w) if w == l => {}
                    Some(_) => {
                        matched = false;
                        break 'scan;
                    }
                    // The needle ended inside this char's lower-casing ("i" in "İ", which
                    // lower-cases to "i" and a combining dot): a match, as in the lower-cased
                    // text; it covers the whole char.
                    None => {
                        end = i + j + c.len_utf8();
                        break 'scan;
                    }
                }
            }
            end = i + j + c.len_utf8();
            if want.clone().next().is_none() {
                break;
            }
        }
        if matched && want.next().is_none() {
            return Some((i, end));
        }
    }
    None
}

/// A snippet of `body` around the first case-insensitive match of `needle` (already
/// lower-cased), or `None` when there is no match.
fn find_snippet(body: &[u8], needle: &str) -> Option<String> {
    // `from_utf8` validates much faster than `from_utf8_lossy` walks chunks; bodies are
    // almost always valid UTF-8.
    let text = match std::str::from_utf8(body) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(body),
    };
    let (start_orig, end_orig) = find_ignoring_case(&text, needle)?;
    let begin = text[..start_orig]
        .char_indices()
        .rev()
        .nth(29)
        .map_or(0, |(i, _)| i);
    let end = text[end_orig..]
        .char_indices()
        .nth(30)
        .map_or(text.len(), |(i, _)| end_orig + i);
    let mut s = String::new();
    if begin > 0 {
        s.push('…');
    }
    s.extend(
        text[begin..end]
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c }),
    );
    if end < text.len() {
        s.push('…');
    }
    Some(s)
}

/// A verification report.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// How many stored records were authenticated (or found missing or out of place).
    pub records_checked: u64,
    /// Every problem found; empty when the vault is intact.
    pub problems: Vec<IntegrityError>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Counts of what an import wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Patients created.
    pub patients_created: u64,
    /// Notes stored.
    pub notes_imported: u64,
}

/// A bulk import in progress. Add notes with [`Import::add`]; they are written in atomic
/// batches, each made durable before the next begins, and [`Import::finish`] writes the last.
/// After any error the import must be dropped: what was committed stays, whole.
pub struct Import<'v, S: Store> {
    txn: Txn<'v, S>,
    pending_notes: usize,
    pending_bytes: usize,
    committed: ImportSummary,
    staged: ImportSummary,
    job: Option<ImportJob>,
}

/// The progress record of a resumable import (a Job record, kind 7).
struct ImportJob {
    source: [u8; 32],
    /// Records of the source imported by earlier, interrupted runs.
    base: u64,
    /// The job record as stored now, for compare-and-swap.
    stored: Option<Vec<u8>>,
    /// Records imported by an unfinished import of another source, whose record this replaces.
    abandoned: Option<u64>,
    /// This source was already imported completely.
    complete: bool,
}

/// `JobV1::target` of an import job: 0 while under way, this once complete.
const IMPORT_COMPLETE: u32 = 1;

impl<S: Store> std::fmt::Debug for Import<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import")
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Import<'_, S> {
    /// Adds one note, creating its patient first if the identifier is new (then with the
    /// given name and birth date; for a known patient they are ignored).
    pub fn add(&mut self, patient: NewPatient, note: NewNote) -> Result<NoteId, Error> {
        let (id, full) = self.stage(patient, note)?;
        if full {
            self.flush()?;
        }
        Ok(id)
    }

    /// Adds every (patient, note) that `items` yields, as [`Import::add`] would, on both cores:
    /// this thread seals each batch while another writes and flushes the one before (at most
    /// one batch waits between them, so memory stays bounded). Stops at the first error, from
    /// `items` or from the vault; the batches written before it stay, whole (see
    /// [`Import::committed`]). `progress` gets the totals after each durable batch. Call
    /// [`Import::finish`] after.
    pub fn add_all(
        &mut self,
        items: impl IntoIterator<Item = Result<(NewPatient, NewNote), Error>>,
        progress: &mut dyn FnMut(ImportSummary),
    ) -> Result<(), Error> {
        let vault = self.txn.vault;
        let (to_writer, batches) = std::sync::mpsc::sync_channel::<(Prepared, ImportSummary)>(1);
        let (to_producer, written) = std::sync::mpsc::channel::<ImportSummary>();
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<(), Error> {
                for (prepared, staged) in batches {
                    apply(vault, prepared)?;
                    // The producer may have stopped listening after an error of its own.
                    let _ = to_producer.send(staged);
                }
                Ok(())
            });
            let produce = || -> Result<(), Error> {
                for item in items {
                    let (patient, note) = item?;
                    let (_, full) = self.stage(patient, note)?;
                    if full {
                        if let Some(batch) = self.prepare_write(false)? {
                            if to_writer.send(batch).is_err() {
                                // The writer stopped on an error: it is reported below.
                                break;
                            }
                        }
                    }
                    while let Ok(c) = written.try_recv() {
                        self.committed = c;
                        progress(c);
                    }
                }
                Ok(())
            };
            let produced = produce();
            drop(to_writer);
            let wrote = match writer.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            for c in written.try_iter() {
                self.committed = c;
                progress(c);
            }
            wrote.and(produced)
        })
    }

    /// Stages one note; true when the batch is full.
    fn stage(&mut self, patient: NewPatient, note: NewNote) -> Result<(NoteId, bool), Error> {
        self.txn.vault.require(Duty::Clinical)?;
        let blind = self.txn.vault.blind(&patient.id);
        if !self.txn.patients.contains_key(&blind) {
            match self.txn.existing_patient(&patient.id) {
                Ok(_) => {}
                Err(Error::NoSuchPatient) => {
                    let at = note.created_at.unwrap_or_else(Timestamp::now);
                    self.txn.create_patient(patient, at)?;
                    self.staged.patients_created += 1;
                }
                Err(e) => return Err(e),
            }
        }
        self.pending_bytes += note.body.as_bytes().len();
        let id = self.txn.add_note(blind, note)?;
        self.staged.notes_imported += 1;
        self.pending_notes += 1;
        let full =
            self.pending_notes >= IMPORT_BATCH_NOTES || self.pending_bytes >= IMPORT_BATCH_BYTES;
        Ok((id, full))
    }

    /// Writes the pending batch now.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.write(false)
    }

    /// Commits the pending batch, with the import's progress record when it is resumable
    /// (marked complete by the last batch).
    fn write(&mut self, last: bool) -> Result<(), Error> {
        if let Some((prepared, staged)) = self.prepare_write(last)? {
            apply(self.txn.vault, prepared)?;
            self.committed = staged;
        } else {
            self.committed = self.staged;
        }
        Ok(())
    }

    /// Seals the pending batch with the import's progress record, for [`apply`]; with the
    /// totals it makes durable.
    fn prepare_write(&mut self, last: bool) -> Result<Option<(Prepared, ImportSummary)>, Error> {
        if self.pending_notes > 0 || last {
            self.txn.log = Some(("import", None, None));
        }
        if let Some(job) = &mut self.job {
            let v = self.txn.vault;
            self.txn
                .batch
                .require(space::META, META_IMPORT_JOB, job.stored.clone());
            let record = JobV1 {
                kind: JOB_IMPORT,
                target: if last { IMPORT_COMPLETE } else { 0 },
                source: job.source,
                done: job.base + self.staged.notes_imported,
            };
            let sealed = envelope::seal(
                Kind::Job,
                REGISTRY_KEY_VERSION,
                &v.registry_key,
                v.vault_id(),
                META_IMPORT_JOB,
                &frame::encode(&record, &[])?,
            )?;
            self.txn
                .batch
                .put(space::META, META_IMPORT_JOB, sealed.clone());
            // As for the manifests: the next batch is guarded by what this one writes.
            job.stored = Some(sealed);
        }
        let prepared = self.txn.prepare()?;
        self.pending_notes = 0;
        self.pending_bytes = 0;
        Ok(prepared.map(|p| (p, self.staged)))
    }

    /// What is durably stored so far, by this run. After an error, the batch whose write failed
    /// may be in the store too, whole but unacknowledged (its commit went through, its flush did
    /// not); a resumable import's job record, in the same batch, always says exactly.
    pub fn committed(&self) -> ImportSummary {
        self.committed
    }

    /// For a resumable import: how many leading records of the source earlier, interrupted
    /// runs imported. The caller skips them.
    pub fn already_imported(&self) -> u64 {
        self.job.as_ref().map_or(0, |j| j.base)
    }

    /// For a resumable import: whether this source was already imported completely (then add
    /// nothing; see [`Vault::import_resumable`]).
    pub fn already_complete(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.complete)
    }

    /// For a resumable import: if an unfinished import of another source was tracked, how
    /// many of its records it had imported (they stay; it can no longer be resumed).
    pub fn abandoned(&self) -> Option<u64> {
        self.job.as_ref().and_then(|j| j.abandoned)
    }

    /// Writes the last batch and returns the totals of this run.
    pub fn finish(mut self) -> Result<ImportSummary, Error> {
        self.write(true)?;
        Ok(self.committed)
    }
}

/// A write transaction: stages records and the manifests and registry they change, then
/// commits them in one atomic batch guarded by compare-and-swap on those manifests and on the
/// registry, and flushes.
struct Txn<'v, S: Store> {
    vault: &'v Vault<S>,
    batch: Batch,
    patients: HashMap<Blind, PatientState>,
    registry: Option<(RegistryV1, Vec<u8>)>,
    registry_dirty: bool,
    /// Wrapped keys of the patients this transaction registers, for the key store.
    new_keys: Vec<(Blind, u32, Vec<u8>)>,
    /// The access-log entry committed with the writes: action, patient, note.
    log: Option<(&'static str, Option<String>, Option<String>)>,
}

impl<'v, S: Store> Txn<'v, S> {
    fn new(vault: &'v Vault<S>) -> Self {
        Txn {
            vault,
            batch: Batch::new(),
            patients: HashMap::new(),
            registry: None,
            registry_dirty: false,
            new_keys: Vec::new(),
            log: None,
        }
    }

    /// Loads an existing patient into the transaction and returns its blind.
    fn existing_patient(&mut self, id: &PatientId) -> Result<Blind, Error> {
        let blind = self.vault.blind(id);
        if !self.patients.contains_key(&blind) {
            let st = self.vault.find_patient(id)?;
            self.patients.insert(blind, st);
        }
        Ok(blind)
    }

    fn create_patient(&mut self, p: NewPatient, at: Timestamp) -> Result<(), Error> {
        check_field("the name", &p.name)?;
        let v = self.vault;
        let blind = v.blind(&p.id);
        if self.patients.contains_key(&blind) || v.store.get(space::PATIENTS, &blind.0)?.is_some() {
            return Err(Error::PatientExists);
        }
        if self.registry.is_none() {
            self.registry = Some(v.load_registry()?);
        }
        let Some((reg, _)) = self.registry.as_mut() else {
            return Err(Error::Internal("registry not loaded"));
        };
        let seq = reg.patients;
        reg.patients += 1;
        reg.head = registry_link(&reg.head, &blind);
        self.registry_dirty = true;

        let pk = SecretKey::random()?;
        let version = 1;
        let kk = patient_key_key(&blind, version);
        let wrapped = envelope::seal(
            Kind::PatientKey,
            v.key_store().epoch,
            &v.wrap_patient,
            v.vault_id(),
            &kk,
            pk.expose(),
        )?;
        let keys = PatientKeys::derive(version, &pk);
        let info = PatientV1 {
            seq,
            id: p.id.as_str().to_string(),
            name: p.name,
            birth_date: p.birth_date.map(|d| d.as_str().to_string()),
            created_at: at.unix_millis(),
        };
        let record = envelope::seal(
            Kind::Patient,
            version,
            &keys.record,
            v.vault_id(),
            &blind.0,
            &frame::encode(&info, &[])?,
        )?;
        self.new_keys.push((blind, version, wrapped));
        self.batch.require(space::PATIENTS, blind.0.to_vec(), None);
        self.batch.put(space::PATIENTS, blind.0.to_vec(), record);
        self.patients.insert(
            blind,
            PatientState {
                blind,
                keys,
                info,
                manifest: ManifestV1 {
                    next_seq: 0,
                    head: [0; 32],
                    notes: 0,
                },
                manifest_stored: None,
                dirty: true,
            },
        );
        Ok(())
    }

    fn add_note(&mut self, blind: Blind, note: NewNote) -> Result<NoteId, Error> {
        check_field("the author", &note.author)?;
        check_field("the kind", &note.kind)?;
        let seq = self
            .patients
            .get(&blind)
            .ok_or(Error::Internal("patient not loaded"))?
            .manifest
            .next_seq;
        let id = NoteId::at_position(seq)?;
        let now = Timestamp::now();
        let meta = NoteMetaV1 {
            seq: 0,
            created_at: note.created_at.unwrap_or(now).unix_millis(),
            updated_at: note.created_at.unwrap_or(now).unix_millis(),
            author: note.author.clone(),
            kind: note.kind.clone(),
        };
        self.add_version(blind, id.0, 1, meta, note.body.as_bytes())?;
        Ok(id)
    }

    /// Stages one note version at the next position of the patient's chain.
    fn add_version(
        &mut self,
        blind: Blind,
        note: [u8; 16],
        version: u32,
        mut meta: NoteMetaV1,
        body: &[u8],
    ) -> Result<(), Error> {
        let v = self.vault;
        let st = self
            .patients
            .get_mut(&blind)
            .ok_or(Error::Internal("patient not loaded"))?;
        meta.seq = st.manifest.next_seq;
        let key = note_key(&blind, &note, version);
        let record = envelope::seal(
            Kind::Note,
            st.keys.version,
            &st.keys.note,
            v.vault_id(),
            &key,
            &frame::encode(&meta, body)?,
        )?;
        // No "absent" precondition per note: the patient's manifest is guarded by
        // compare-and-swap in the same batch, and every note version extends that manifest, so
        // two writers of one note position cannot both commit (a lookup per note saved).
        self.batch.put(space::NOTES, key, record);
        st.manifest.next_seq += 1;
        st.manifest.head = note_link(&st.manifest.head, &note, version);
        if version == 1 {
            st.manifest.notes += 1;
        }
        st.dirty = true;
        Ok(())
    }

    /// Seals the changed manifests and registry, commits everything atomically (guarded by
    /// compare-and-swap on their stored values) and flushes.
    fn commit(&mut self) -> Result<(), Error> {
        match self.prepare()? {
            Some(p) => apply(self.vault, p),
            None => Ok(()),
        }
    }

    /// Seals the changed manifests and registry into the batch and takes everything a commit
    /// writes ([`apply`] writes it). From here on the transaction assumes that commit succeeds:
    /// the next one is guarded by the bytes sealed now, so if it fails, drop the transaction
    /// (a later commit could only fail its compare-and-swap, never overwrite).
    fn prepare(&mut self) -> Result<Option<Prepared>, Error> {
        let v = self.vault;
        let mut batch = std::mem::take(&mut self.batch);
        let mut sealed_manifests = Vec::new();
        for st in self.patients.values().filter(|s| s.dirty) {
            let m = envelope::seal(
                Kind::Manifest,
                st.keys.version,
                &st.keys.manifest,
                v.vault_id(),
                &st.blind.0,
                &frame::encode(&st.manifest, &[])?,
            )?;
            batch.require(
                space::MANIFESTS,
                st.blind.0.to_vec(),
                st.manifest_stored.clone(),
            );
            batch.put(space::MANIFESTS, st.blind.0.to_vec(), m.clone());
            sealed_manifests.push((st.blind, m));
        }
        let mut sealed_registry = None;
        if self.registry_dirty {
            if let Some((reg, stored)) = &self.registry {
                let r = seal_registry(&v.registry_key, v.vault_id(), reg)?;
                batch.require(space::META, META_REGISTRY, Some(stored.clone()));
                batch.put(space::META, META_REGISTRY, r.clone());
                sealed_registry = Some(r);
            }
        }
        if batch.is_empty() && batch.preconditions.is_empty() {
            return Ok(None);
        }
        {
            let mut chains = v.chains();
            for (blind, _) in &sealed_manifests {
                chains.remove(blind);
            }
        }
        for (blind, m) in sealed_manifests {
            if let Some(st) = self.patients.get_mut(&blind) {
                st.manifest_stored = Some(m);
                st.dirty = false;
            }
        }
        if let (Some(r), Some((_, stored))) = (sealed_registry, self.registry.as_mut()) {
            *stored = r;
            self.registry_dirty = false;
        }
        Ok(Some(Prepared {
            batch,
            new_keys: std::mem::take(&mut self.new_keys),
            log: self.log.take(),
        }))
    }
}

/// Everything one commit writes, sealed: see [`Txn::prepare`].
struct Prepared {
    batch: Batch,
    new_keys: Vec<(Blind, u32, Vec<u8>)>,
    log: Option<(&'static str, Option<String>, Option<String>)>,
}

/// Writes a prepared commit: the new patients' wrapped keys first, then the records with the
/// access-log entry in one atomic batch, then a flush.
fn apply<S: Store>(v: &Vault<S>, p: Prepared) -> Result<(), Error> {
    let Prepared {
        mut batch,
        new_keys,
        log,
    } = p;
    // Poisoning is harmless: the guard protects no data, only the order of writes.
    let _writing = v.write_lock.lock().unwrap_or_else(|p| p.into_inner());
    if !new_keys.is_empty() {
        // The keys go first: a crash before the records are committed leaves unused keys,
        // never a record without its key. Under the write lock no one else can register
        // these patients between this check and the commit.
        for (blind, _, _) in &new_keys {
            if v.store.get(space::PATIENTS, &blind.0)?.is_some() {
                return Err(Error::PatientExists);
            }
        }
        v.append_keys(new_keys)?;
    }
    // The access-log entry goes in the same atomic batch: no write without its entry.
    if let Some((action, patient, note)) = log {
        v.stage_log(
            &mut batch,
            &crate::log::Event {
                action,
                patient: patient.as_deref(),
                note,
                outcome: "ok".into(),
            },
        )?;
    }
    v.store.commit(batch)?;
    v.store.flush()?;
    // The flush made any grouped access-log entries durable too.
    *v.log_unsynced.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::find_snippet;

    #[test]
    fn snippets_are_case_insensitive_and_bounded() {
        let body =
            "Le patient présente une TOUX sèche depuis trois semaines, sans fièvre.".as_bytes();
        let s = find_snippet(body, "toux").unwrap();
        assert!(s.contains("TOUX"), "{s}");
        assert!(find_snippet(body, "absent").is_none());
        let long = "a".repeat(500) + "NEEDLE" + &"b".repeat(500);
        let s = find_snippet(long.as_bytes(), "needle").unwrap();
        assert!(s.contains("NEEDLE") && s.chars().count() < 80, "{s}");
        assert!(find_snippet("İstanbul".as_bytes(), "stanbul").is_some());
        assert!(find_snippet("L'ÉCOLE est fermée".as_bytes(), "école").is_some());
        assert!(find_snippet("abc".as_bytes(), "abcd").is_none());
    }

    proptest::proptest! {
        #[test]
        fn matching_agrees_with_lowercasing_the_whole_text(
            // With the non-ASCII chars that lower-case to ASCII (Kelvin sign, dotted İ).
            text in "[a-cA-CéÉkKiI\u{212A}\u{130} ]{0,40}",
            needle in "[a-céki]{1,4}",
        ) {
            let expected = text.to_lowercase().contains(&needle);
            proptest::prop_assert_eq!(super::find_ignoring_case(&text, &needle).is_some(), expected);
        }
    }
}
