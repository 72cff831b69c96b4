//! The plaintext payloads of each record kind, and where each record is stored.
//! Specified in docs/format.md, "Records".

use carnet_storage::Space;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Storage spaces (docs/format.md, "Storage layout").
pub(crate) mod space {
    use super::Space;
    /// Vault-wide records: the patient registry.
    pub(crate) const META: Space = Space::new("meta");
    /// Patient identities: blind (32).
    pub(crate) const PATIENTS: Space = Space::new("patients");
    /// Patient manifests: blind (32).
    pub(crate) const MANIFESTS: Space = Space::new("manifests");
    /// Note versions: blind (32) || note id (16) || note version (u32 BE).
    pub(crate) const NOTES: Space = Space::new("notes");
    /// Access-log entries: sequence number (u64 BE).
    pub(crate) const LOG: Space = Space::new("log");
    /// Every space, for code that walks the whole store (fuzzing's samples).
    #[cfg(test)]
    pub(crate) const ALL: [Space; 5] = [META, PATIENTS, MANIFESTS, NOTES, LOG];
}

pub(crate) const META_REGISTRY: &[u8] = b"registry";
pub(crate) const META_JOB: &[u8] = b"job";
pub(crate) const META_IMPORT_JOB: &[u8] = b"import-job";
pub(crate) const META_REVOKE_JOB: &[u8] = b"revoke-job";
pub(crate) const META_USERS: &[u8] = b"users";
pub(crate) const META_LOG_HEAD: &[u8] = b"log-head";

/// Job kind: a `rotate-patient --all` under way.
pub(crate) const JOB_ROTATE_ALL_PATIENTS: u8 = 1;
/// Job kind: an import under way.
pub(crate) const JOB_IMPORT: u8 = 2;
/// Job kind: a user's revocation under way (patient keys still to renew).
pub(crate) const JOB_REVOKE: u8 = 3;

/// Purpose codes of the vault keys.
pub(crate) const PURPOSE_BLIND: u8 = 1;
pub(crate) const PURPOSE_REGISTRY: u8 = 2;
pub(crate) const PURPOSE_LOG: u8 = 3;

/// One random vault key.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct VaultKeyV1 {
    pub(crate) purpose: u8,
    pub(crate) version: u32,
    pub(crate) key: [u8; 32],
}

/// Kind 1, VaultKeys.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct VaultKeysV1 {
    pub(crate) keys: Vec<VaultKeyV1>,
}

/// Kind 3, Registry: how many patients exist and the chain over their blinds.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct RegistryV1 {
    pub(crate) patients: u64,
    pub(crate) head: [u8; 32],
}

/// Kind 7, Job: a long operation under way, so that running it again resumes it.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct JobV1 {
    /// What the job is ([`JOB_ROTATE_ALL_PATIENTS`] or [`JOB_IMPORT`]).
    pub(crate) kind: u8,
    /// For a patient-key rotation: the key version every patient is brought to.
    pub(crate) target: u32,
    /// For an import: the SHA-256 of the source file.
    pub(crate) source: [u8; 32],
    /// For an import: how many of the source's records are imported.
    pub(crate) done: u64,
}

/// Kind 8, Users: every user's name and role.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct UsersV1 {
    pub(crate) users: Vec<UserV1>,
}

/// One user.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct UserV1 {
    pub(crate) name: String,
    /// 1 admin, 2 clinician, 3 auditor.
    pub(crate) role: u8,
}

/// Kind 4, Patient.
#[derive(Serialize, Deserialize, Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct PatientV1 {
    /// Position in the registry chain (0-based, in order of registration).
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) birth_date: Option<String>,
    pub(crate) created_at: i64,
}

/// Kind 5, Manifest: the head of the patient's note chain.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct ManifestV1 {
    /// Number of note versions ever written (the next version's position in the chain).
    pub(crate) next_seq: u64,
    /// The chain head after the last version.
    pub(crate) head: [u8; 32],
    /// Number of distinct notes.
    pub(crate) notes: u64,
}

/// Kind 6, Note: metadata of one version; the body follows in the frame.
#[derive(Serialize, Deserialize, Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct NoteMetaV1 {
    /// Position in the patient's note chain.
    pub(crate) seq: u64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) author: Option<String>,
    pub(crate) kind: Option<String>,
}

/// The blinded index of a patient: HMAC-SHA-256(blind key, label || patient id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Blind(pub(crate) [u8; 32]);

impl std::fmt::Debug for Blind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blind({})", self.short())
    }
}

impl Blind {
    /// A short, non-secret name for messages: the first 6 bytes in hex.
    pub(crate) fn short(&self) -> String {
        self.0[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn from_slice(b: &[u8]) -> Option<Blind> {
        Some(Blind(b.try_into().ok()?))
    }
}

/// The binding of a wrapped patient key: blind || key version.
pub(crate) fn patient_key_key(blind: &Blind, version: u32) -> Vec<u8> {
    [&blind.0[..], &version.to_be_bytes()].concat()
}

/// The storage key of a note version.
pub(crate) fn note_key(blind: &Blind, note: &[u8; 16], version: u32) -> Vec<u8> {
    [&blind.0[..], &note[..], &version.to_be_bytes()].concat()
}

/// Splits a note storage key into (blind, note id, version).
pub(crate) fn parse_note_key(k: &[u8]) -> Option<(Blind, [u8; 16], u32)> {
    if k.len() != 52 {
        return None;
    }
    Some((
        Blind::from_slice(&k[..32])?,
        k[32..48].try_into().ok()?,
        u32::from_be_bytes(k[48..52].try_into().ok()?),
    ))
}

/// One link of the registry chain.
pub(crate) fn registry_link(head: &[u8; 32], blind: &Blind) -> [u8; 32] {
    crate::crypto::sha256(&[crate::crypto::LABEL_REGISTRY_CHAIN, head, &blind.0])
}

/// One link of a patient's note chain.
pub(crate) fn note_link(head: &[u8; 32], note: &[u8; 16], version: u32) -> [u8; 32] {
    crate::crypto::sha256(&[
        crate::crypto::LABEL_NOTE_CHAIN,
        head,
        note,
        &version.to_be_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the bincode encoding that docs/format.md ("Payloads") describes.
    #[test]
    fn payload_encoding_is_as_specified() {
        let m = ManifestV1 {
            next_seq: 300,
            head: [7; 32],
            notes: 2,
        };
        let bytes = bincode::serde::encode_to_vec(&m, bincode::config::standard()).unwrap();
        let mut want = vec![251, 0x2c, 0x01];
        want.extend_from_slice(&[7; 32]);
        want.push(2);
        assert_eq!(bytes, want);

        let n = NoteMetaV1 {
            seq: 1,
            created_at: -1,
            updated_at: 2,
            author: Some("é".into()),
            kind: None,
        };
        let bytes = bincode::serde::encode_to_vec(&n, bincode::config::standard()).unwrap();
        assert_eq!(bytes, vec![1, 1, 4, 1, 2, 0xc3, 0xa9, 0]);
    }

    #[test]
    fn storage_keys_are_as_specified() {
        let b = Blind([1; 32]);
        assert_eq!(patient_key_key(&b, 2)[32..], [0, 0, 0, 2]);
        let k = note_key(&b, &[9; 16], 3);
        assert_eq!(k.len(), 52);
        assert_eq!(parse_note_key(&k), Some((b, [9; 16], 3)));
        assert_eq!(parse_note_key(&k[..51]), None);
    }
}
