//! The plaintext payloads of each record kind, where each record is stored, the places records
//! are bound to, and the chains over them. Specified in docs/format.md, "Records and where they
//! live", "Payloads" and "Chains". What seals each kind is in `sealing.rs`.

use carnet_storage::Space;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{self, LABEL_LOG_CHAIN, LABEL_NOTE_CHAIN, LABEL_REGISTRY_CHAIN};

/// Storage spaces (docs/format.md, "Storage layout").
pub(crate) mod space {
    use super::Space;
    /// Vault-wide records, one of each: the patient registry, the users, the access log's
    /// head, and the job records of long operations under way ([`super::JobSlot`]).
    pub(crate) const META: Space = Space::new("meta");
    /// Patient identities: blind (32).
    pub(crate) const PATIENTS: Space = Space::new("patients");
    /// Patient manifests: blind (32).
    pub(crate) const MANIFESTS: Space = Space::new("manifests");
    /// Note versions: blind (32) || note id (16) || note version (u32 BE).
    pub(crate) const NOTES: Space = Space::new("notes");
    /// Access-log entries: sequence number (u64 BE).
    pub(crate) const LOG: Space = Space::new("log");
    /// Every space, for code that walks the whole store (fuzzing's samples, the relay's host).
    pub(crate) const ALL: [Space; 5] = [META, PATIENTS, MANIFESTS, NOTES, LOG];
}

/// Storage keys (and bindings) of the `meta` space's single records.
pub(crate) const META_REGISTRY: &[u8] = b"registry";
pub(crate) const META_USERS: &[u8] = b"users";
pub(crate) const META_LOG_HEAD: &[u8] = b"log-head";

/// Where a job record is stored in the `meta` space: one record per kind of long operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobSlot {
    /// `"job"`: a `rotate-patient --all` under way ([`JOB_ROTATE_ALL_PATIENTS`]).
    RotateAllPatients,
    /// `"import-job"`: the last resumable import ([`JOB_IMPORT`]).
    Import,
    /// `"revoke-job"`: a user's revocation under way ([`JOB_REVOKE`]).
    Revoke,
    /// `"upgrade-job"`: an upgrade to format 2 under way ([`JOB_UPGRADE`]).
    Upgrade,
    /// `"fence"`: the key operations' fence ([`JOB_FENCE`], ADR 0019).
    Fence,
}

impl JobSlot {
    /// Every job slot, for `verify`.
    pub(crate) const ALL: [JobSlot; 5] = [
        JobSlot::RotateAllPatients,
        JobSlot::Import,
        JobSlot::Revoke,
        JobSlot::Upgrade,
        JobSlot::Fence,
    ];

    /// The storage key in the `meta` space, which is also the record's binding.
    pub(crate) fn meta_key(self) -> &'static [u8] {
        match self {
            JobSlot::RotateAllPatients => b"job",
            JobSlot::Import => b"import-job",
            JobSlot::Revoke => b"revoke-job",
            JobSlot::Upgrade => b"upgrade-job",
            JobSlot::Fence => b"fence",
        }
    }
}

/// Job kind: a `rotate-patient --all` under way.
pub(crate) const JOB_ROTATE_ALL_PATIENTS: u8 = 1;
/// Job kind: an import under way.
pub(crate) const JOB_IMPORT: u8 = 2;
/// Job kind: a user's revocation under way (patient keys still to renew).
pub(crate) const JOB_REVOKE: u8 = 3;
/// Job kind: an upgrade to format 2 under way (`done`: the patients whose state the baseline
/// entries already record).
pub(crate) const JOB_UPGRADE: u8 = 4;
/// Job kind: the fence of key operations (`target`: the operation under way, 0 for none;
/// `source`: a random value new at each change; `done`: while one is under way, the end of its
/// lease in Unix milliseconds, else 0).
pub(crate) const JOB_FENCE: u8 = 5;

