//! The access log's public types: its entries, their actions, filters, checkpoints and when
//! reads' entries reach the disk. The log's stored records are in `records.rs` and its format
//! in docs/format.md, "Access log"; the vault's logging path is `vault/logging.rs`.

use std::fmt;

use crate::{Error, PatientId, Timestamp};

/// When the access-log entry of a read reaches the disk ([`crate::Vault::set_read_log`]).
///
/// Either way the entry is committed to the store before the read returns, in the log's
/// chain, and if it cannot be, the read returns nothing (fail closed). What differs is whether
/// the read also waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadLog {
    /// Each read's entry is flushed (fsync) before the read returns: a crash never loses the
    /// record of a read that returned data. The command line always uses this.
    #[default]
    Synced,
    /// Entries are flushed together: by the next write, [`crate::Vault::sync_log`], when the
    /// vault is dropped, or by the first read after `max_delay` has passed since the oldest
    /// unflushed entry. A power cut or a killed process can lose the entries of the reads in
    /// that window (never a write, never an entry in the middle of the chain). For long-lived
    /// processes that serve many reads; docs/threat-model.md weighs it.
    Grouped {
        /// The longest an entry waits for a flush while reads keep coming.
        max_delay: std::time::Duration,
    },
}

/// What a logged operation was. Each is stored as a fixed name (format 1 stores the words of
/// the command line that first used it: [`Action::stored_name`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Listing every patient.
    PatientList,
    /// Reading one patient.
    PatientShow,
    /// Registering a patient.
    PatientAdd,
    /// Crypto-shredding a patient.
    PatientErase,
    /// Listing a patient's notes (without bodies).
    NoteList,
    /// Reading a patient's chart (every current note with its body).
    NoteRead,
    /// Reading one note.
    NoteShow,
    /// Reading every version of one note.
    NoteHistory,
    /// Adding a note.
    NoteAdd,
    /// Amending a note.
    NoteAmend,
    /// Exporting a patient's whole record.
    Export,
    /// Searching notes.
    Search,
    /// A batch of a bulk import.
    Import,
    /// Verifying the vault.
    Verify,
    /// Reading the access log.
    Audit,
    /// Reading the access log's head.
    AuditCheckpoint,
    /// Listing users.
    UserList,
    /// Adding a user.
    UserAdd,
    /// Revoking a user.
    UserRemove,
    /// Reading the key status.
    KeyStatus,
    /// Rotating the master key.
    KeyRotateMaster,
    /// Rotating patient keys.
    KeyRotatePatient,
    /// Replacing the recovery key.
    KeyRotateRecovery,
    /// Changing a passphrase.
    KeyChangePassphrase,
    /// Upgrading the vault's format (and, with outcome `baseline`, the entries that record
    /// every patient's state at the upgrade).
    KeyUpgrade,
    /// Making the fence of key operations (ADR 0019), in the same batch: once per vault, at
    /// its first key operation. From then on the fence must be there.
    KeyFence,
    /// An action this version of Carnet does not know (written by a newer one), by its stored
    /// name.
    Other(String),
}

/// Every action but [`Action::Other`].
const KNOWN: [Action; 26] = [
    Action::PatientList,
    Action::PatientShow,
    Action::PatientAdd,
    Action::PatientErase,
    Action::NoteList,
    Action::NoteRead,
    Action::NoteShow,
    Action::NoteHistory,
    Action::NoteAdd,
    Action::NoteAmend,
    Action::Export,
    Action::Search,
    Action::Import,
    Action::Verify,
    Action::Audit,
    Action::AuditCheckpoint,
    Action::UserList,
    Action::UserAdd,
    Action::UserRemove,
    Action::KeyStatus,
    Action::KeyRotateMaster,
    Action::KeyRotatePatient,
    Action::KeyRotateRecovery,
    Action::KeyChangePassphrase,
    Action::KeyUpgrade,
    Action::KeyFence,
];

impl Action {
    /// The name stored in the log's entries (docs/format.md, "Payloads", LogEntry). Frozen:
    /// vaults already written hold these bytes.
    pub fn stored_name(&self) -> &str {
        match self {
            Action::PatientList => "patient list",
            Action::PatientShow => "patient show",
            Action::PatientAdd => "patient add",
            Action::PatientErase => "patient erase",
            Action::NoteList => "note list",
            Action::NoteRead => "note read",
            Action::NoteShow => "note show",
            Action::NoteHistory => "note history",
            Action::NoteAdd => "note add",
            Action::NoteAmend => "note amend",
            Action::Export => "export",
            Action::Search => "search",
            Action::Import => "import",
            Action::Verify => "verify",
            Action::Audit => "audit",
            Action::AuditCheckpoint => "audit checkpoint",
            Action::UserList => "user list",
            Action::UserAdd => "user add",
            Action::UserRemove => "user remove",
            Action::KeyStatus => "key status",
            Action::KeyRotateMaster => "key rotate-master",
            Action::KeyRotatePatient => "key rotate-patient",
            Action::KeyRotateRecovery => "key rotate-recovery",
            Action::KeyChangePassphrase => "key change-passphrase",
            Action::KeyUpgrade => "key upgrade",
            Action::KeyFence => "key fence",
            Action::Other(name) => name,
        }
    }

