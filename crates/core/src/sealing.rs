//! What seals each record kind, and where each is bound: the table of docs/format.md
//! ("Records and where they live") as types. Every record is sealed and opened through one of
//! the [`RecordKind`]s here, which name the key type that seals it and the place its
//! associated data binds it to, so that sealing a record with a key of another role, or binding
//! it to another kind's place, does not compile.

use crate::keys::{
    LogKey, ManifestKey, NoteKey, PatientRecordKey, PatientWrapKey, RegistryKey, SealingKey,
    VaultKeysWrapKey,
};
use crate::records::{Blind, JobSlot, LogAt, NoteAt, PatientKeyAt, META_LOG_HEAD, META_USERS};

/// The kind byte of an envelope (docs/format.md, "Record envelope").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    VaultKeys = 1,
    PatientKey = 2,
    Registry = 3,
    Patient = 4,
    Manifest = 5,
    Note = 6,
    Job = 7,
    Users = 8,
    LogEntry = 9,
    LogHead = 10,
}

impl Kind {
    pub(crate) fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::VaultKeys,
            2 => Kind::PatientKey,
            3 => Kind::Registry,
            4 => Kind::Patient,
            5 => Kind::Manifest,
            6 => Kind::Note,
            7 => Kind::Job,
            8 => Kind::Users,
            9 => Kind::LogEntry,
            10 => Kind::LogHead,
            _ => return None,
        })
    }
}

/// A record kind: its kind byte, the key that seals it, and the place it is bound to.
pub(crate) trait RecordKind {
    /// The envelope's kind byte.
    const KIND: Kind;
    /// The only key type that seals and opens this kind.
    type Key: SealingKey;
    /// Where a record of this kind belongs.
    type Place;
    /// Appends the place's binding to the associated data.
    fn bind(place: &Self::Place, aad: &mut Vec<u8>);
}

/// Kind 1: the vault keys, in the key store. Sealed under the epoch's vault-keys wrap key;
/// binding: nothing.
pub(crate) struct VaultKeysRecord;

impl RecordKind for VaultKeysRecord {
    const KIND: Kind = Kind::VaultKeys;
    type Key = VaultKeysWrapKey;
    type Place = ();
    fn bind(_: &(), _: &mut Vec<u8>) {}
}

/// Kind 2: one version of one patient's key, in the key store. Sealed under the epoch's
/// patient wrap key; binding: blind || key version.
pub(crate) struct PatientKeyRecord;

impl RecordKind for PatientKeyRecord {
    const KIND: Kind = Kind::PatientKey;
    type Key = PatientWrapKey;
    type Place = PatientKeyAt;
    fn bind(at: &PatientKeyAt, aad: &mut Vec<u8>) {
        at.write(aad);
    }
}

/// Kind 3: the patient registry. Sealed under the registry key; binding: nothing.
pub(crate) struct RegistryRecord;

impl RecordKind for RegistryRecord {
    const KIND: Kind = Kind::Registry;
    type Key = RegistryKey;
    type Place = ();
    fn bind(_: &(), _: &mut Vec<u8>) {}
}

/// Kind 4: a patient's identity. Sealed under the patient's record key; binding: the blind.
pub(crate) struct PatientRecord;

impl RecordKind for PatientRecord {
    const KIND: Kind = Kind::Patient;
    type Key = PatientRecordKey;
    type Place = Blind;
    fn bind(blind: &Blind, aad: &mut Vec<u8>) {
        aad.extend_from_slice(&blind.0);
    }
}

/// Kind 5: a patient's manifest. Sealed under the patient's manifest key; binding: the blind.
pub(crate) struct ManifestRecord;

impl RecordKind for ManifestRecord {
    const KIND: Kind = Kind::Manifest;
    type Key = ManifestKey;
    type Place = Blind;
    fn bind(blind: &Blind, aad: &mut Vec<u8>) {
        aad.extend_from_slice(&blind.0);
    }
}

/// Kind 6: one version of one note. Sealed under the patient's note key; binding: its storage
/// key (blind || note id || version).
pub(crate) struct NoteRecord;

impl RecordKind for NoteRecord {
    const KIND: Kind = Kind::Note;
    type Key = NoteKey;
    type Place = NoteAt;
    fn bind(at: &NoteAt, aad: &mut Vec<u8>) {
        at.write(aad);
    }
}

/// Kind 7: a long operation under way. Sealed under the registry key; binding: its storage key.
pub(crate) struct JobRecord;

impl RecordKind for JobRecord {
    const KIND: Kind = Kind::Job;
    type Key = RegistryKey;
    type Place = JobSlot;
    fn bind(slot: &JobSlot, aad: &mut Vec<u8>) {
        aad.extend_from_slice(slot.meta_key());
    }
}

/// Kind 8: the users and their roles. Sealed under the registry key; binding: its storage key.
pub(crate) struct UsersRecord;

impl RecordKind for UsersRecord {
    const KIND: Kind = Kind::Users;
    type Key = RegistryKey;
    type Place = ();
    fn bind(_: &(), aad: &mut Vec<u8>) {
        aad.extend_from_slice(META_USERS);
    }
}

/// Kind 9: one access-log entry. Sealed under a log key; binding: its sequence number and the
/// chain value before it.
pub(crate) struct LogEntryRecord;

impl RecordKind for LogEntryRecord {
    const KIND: Kind = Kind::LogEntry;
    type Key = LogKey;
    type Place = LogAt;
    fn bind(at: &LogAt, aad: &mut Vec<u8>) {
        aad.extend_from_slice(&at.seq.to_be_bytes());
        aad.extend_from_slice(&at.prev);
    }
}

/// Kind 10: the access log's head. Sealed under a log key; binding: its storage key.
pub(crate) struct LogHeadRecord;

impl RecordKind for LogHeadRecord {
    const KIND: Kind = Kind::LogHead;
    type Key = LogKey;
    type Place = ();
    fn bind(_: &(), aad: &mut Vec<u8>) {
        aad.extend_from_slice(META_LOG_HEAD);
    }
}