/// A revocation job's `done` when the user revoked was an administrator (format 2: the recovery
/// key is replaced at its end).
pub(crate) const REVOKED_AN_ADMIN: u64 = 1;

/// Purpose codes of the vault keys.
pub(crate) const PURPOSE_BLIND: u8 = 1;
pub(crate) const PURPOSE_REGISTRY: u8 = 2;
pub(crate) const PURPOSE_LOG: u8 = 3;
/// Format 2: a keyring key (one per version).
pub(crate) const PURPOSE_KEYRING: u8 = 4;

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
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub(crate) struct RegistryV1 {
    pub(crate) patients: u64,
    pub(crate) head: [u8; 32],
}

/// Kind 7, Job: a long operation under way, so that running it again resumes it.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct JobV1 {
    /// What the job is ([`JOB_ROTATE_ALL_PATIENTS`], [`JOB_IMPORT`] or [`JOB_REVOKE`]).
    pub(crate) kind: u8,
    /// For a patient-key rotation or a revocation: the key version every patient is brought
    /// to. For an import: 0 while under way, 1 once complete.
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

/// Kind 8, Users, format 2: the users and the serial number that the keyring holds too, so
/// that an older users record does not open as current.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct UsersV2 {
    pub(crate) serial: u64,
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
    /// The patient's reference (ADR 0021): not in format 1's payload; a record of format 3
    /// carries it ([`PatientV3`]).
    #[serde(skip)]
    pub(crate) reference: Option<[u8; 16]>,
}

/// Kind 4, Patient, record format 3 (ADR 0021): format 1's fields and the patient's
/// reference, 16 random bytes drawn at registration (or when a patient registered before
/// references is first given one), by which `carnet serve` addresses the patient in URLs.
#[derive(Serialize, Deserialize, Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct PatientV3 {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) birth_date: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) reference: [u8; 16],
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

/// Kind 6, Note, format 2: the metadata of format 1 and who wrote the version.
#[derive(Serialize, Deserialize, Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct NoteMetaV2 {
    /// Position in the patient's note chain.
    pub(crate) seq: u64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    /// Free text, as given.
    pub(crate) author: Option<String>,
    pub(crate) kind: Option<String>,
    /// The user whose name unlocked the vault that wrote this version.
    pub(crate) written_by: String,
    /// Whether the recovery key unlocked it.
    pub(crate) via_recovery_key: bool,
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

/// Kind 9, LogEntry: one access-log entry.
#[derive(Serialize, Deserialize)]
pub(crate) struct LogEntryV1 {
    pub(crate) at: i64,
    /// `NAME`, or `NAME` followed by [`RECOVERY_SUFFIX`].
    pub(crate) user: String,
    /// The action's stored name (`access_log::Action::stored_name`).
    pub(crate) action: String,
    pub(crate) patient: Option<String>,
    pub(crate) note: Option<String>,
    pub(crate) outcome: String,
}

/// Kind 9, LogEntry, format 2: one access-log entry, which with its [`LogListsV2`] (the
/// frame's body) names every patient concerned and carries the state the write left.
#[derive(Serialize, Deserialize)]
pub(crate) struct LogEntryV2 {
    pub(crate) at: i64,
    /// The user whose name unlocked the vault.
    pub(crate) user: String,
    /// Whether the recovery key unlocked it, rather than the user's passphrase.
    pub(crate) via_recovery_key: bool,
    /// The action's stored name (`access_log::Action::stored_name`).
    pub(crate) action: String,
    pub(crate) note: Option<String>,
    /// The user the operation concerned (`user add`, `user remove`).
    pub(crate) subject: Option<String>,
    pub(crate) outcome: String,
    /// The registry as the write left it, if it changed it.
    pub(crate) registry: Option<RegistryV1>,
}

