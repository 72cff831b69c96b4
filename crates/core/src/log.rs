//! The access log: who did what to which patient, encrypted and chained. Specified in
//! docs/format.md, "Access log".
//!
//! Every entry is sealed under the current log key (a versioned vault key) with associated data
//! binding its sequence number and the chain value before it; the chain value after entry *i* is
//! SHA-256(label || chain value before || entry *i*'s stored bytes). A head record, updated in
//! the same atomic batch as each entry, holds the count and the last chain value, so an entry
//! edited, removed, reordered or truncated is detected; a checkpoint kept off the server detects
//! a rollback of the whole vault.

use std::fmt;

use carnet_storage::{Batch, Store};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, LABEL_LOG_CHAIN};
use crate::envelope::{self, Kind, Sealed};
use crate::frame;
use crate::records::{space, META_LOG_HEAD};
use crate::users::Duty;
use crate::vault::{integrity, open_frame, parse_error};
use crate::{Error, IntegrityError, NoteId, PatientId, Timestamp, Vault};

#[derive(Serialize, Deserialize)]
pub(crate) struct LogEntryV1 {
    at: i64,
    user: String,
    action: String,
    patient: Option<String>,
    note: Option<String>,
    outcome: String,
}

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct LogHeadV1 {
    pub(crate) count: u64,
    pub(crate) head: [u8; 32],
}

/// When the access-log entry of a read reaches the disk ([`Vault::set_read_log`]).
///
/// Either way the entry is committed to the store before the read returns, in the log's
/// chain, and if it cannot be, the read returns nothing (fail closed). What differs is whether
/// the read also waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadLog {
    /// Each read's entry is flushed (fsync) before the read returns: a crash never loses the
    /// record of a read that returned data. The command line always uses this.
    #[default]
    Synced,
    /// Entries are flushed together: by the next write, [`Vault::sync_log`], when the vault
    /// is dropped, or by the first read after `max_delay` has passed since the oldest
    /// unflushed entry. A power cut or a killed process can lose the entries of the reads in
    /// that window (never a write, never an entry in the middle of the chain). For long-lived
    /// processes that serve many reads; docs/threat-model.md weighs it.
    Grouped {
        /// The longest an entry waits for a flush while reads keep coming.
        max_delay: std::time::Duration,
    },
}

/// One access-log entry, decrypted.
#[derive(Clone)]
pub struct LogEntry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// Who (`NAME`, or `NAME (recovery key)`).
    pub user: String,
    /// The command, as typed (`note show`, `patient add`, `key rotate-master`...).
    pub action: String,
    /// The patient concerned, if any.
    pub patient_id: Option<String>,
    /// The note concerned, if any.
    pub note_id: Option<String>,
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
#[derive(Default)]
pub struct AuditFilter {
    /// Only entries about this patient.
    pub patient: Option<PatientId>,
    /// Only entries by this user.
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
pub struct Checkpoint {
    /// Entries in the log.
    pub count: u64,
    /// The chain value after the last entry.
    pub head: [u8; 32],
}

impl Checkpoint {
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
fn outcome<T>(result: &Result<T, Error>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(e) => reason(e),
    }
}

/// An event to log.
pub(crate) struct Event<'a> {
    pub(crate) action: &'a str,
    pub(crate) patient: Option<&'a str>,
    pub(crate) note: Option<String>,
    pub(crate) outcome: String,
}

impl<S: Store> Vault<S> {
    fn log_head(&self) -> Result<(LogHeadV1, Option<Vec<u8>>), Error> {
        let Some(stored) = self.store.get(space::META, META_LOG_HEAD)? else {
            return Err(integrity("access log", "head missing"));
        };
        let sealed = Sealed::parse(&stored).map_err(|e| parse_error("access log head", e))?;
        let key = self.log_key(sealed.key_version)?;
        let (head, _) = open_frame::<LogHeadV1>(
            "access log head",
            &stored,
            Kind::LogHead,
            key,
            self.vault_id(),
            META_LOG_HEAD,
        )?;
        Ok((head, Some(stored)))
    }

    fn log_key(&self, version: u32) -> Result<&crate::secret::SecretKey, Error> {
        self.log_keys
            .get(&version)
            .ok_or_else(|| integrity("access log", format!("log key version {version} missing")))
    }

