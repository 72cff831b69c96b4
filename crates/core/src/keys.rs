//! Every key Carnet holds, typed by its role (docs/key-management.md, "The hierarchy").
//!
//! ```text
//! passphrase ─Argon2id─▶ slot key ─opens─▶ the slot's private key ─opens a seal─▶ epoch key
//! epoch key ─HKDF─▶ vault-keys wrap key ─seals─▶ blinding key, registry key, log keys
//! epoch key ─HKDF─▶ patient wrap key ───seals─▶ patient key (one per patient and version)
//! patient key ─HKDF─▶ patient record key, manifest key, note key
//! ```
//!
//! Each role is its own newtype around a [`SecretKey`]: zeroized on drop, no `Debug`, `Clone`
//! or `PartialEq`. Every derivation from one role to another is a named method here, and the
//! keys that seal records implement [`SealingKey`], whose record kinds `sealing.rs` fixes: a
//! log entry sealed with a patient key, or a note opened with the registry key, does not
//! compile. Raw key bytes leave a typed key only to be wrapped (`bytes_to_wrap`), which is what
//! the methods' callers say.

use crate::crypto::{
    self, LABEL_BLIND, LABEL_KEYRING_KEY_MAC, LABEL_KEYRING_MAC, LABEL_PATIENT_MANIFEST,
    LABEL_PATIENT_NOTE, LABEL_PATIENT_RECORD, LABEL_SLOT_COMMIT, LABEL_SLOT_KEK,
    LABEL_WRAP_PATIENT_KEY, LABEL_WRAP_VAULT_KEYS,
};
use crate::model::PatientId;
use crate::records::Blind;
use crate::secret::SecretKey;
use crate::Error;

/// The first version of the registry key, the only one of format 1 (registry, users and job
/// records are sealed under it).
pub(crate) const REGISTRY_KEY_VERSION: u32 = 1;

/// A key that seals records: its AEAD key and the version written in their headers (a master
/// epoch, a patient key version, a vault key version).
pub(crate) trait SealingKey {
    /// The key version a record sealed under this key carries in its header.
    fn version(&self) -> u32;
    /// The AEAD key, for `envelope.rs` only.
    fn aead(&self) -> &SecretKey;
}

/// Implements [`SealingKey`] for a struct `{ version: u32, key: SecretKey }`.
macro_rules! versioned_sealing_key {
    ($($t:ident),*) => {$(
        impl SealingKey for $t {
            fn version(&self) -> u32 {
                self.version
            }
            fn aead(&self) -> &SecretKey {
                &self.key
            }
        }
    )*};
}

versioned_sealing_key!(
    VaultKeysWrapKey,
    PatientWrapKey,
    PatientRecordKey,
    ManifestKey,
    NoteKey,
    LogKey,
    RegistryKey
);

/// The master key of one epoch. Stored only sealed to the key slots; everything else derives
/// from it (and it never seals a record itself).
pub(crate) struct EpochKey {
    epoch: u32,
    key: SecretKey,
}

impl EpochKey {
    /// A fresh master key for `epoch`.
    pub(crate) fn random(epoch: u32) -> Result<Self, Error> {
        Ok(EpochKey {
            epoch,
            key: crypto::random_key()?,
        })
    }

    /// The master key of `epoch`, as a slot's seal delivered it.
    pub(crate) fn from_bytes(epoch: u32, bytes: [u8; 32]) -> Self {
        EpochKey {
            epoch,
            key: SecretKey::from_bytes(bytes),
        }
    }

    /// Its epoch.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The key that wraps the vault keys under this epoch.
    pub(crate) fn vault_keys_wrap(&self) -> VaultKeysWrapKey {
        VaultKeysWrapKey {
            version: self.epoch,
            key: crypto::subkey(&self.key, LABEL_WRAP_VAULT_KEYS),
        }
    }

    /// The key that wraps patient keys under this epoch.
    pub(crate) fn patient_keys_wrap(&self) -> PatientWrapKey {
        PatientWrapKey {
            version: self.epoch,
            key: crypto::subkey(&self.key, LABEL_WRAP_PATIENT_KEY),
        }
    }

    /// The keyring's MAC over `body` (docs/format.md, "Keyring").
    pub(crate) fn keyring_mac(&self, body: &[u8]) -> [u8; 32] {
        crypto::hmac(&crypto::subkey(&self.key, LABEL_KEYRING_MAC), &[body])
    }

    /// The key's bytes, to seal them to a key slot.
    pub(crate) fn bytes_to_wrap(&self) -> &[u8; 32] {
        self.key.expose()
    }
}