/// The body of a format-2 log entry's frame: its lists, which may be long (a search over every
/// patient, an import batch), so they are not bounded by the metadata's limit.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct LogListsV2 {
    /// Every patient whose data the operation showed or changed, by identifier.
    pub(crate) patients: Vec<String>,
    /// The manifests the write changed, as it left them.
    pub(crate) states: Vec<ManifestState>,
}

/// A patient's manifest as a write left it: the patient's blind, and its manifest's count of
/// versions and chain head (65 to 73 bytes in bincode: the count is a varint).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ManifestState {
    pub(crate) blind: [u8; 32],
    pub(crate) next_seq: u64,
    pub(crate) head: [u8; 32],
}

/// Appended to the user of a log entry written by a vault unlocked with the recovery key.
pub(crate) const RECOVERY_SUFFIX: &str = " (recovery key)";

/// Kind 10, LogHead: the access log's count and chain value.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct LogHeadV1 {
    pub(crate) count: u64,
    pub(crate) head: [u8; 32],
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

/// Where a wrapped patient key belongs: its patient and key version. Its binding is
/// blind || version (36 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) struct PatientKeyAt {
    pub(crate) blind: Blind,
    pub(crate) version: u32,
}

impl PatientKeyAt {
    /// Appends the binding to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.blind.0);
        out.extend_from_slice(&self.version.to_be_bytes());
    }
}

impl std::fmt::Display for PatientKeyAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "patient key {}/v{}", self.blind.short(), self.version)
    }
}

/// Where a note version is stored: blind || note id || version (52 bytes), which is both its
/// storage key and its binding. Displayed as integrity errors name it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct NoteAt {
    pub(crate) blind: Blind,
    pub(crate) note: [u8; 16],
    pub(crate) version: u32,
}

impl NoteAt {
    /// The length of a note's storage key.
    pub(crate) const LEN: usize = 52;

    /// The storage key.
    pub(crate) fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(Self::LEN);
        self.write(&mut k);
        k
    }

    /// Appends the storage key to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.blind.0);
        out.extend_from_slice(&self.note);
        out.extend_from_slice(&self.version.to_be_bytes());
    }

    /// Splits a note's storage key into its parts.
    pub(crate) fn parse(k: &[u8]) -> Option<NoteAt> {
        if k.len() != Self::LEN {
            return None;
        }
        Some(NoteAt {
            blind: Blind::from_slice(&k[..32])?,
            note: k[32..48].try_into().ok()?,
            version: u32::from_be_bytes(k[48..52].try_into().ok()?),
        })
    }
}

impl std::fmt::Display for NoteAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "note {}/{}/v{}",
            self.blind.short(),
            crate::model::NoteId(self.note),
            self.version
        )
    }
}

/// Where an access-log entry belongs: its sequence number and the chain value before it. Its
/// binding is both (40 bytes).
#[derive(Clone, Copy)]
pub(crate) struct LogAt {
    pub(crate) seq: u64,
    pub(crate) prev: [u8; 32],
}

/// One link of the registry chain.
pub(crate) fn registry_link(head: &[u8; 32], blind: &Blind) -> [u8; 32] {
    crypto::sha256(&[LABEL_REGISTRY_CHAIN, head, &blind.0])
}

/// One link of a patient's note chain.
pub(crate) fn note_link(head: &[u8; 32], note: &[u8; 16], version: u32) -> [u8; 32] {
    crypto::sha256(&[LABEL_NOTE_CHAIN, head, note, &version.to_be_bytes()])
}