    /// The action stored as `name`.
    pub(crate) fn from_stored(name: String) -> Action {
        KNOWN
            .iter()
            .find(|a| a.stored_name() == name)
            .cloned()
            .unwrap_or(Action::Other(name))
    }
}

/// One access-log entry, decrypted.
#[derive(Clone)]
#[non_exhaustive]
pub struct LogEntry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// Who: the user whose slot (or, with [`LogEntry::via_recovery_key`], whose name with the
    /// recovery key) unlocked the vault.
    pub user: String,
    /// Whether the vault was unlocked with the recovery key rather than the user's passphrase.
    pub via_recovery_key: bool,
    /// What was done.
    pub action: Action,
    /// The patient concerned, if any: the first of [`LogEntry::patients`].
    pub patient_id: Option<String>,
    /// Every patient whose data the operation showed or changed (format 2: a search names
    /// every patient with a hit, an import every patient of its batch; a format-1 entry names
    /// one patient at most).
    pub patients: Vec<String>,
    /// The note concerned, if any.
    pub note_id: Option<String>,
    /// The user the operation concerned (`user add`, `user remove`), in format 2.
    pub subject: Option<String>,
    /// `ok`, or a short reason.
    pub outcome: String,
}

impl fmt::Debug for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogEntry")
            .field("seq", &self.seq)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// Which entries `audit` returns. Its `Debug` output shows no value (they are personal data).
/// Build one with `AuditFilter::default()` and set the fields wanted.
#[derive(Default)]
#[non_exhaustive]
pub struct AuditFilter {
    /// Only entries about this patient.
    pub patient: Option<PatientId>,
    /// Only entries by this user (with a passphrase or the recovery key).
    pub user: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
}

impl fmt::Debug for AuditFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditFilter(<redacted>)")
    }
}

/// The head of the log at one moment: keep it off the server, and `verify` later proves the
/// vault still contains it (no rollback behind it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checkpoint {
    /// Entries in the log.
    pub count: u64,
    /// The chain value after the last entry.
    pub head: [u8; 32],
}

impl Checkpoint {
    pub(crate) fn new(count: u64, head: [u8; 32]) -> Self {
        Checkpoint { count, head }
    }

    /// `carnet-log-checkpoint v1 COUNT HEAD-HEX`.
    pub fn to_line(&self) -> String {
        let hex: String = self.head.iter().map(|b| format!("{b:02x}")).collect();
        format!("carnet-log-checkpoint v1 {} {hex}", self.count)
    }

    /// Parses [`Checkpoint::to_line`]'s format.
    pub fn parse(line: &str) -> Result<Self, Error> {
        let bad = || {
            Error::InvalidArgument(
                "not a Carnet log checkpoint (carnet-log-checkpoint v1 COUNT HEAD)".into(),
            )
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() != 4
            || parts[0] != "carnet-log-checkpoint"
            || parts[1] != "v1"
            || parts[3].len() != 64
        {
            return Err(bad());
        }
        let count = parts[2].parse().map_err(|_| bad())?;
        let mut head = [0u8; 32];
        for (i, h) in head.iter_mut().enumerate() {
            *h = u8::from_str_radix(parts[3].get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Checkpoint { count, head })
    }
}

/// A short, secret-free reason for a failed operation, for the log's `outcome`.
pub(crate) fn reason(e: &Error) -> String {
    match e {
        Error::NoSuchPatient => "no such patient".into(),
        Error::NoSuchNote => "no such note".into(),
        Error::PatientExists => "patient exists".into(),
        Error::NotPermitted(_) => "not permitted".into(),
        Error::Integrity(_) => "integrity failure".into(),
        Error::InvalidArgument(_) | Error::TooLarge(_) => "invalid input".into(),
        _ => "failed".into(),
    }
}

/// `ok`, or the short reason of a failure.
pub(crate) fn outcome<T>(result: &Result<T, Error>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(e) => reason(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip() {
        let c = Checkpoint {
            count: 42,
            head: [0xab; 32],
        };
        assert_eq!(Checkpoint::parse(&c.to_line()).unwrap(), c);
        assert!(Checkpoint::parse("carnet-log-checkpoint v1 x y").is_err());
        assert!(Checkpoint::parse("").is_err());
    }

    #[test]
    fn actions_round_trip_through_their_stored_names() {
        let mut names = std::collections::HashSet::new();
        for a in &KNOWN {
            let name = a.stored_name();
            assert_eq!(Action::from_stored(name.to_string()), *a);
            assert!(names.insert(name), "{name} is stored once");
        }
        let future = Action::from_stored("note sign".into());
        assert_eq!(future, Action::Other("note sign".into()));
        assert_eq!(future.stored_name(), "note sign");
    }
}