/// Wraps the vault keys (kind 1, VaultKeys) under one epoch.
pub(crate) struct VaultKeysWrapKey {
    version: u32,
    key: SecretKey,
}

/// Wraps patient keys (kind 2, PatientKey) under one epoch.
pub(crate) struct PatientWrapKey {
    version: u32,
    key: SecretKey,
}

impl PatientWrapKey {
    /// The epoch it belongs to.
    pub(crate) fn epoch(&self) -> u32 {
        self.version
    }
}

/// One version of one patient's key: the root of that patient's record keys. Stored only
/// wrapped (a [`WrappedKey`] in the key store).
pub(crate) struct PatientKey {
    version: u32,
    key: SecretKey,
}

impl PatientKey {
    /// A fresh patient key of `version`.
    pub(crate) fn random(version: u32) -> Result<Self, Error> {
        Ok(PatientKey {
            version,
            key: crypto::random_key()?,
        })
    }

    /// A patient key of `version`, as unwrapped from the key store.
    pub(crate) fn from_bytes(version: u32, bytes: [u8; 32]) -> Self {
        PatientKey {
            version,
            key: SecretKey::from_bytes(bytes),
        }
    }

    /// The record keys it derives, one per purpose.
    pub(crate) fn derive(&self) -> PatientKeys {
        let sub = |label| crypto::subkey(&self.key, label);
        PatientKeys {
            record: PatientRecordKey {
                version: self.version,
                key: sub(LABEL_PATIENT_RECORD),
            },
            manifest: ManifestKey {
                version: self.version,
                key: sub(LABEL_PATIENT_MANIFEST),
            },
            note: NoteKey {
                version: self.version,
                key: sub(LABEL_PATIENT_NOTE),
            },
        }
    }

    /// The key's bytes, to wrap them under an epoch.
    pub(crate) fn bytes_to_wrap(&self) -> &[u8; 32] {
        self.key.expose()
    }
}

/// A patient's record keys for one key version.
pub(crate) struct PatientKeys {
    /// Seals the patient record (kind 4).
    pub(crate) record: PatientRecordKey,
    /// Seals the patient's manifest (kind 5).
    pub(crate) manifest: ManifestKey,
    /// Seals every version of every note of the patient (kind 6).
    pub(crate) note: NoteKey,
}

impl PatientKeys {
    /// The patient key version they derive from.
    pub(crate) fn version(&self) -> u32 {
        self.record.version
    }
}

/// Seals a patient record (kind 4).
pub(crate) struct PatientRecordKey {
    version: u32,
    key: SecretKey,
}

/// Seals a patient's manifest (kind 5).
pub(crate) struct ManifestKey {
    version: u32,
    key: SecretKey,
}

/// Seals a patient's note versions (kind 6).
pub(crate) struct NoteKey {
    version: u32,
    key: SecretKey,
}

#[cfg(test)]
impl NoteKey {
    /// A note key of `b` repeated, for tests of the envelope.
    pub(crate) fn for_tests(version: u32, b: u8) -> Self {
        NoteKey {
            version,
            key: SecretKey::from_bytes([b; 32]),
        }
    }
}

#[cfg(test)]
impl ManifestKey {
    /// A manifest key of `b` repeated, for tests of the envelope.
    pub(crate) fn for_tests(version: u32, b: u8) -> Self {
        ManifestKey {
            version,
            key: SecretKey::from_bytes([b; 32]),
        }
    }
}

/// The blinding key (a vault key): turns patient identifiers into storage keys.
pub(crate) struct BlindKey(SecretKey);

impl BlindKey {
    /// A fresh blinding key.
    pub(crate) fn random() -> Result<Self, Error> {
        Ok(BlindKey(crypto::random_key()?))
    }

    /// The blinding key, as unwrapped from the vault keys.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        BlindKey(SecretKey::from_bytes(bytes))
    }

    /// The storage key of a patient's records: HMAC-SHA-256 of the identifier.
    pub(crate) fn blind(&self, id: &PatientId) -> Blind {
        Blind(crypto::hmac(
            &self.0,
            &[LABEL_BLIND, id.as_str().as_bytes()],
        ))
    }

    /// The key's bytes, to wrap them with the other vault keys.
    pub(crate) fn bytes_to_wrap(&self) -> &[u8; 32] {
        self.0.expose()
    }
}