/// One link of the access-log chain, over the entry's stored bytes.
pub(crate) fn log_link(head: &[u8; 32], stored_entry: &[u8]) -> [u8; 32] {
    crypto::sha256(&[LABEL_LOG_CHAIN, head, stored_entry])
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

    /// Pins the patient payload of record format 3 (docs/format.md, "Payloads of record
    /// format 3"), and that format 1's payload never carries the reference.
    #[test]
    fn patient_payloads_are_as_specified() {
        let cfg = bincode::config::standard();
        let v3 = PatientV3 {
            seq: 2,
            id: "P".into(),
            name: None,
            birth_date: Some("x".into()),
            created_at: 1,
            reference: [5; 16],
        };
        let bytes = bincode::serde::encode_to_vec(&v3, cfg).unwrap();
        let mut want = vec![2, 1, b'P', 0, 1, 1, b'x', 2];
        want.extend_from_slice(&[5; 16]);
        assert_eq!(bytes, want);
        let v1 = PatientV1 {
            seq: 2,
            id: "P".into(),
            name: None,
            birth_date: Some("x".into()),
            created_at: 1,
            reference: Some([5; 16]),
        };
        let bytes = bincode::serde::encode_to_vec(&v1, cfg).unwrap();
        assert_eq!(bytes, vec![2, 1, b'P', 0, 1, 1, b'x', 2]);
    }

    /// Pins the format-2 payloads of docs/format.md, "Payloads of format 2".
    #[test]
    fn format_2_payloads_are_as_specified() {
        let cfg = bincode::config::standard();
        let n = NoteMetaV2 {
            seq: 1,
            created_at: -1,
            updated_at: 2,
            author: None,
            kind: None,
            written_by: "bo".into(),
            via_recovery_key: true,
        };
        let bytes = bincode::serde::encode_to_vec(&n, cfg).unwrap();
        assert_eq!(bytes, vec![1, 1, 4, 0, 0, 2, b'b', b'o', 1]);
        let u = UsersV2 {
            serial: 300,
            users: vec![UserV1 {
                name: "a".into(),
                role: 1,
            }],
        };
        let bytes = bincode::serde::encode_to_vec(&u, cfg).unwrap();
        assert_eq!(bytes, vec![251, 0x2c, 0x01, 1, 1, b'a', 1]);
        let e = LogEntryV2 {
            at: 1,
            user: "u".into(),
            via_recovery_key: false,
            action: "x".into(),
            note: None,
            subject: Some("s".into()),
            outcome: "ok".into(),
            registry: Some(RegistryV1 {
                patients: 2,
                head: [9; 32],
            }),
        };
        let bytes = bincode::serde::encode_to_vec(&e, cfg).unwrap();
        let mut want = vec![2, 1, b'u', 0, 1, b'x', 0, 1, 1, b's', 2, b'o', b'k', 1, 2];
        want.extend_from_slice(&[9; 32]);
        assert_eq!(bytes, want);
        let lists = LogListsV2 {
            patients: vec!["p".into()],
            states: vec![ManifestState {
                blind: [7; 32],
                next_seq: 3,
                head: [8; 32],
            }],
        };
        let bytes = bincode::serde::encode_to_vec(&lists, cfg).unwrap();
        let mut want = vec![1, 1, b'p', 1];
        want.extend_from_slice(&[7; 32]);
        want.push(3);
        want.extend_from_slice(&[8; 32]);
        assert_eq!(bytes, want);
        assert_eq!(
            bytes.len() - 4,
            65,
            "a state is 65 bytes when next_seq < 251"
        );
    }

    #[test]
    fn storage_keys_are_as_specified() {
        let b = Blind([1; 32]);
        let mut binding = Vec::new();
        PatientKeyAt {
            blind: b,
            version: 2,
        }
        .write(&mut binding);
        assert_eq!(binding.len(), 36);
        assert_eq!(binding[32..], [0, 0, 0, 2]);
        let at = NoteAt {
            blind: b,
            note: [9; 16],
            version: 3,
        };
        let k = at.key();
        assert_eq!(k.len(), 52);
        assert_eq!(k[48..], [0, 0, 0, 3]);
        assert_eq!(NoteAt::parse(&k), Some(at));
        assert_eq!(NoteAt::parse(&k[..51]), None);
        assert_eq!(JobSlot::Import.meta_key(), b"import-job");
    }
}