    /// Stages the entry for `event` and the new head in `batch`. The caller holds the write lock
    /// and commits `batch` atomically with whatever the entry records.
    pub(crate) fn stage_log(&self, batch: &mut Batch, event: &Event<'_>) -> Result<(), Error> {
        let (head, stored_head) = self.log_head()?;
        let (version, key) = self
            .log_keys
            .iter()
            .next_back()
            .ok_or_else(|| integrity("access log", "no log key"))?;
        let user = if self.via_recovery {
            format!("{} (recovery key)", self.user)
        } else {
            self.user.clone()
        };
        let entry = LogEntryV1 {
            at: Timestamp::now().unix_millis(),
            user,
            action: event.action.to_string(),
            patient: event.patient.map(str::to_string),
            note: event.note.clone(),
            outcome: event.outcome.clone(),
        };
        let seq = head.count;
        let binding = [&seq.to_be_bytes()[..], &head.head[..]].concat();
        let sealed = envelope::seal(
            Kind::LogEntry,
            *version,
            key,
            self.vault_id(),
            &binding,
            &frame::encode(&entry, &[])?,
        )?;
        let next = LogHeadV1 {
            count: seq + 1,
            head: crypto::sha256(&[LABEL_LOG_CHAIN, &head.head, &sealed]),
        };
        let sealed_head = envelope::seal(
            Kind::LogHead,
            *version,
            key,
            self.vault_id(),
            META_LOG_HEAD,
            &frame::encode(&next, &[])?,
        )?;
        batch.require(space::LOG, seq.to_be_bytes().to_vec(), None);
        batch.put(space::LOG, seq.to_be_bytes().to_vec(), sealed);
        batch.require(space::META, META_LOG_HEAD, stored_head);
        batch.put(space::META, META_LOG_HEAD, sealed_head);
        Ok(())
    }

    /// Appends one entry durably, in its own atomic batch.
    pub(crate) fn log_event(&self, event: &Event<'_>) -> Result<(), Error> {
        self.append_log(event, ReadLog::Synced)
    }

    /// Appends one entry in its own atomic batch, flushed as `policy` says.
    fn append_log(&self, event: &Event<'_>, policy: ReadLog) -> Result<(), Error> {
        // Poisoning is harmless: the guard protects no data, only the order of writes.
        let _writing = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = Batch::new();
        self.stage_log(&mut b, event)?;
        self.store.commit(b)?;
        // Poisoning is harmless: the value is only a time.
        let mut unsynced = self.log_unsynced.lock().unwrap_or_else(|p| p.into_inner());
        let since = *unsynced.get_or_insert_with(std::time::Instant::now);
        match policy {
            ReadLog::Grouped { max_delay } if since.elapsed() < max_delay => {}
            _ => {
                self.store.flush()?;
                *unsynced = None;
            }
        }
        Ok(())
    }

    /// How reads' access-log entries reach the disk: see [`ReadLog`]. The default is
    /// [`ReadLog::Synced`]; writes are always durable before they return, whatever this says.
    pub fn set_read_log(&mut self, policy: ReadLog) {
        self.read_log = policy;
    }

    /// Flushes access-log entries that [`ReadLog::Grouped`] left in the store's buffers.
    pub fn sync_log(&self) -> Result<(), Error> {
        let _writing = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut unsynced = self.log_unsynced.lock().unwrap_or_else(|p| p.into_inner());
        if unsynced.is_some() {
            self.store.flush()?;
            *unsynced = None;
        }
        Ok(())
    }

    /// Runs a read, logs it with its outcome, and returns its result only once the entry is
    /// committed, and flushed unless [`ReadLog::Grouped`] defers it (fail closed: if the log
    /// cannot be written, nothing is returned).
    pub(crate) fn logged<T>(
        &self,
        action: &str,
        patient: Option<&PatientId>,
        note: Option<&NoteId>,
        op: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let result = op();
        self.log_outcome(action, patient, note, result, self.read_log)
    }

    /// Logs the outcome of an operation that already ran (key and user operations, which show
    /// no patient data). A failure to log is reported, so the administrator knows.
    pub(crate) fn logged_result<T>(
        &self,
        action: &str,
        patient: Option<&PatientId>,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        self.log_outcome(action, patient, None, result, ReadLog::Synced)
    }

    /// Appends the entry for `result`, flushed as `policy` says, then returns `result` (or the
    /// logging error).
    fn log_outcome<T>(
        &self,
        action: &str,
        patient: Option<&PatientId>,
        note: Option<&NoteId>,
        result: Result<T, Error>,
        policy: ReadLog,
    ) -> Result<T, Error> {
        self.append_log(
            &Event {
                action,
                patient: patient.map(PatientId::as_str),
                note: note.map(NoteId::to_string),
                outcome: outcome(&result),
            },
            policy,
        )?;
        result
    }