/// One version of the registry key (a vault key): seals the registry, the users record and job
/// records (kinds 3, 7 and 8). Format 1 has only version [`REGISTRY_KEY_VERSION`]; in format 2
/// each revocation adds one.
pub(crate) struct RegistryKey {
    version: u32,
    key: SecretKey,
}

impl RegistryKey {
    /// A fresh registry key of `version`.
    pub(crate) fn random(version: u32) -> Result<Self, Error> {
        Ok(RegistryKey {
            version,
            key: crypto::random_key()?,
        })
    }

    /// The registry key of `version`, as unwrapped from the vault keys.
    pub(crate) fn from_bytes(version: u32, bytes: [u8; 32]) -> Self {
        RegistryKey {
            version,
            key: SecretKey::from_bytes(bytes),
        }
    }

    /// The key's bytes, to wrap them with the other vault keys.
    pub(crate) fn bytes_to_wrap(&self) -> &[u8; 32] {
        self.key.expose()
    }
}

/// One version of the access-log key (a vault key): seals log entries and the log head
/// (kinds 9 and 10).
pub(crate) struct LogKey {
    version: u32,
    key: SecretKey,
}

impl LogKey {
    /// A fresh log key of `version`.
    pub(crate) fn random(version: u32) -> Result<Self, Error> {
        Ok(LogKey {
            version,
            key: crypto::random_key()?,
        })
    }

    /// A log key of `version`, as unwrapped from the vault keys.
    pub(crate) fn from_bytes(version: u32, bytes: [u8; 32]) -> Self {
        LogKey {
            version,
            key: SecretKey::from_bytes(bytes),
        }
    }

    /// The key's bytes, to wrap them with the other vault keys.
    pub(crate) fn bytes_to_wrap(&self) -> &[u8; 32] {
        self.key.expose()
    }
}

/// The keyring key of one version (format 2): held inside every key slot's passphrase-protected
/// part, and among the vault keys, it authenticates the keyring. Someone who never held a slot
/// cannot MAC a keyring under it, so a master key they seal to the slots is refused.
pub(crate) struct KeyringKey {
    version: u32,
    key: SecretKey,
}

impl KeyringKey {
    /// A fresh keyring key of `version`.
    pub(crate) fn random(version: u32) -> Result<Self, Error> {
        Ok(KeyringKey {
            version,
            key: crypto::random_key()?,
        })
    }

    /// A keyring key of `version`, as opened from a slot or the vault keys.
    pub(crate) fn from_bytes(version: u32, bytes: [u8; 32]) -> Self {
        KeyringKey {
            version,
            key: SecretKey::from_bytes(bytes),
        }
    }

    /// Its version.
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    /// The keyring's MAC over `body` under this key (docs/format.md, "Keyring", version 2).
    pub(crate) fn mac(&self, body: &[u8]) -> [u8; 32] {
        crypto::hmac(&crypto::subkey(&self.key, LABEL_KEYRING_KEY_MAC), &[body])
    }

    /// The key's bytes, to seal them to a slot or wrap them with the vault keys.
    pub(crate) fn bytes_to_wrap(&self) -> &[u8; 32] {
        self.key.expose()
    }
}

/// A key slot's key-encryption key: derived from a passphrase (through Argon2id) or from the
/// recovery key, it seals the slot's X25519 private key (docs/format.md, "Keyring").
pub(crate) struct SlotKey(SecretKey);

impl SlotKey {
    /// The slot key and the slot's key commitment, from the slot's root secret `root` (the
    /// Argon2id output, or the recovery key's HKDF).
    pub(crate) fn derive(root: &SecretKey, vault_id: &[u8; 16]) -> (SlotKey, [u8; 32]) {
        let kek = crypto::hkdf(Some(vault_id), root.expose(), &[LABEL_SLOT_KEK]);
        let commit = crypto::hkdf(Some(vault_id), root.expose(), &[LABEL_SLOT_COMMIT]);
        (SlotKey(kek), *commit.expose())
    }

    /// A slot key from its bytes (kept by an opened slot).
    pub(crate) fn from_secret(key: SecretKey) -> SlotKey {
        SlotKey(key)
    }

    /// The AEAD key, for the keyring's slot sealing only.
    pub(crate) fn aead(&self) -> &SecretKey {
        &self.0
    }
}

/// A key sealed under another, as stored: a PatientKey record (kind 2) or the VaultKeys record
/// (kind 1) in the key store. Ciphertext, so it may be copied freely.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// Sealed bytes, as read from the key store or just sealed.
    pub(crate) fn new(sealed: Vec<u8>) -> Self {
        WrappedKey(sealed)
    }

    /// The sealed bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}
