//! Entry points for the fuzz targets in `fuzz/` (docs/testing.md). Compiled only under
//! `cfg(fuzzing)` (set by cargo-fuzz), so the parsers stay private in normal builds. Each hook
//! feeds arbitrary bytes to one decoder of stored bytes; none may panic.

use crate::{envelope, frame, keyring, keystore, records};

/// The keyring parser (slots, seals, KDF parameter ranges). Unlocking is left out: it runs
/// Argon2id, which would make every input cost milliseconds.
pub fn keyring(data: &[u8]) {
    let _ = keyring::Keyring::parse(data);
}

/// The key store parser (with the vault id the input itself names, so entries get parsed).
pub fn keystore(data: &[u8]) {
    let vault_id: [u8; 16] = data
        .get(10..26)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; 16]);
    let _ = keystore::KeyStore::parse(data, &vault_id);
}

/// The record envelope parser and the plaintext frame decoder, for every payload type.
pub fn envelope_and_frame(data: &[u8]) {
    if let Ok(s) = envelope::Sealed::parse(data) {
        let _ = s.key_version;
    }
    let _ = frame::decode::<records::NoteMetaV1>(data);
    let _ = frame::decode::<records::PatientV1>(data);
    let _ = frame::decode::<records::ManifestV1>(data);
    let _ = frame::decode::<records::RegistryV1>(data);
    let _ = frame::decode::<records::VaultKeysV1>(data);
    let _ = frame::decode::<records::JobV1>(data);
    let _ = frame::decode::<records::UsersV1>(data);
}

/// The backup archive reader, restoring into memory.
pub fn backup(data: &[u8]) {
    let _ = crate::restore_backup(data, &carnet_storage::MemStore::new());
}

/// The recovery key and checkpoint text parsers.
pub fn texts(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::RecoveryKey::parse(s);
        let _ = crate::Checkpoint::parse(s);
    }
}