    /// Logs a failed write (its success is logged atomically with the write itself). A failure
    /// to log is ignored here: the operation already failed, and its error is what matters.
    pub(crate) fn log_failure<T>(
        &self,
        action: &str,
        patient: Option<&PatientId>,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if let Err(e) = &result {
            let _ = self.log_event(&Event {
                action,
                patient: patient.map(PatientId::as_str),
                note: None,
                outcome: reason(e),
            });
        }
        result
    }

    /// Every entry, checked: each opens with its position and the chain value before it, the
    /// count and chain match the head. Returns the entries and the chain value after each.
    fn read_log(
        &self,
        problems: &mut Vec<IntegrityError>,
    ) -> Result<Vec<(LogEntry, [u8; 32])>, Error> {
        let (head, _) = match self.log_head() {
            Ok(h) => h,
            Err(Error::Integrity(e)) => {
                problems.push(e);
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let mut chain = [0u8; 32];
        let mut out = Vec::new();
        let mut expected = 0u64;
        for r in self.store.scan_prefix(space::LOG, &[]) {
            let (k, v) = r?;
            let location = format!("access log entry {expected}");
            let seq = k.as_slice().try_into().map(u64::from_be_bytes).ok();
            if seq != Some(expected) {
                problems.push(IntegrityError::new(
                    location,
                    "missing or out of order (the log was edited)",
                ));
                return Ok(out);
            }
            let binding = [&expected.to_be_bytes()[..], &chain[..]].concat();
            let opened = Sealed::parse(&v)
                .map_err(|e| parse_error(&location, e))
                .and_then(|sealed| self.log_key(sealed.key_version))
                .and_then(|key| {
                    open_frame::<LogEntryV1>(
                        &location,
                        &v,
                        Kind::LogEntry,
                        key,
                        self.vault_id(),
                        &binding,
                    )
                });
            let e = match opened {
                Ok((e, _)) => e,
                Err(Error::Integrity(e)) => {
                    problems.push(e);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            chain = crypto::sha256(&[LABEL_LOG_CHAIN, &chain, &v]);
            out.push((
                LogEntry {
                    seq: expected,
                    at: Timestamp::from_unix_millis(e.at),
                    user: e.user,
                    action: e.action,
                    patient_id: e.patient,
                    note_id: e.note,
                    outcome: e.outcome,
                },
                chain,
            ));
            expected += 1;
        }
        if expected != head.count || chain != head.head {
            problems.push(IntegrityError::new(
                "access log",
                format!("the head lists {} entries but {expected} are stored, or the chain differs (entries removed or replaced)", head.count),
            ));
        }
        Ok(out)
    }

    /// The access log, oldest first, filtered (administrators and auditors). Itself logged.
    /// A log that fails its checks is an [`Error::Integrity`].
    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<LogEntry>, Error> {
        self.logged("audit", filter.patient.as_ref(), None, || {
            self.require(Duty::Audit)?;
            let mut problems = Vec::new();
            let entries = self.read_log(&mut problems)?;
            if let Some(p) = problems.into_iter().next() {
                return Err(Error::Integrity(p));
            }
            Ok(entries
                .into_iter()
                .map(|(e, _)| e)
                .filter(|e| {
                    filter
                        .patient
                        .as_ref()
                        .is_none_or(|p| e.patient_id.as_deref() == Some(p.as_str()))
                })
                .filter(|e| {
                    filter
                        .user
                        .as_ref()
                        .is_none_or(|u| e.user == *u || e.user.starts_with(&format!("{u} (")))
                })
                .filter(|e| filter.since.is_none_or(|t| e.at >= t))
                .collect())
        })
    }

    /// The log's current head, to keep off the server (administrators and auditors).
    pub fn log_checkpoint(&self) -> Result<Checkpoint, Error> {
        self.logged("audit checkpoint", None, None, || {
            self.require(Duty::Audit)?;
            let (head, _) = self.log_head()?;
            Ok(Checkpoint {
                count: head.count,
                head: head.head,
            })
        })
    }

    /// Checks the whole log (and, with `checkpoint`, that it still contains that head).
    pub(crate) fn verify_log(
        &self,
        checkpoint: Option<&Checkpoint>,
        problems: &mut Vec<IntegrityError>,
    ) -> Result<u64, Error> {
        let entries = self.read_log(problems)?;
        if let Some(c) = checkpoint {
            let ok = c.count == 0
                || entries
                    .get(usize::try_from(c.count - 1).unwrap_or(usize::MAX))
                    .is_some_and(|(_, chain)| *chain == c.head);
            if !ok {
                problems.push(IntegrityError::new(
                    "access log",
                    format!(
                        "does not contain the checkpoint of {} entries: the vault was rolled back or the log rewritten",
                        c.count
                    ),
                ));
            }
        }
        Ok(entries.len() as u64 + 1)
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
}
