//! The vault's access-log path: the library logs every operation itself, so an embedding
//! vendor gets the same audit trail as the command line. Writes stage their entry in their own
//! atomic batch (`write.rs`); reads go through [`Vault::logged`], which commits the entry before
//! returning the result; key and user operations log their outcome. The log's records and
//! chain are specified in docs/format.md, "Access log".

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use carnet_storage::{Batch, Store, StoreError};

use super::contention::{backoff, ATTEMPTS};
use super::Vault;
use crate::access::Duty;
use crate::access_log::{outcome, reason, Action, AuditFilter, Checkpoint, LogEntry, ReadLog};
use crate::envelope::{
    decode_meta, malformed_payload, open_frame, open_record, parse_error, seal_as, seal_frame,
    Sealed, FORMAT_1, FORMAT_2,
};
use crate::error::{integrity, IntegrityError, ProblemKind};
use crate::frame;
use crate::model::{NoteId, PatientId, Timestamp};
use crate::records::{
    log_link, space, LogAt, LogEntryV1, LogEntryV2, LogHeadV1, LogListsV2, ManifestState,
    RegistryV1, META_LOG_HEAD, RECOVERY_SUFFIX,
};
use crate::sealing::{LogEntryRecord, LogHeadRecord};
use crate::Error;

/// When reads' entries reach the disk, and since when some wait for a flush.
#[derive(Default)]
pub(super) struct LogState {
    policy: ReadLog,
    /// When the oldest entry not yet flushed was committed (`None`: every entry is durable).
    unsynced: Mutex<Option<Instant>>,
}

impl LogState {
    fn unsynced(&self) -> MutexGuard<'_, Option<Instant>> {
        // Poisoning is harmless: the value is only a time.
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A flush of the store made every committed entry durable.
    pub(super) fn flushed(&self) {
        *self.unsynced() = None;
    }
}

/// Whether `e` is by `user`: its name, with a passphrase or the recovery key; or the name as
/// format 1 stores a recovery-key unlock (`NAME (recovery key)`), for that unlock only.
fn by_user(e: &LogEntry, user: &str) -> bool {
    e.user == user
        || (e.via_recovery_key && user.strip_suffix(RECOVERY_SUFFIX) == Some(e.user.as_str()))
}

/// An event to log.
pub(super) struct Event<'a> {
    pub(super) action: Action,
    /// The patient the operation was about (the one a format-1 entry names).
    pub(super) patient: Option<&'a str>,
    pub(super) note: Option<String>,
    pub(super) outcome: String,
    /// Format 2: the other patients whose data it showed or changed.
    pub(super) also: Vec<String>,
    /// Format 2: the user it concerned.
    pub(super) subject: Option<String>,
    /// Format 2: the manifests and registry a write left.
    pub(super) states: Vec<ManifestState>,
    pub(super) registry: Option<RegistryV1>,
}

impl<'a> Event<'a> {
    /// An event of `action` about `patient`, with `outcome`, and nothing else.
    pub(super) fn new(
        action: Action,
        patient: Option<&'a str>,
        outcome: impl Into<String>,
    ) -> Self {
        Event {
            action,
            patient,
            note: None,
            outcome: outcome.into(),
            also: Vec::new(),
            subject: None,
            states: Vec::new(),
            registry: None,
        }
    }
}

/// One access-log entry as `read_log` found it: the entry, the chain value after it, and what a
/// format-2 entry records of the state a write left.
pub(super) struct ReadEntry {
    pub(super) entry: LogEntry,
    pub(super) chain: [u8; 32],
    pub(super) states: Vec<ManifestState>,
    pub(super) registry: Option<RegistryV1>,
}

impl<S: Store> Vault<S> {
    fn log_head(&self) -> Result<(LogHeadV1, Option<Vec<u8>>), Error> {
        let Some(stored) = self.store.get(space::META, META_LOG_HEAD)? else {
            return Err(integrity(
                "access log",
                ProblemKind::Missing,
                "head missing",
            ));
        };
        let sealed = Sealed::parse(&stored).map_err(|e| parse_error("access log head", e))?;
        let key = self.keys.log_key(sealed.key_version)?;
        let (head, _) = open_frame::<LogHeadRecord, LogHeadV1>(
            "access log head",
            &stored,
            key,
            self.vault_id(),
            &(),
        )?;
        Ok((head, Some(stored)))
    }

    /// Stages the entry for `event` and the new head in `batch`. The caller holds the write lock
    /// and commits `batch` atomically with whatever the entry records.
    pub(super) fn stage_log(&self, batch: &mut Batch, event: &Event<'_>) -> Result<(), Error> {
        let (head, stored_head) = self.log_head()?;
        let key = self.keys.newest_log_key()?;
        let at = LogAt {
            seq: head.count,
            prev: head.head,
        };
        let sealed = if self.keys.format() >= 2 {
            let entry = LogEntryV2 {
                at: Timestamp::now().unix_millis(),
                user: self.session.user().to_string(),
                via_recovery_key: self.session.via_recovery(),
                action: event.action.stored_name().to_string(),
                note: event.note.clone(),
                subject: event.subject.clone(),
                outcome: event.outcome.clone(),
                registry: event.registry.clone(),
            };
            let lists = LogListsV2 {
                patients: event
                    .patient
                    .map(str::to_string)
                    .into_iter()
                    .chain(event.also.iter().cloned())
                    .collect(),
                states: event.states.clone(),
            };
            let frame = frame::encode(&entry, &frame::encode_body(&lists)?)?;
            seal_as::<LogEntryRecord>(2, key, self.vault_id(), &at, &frame)?
        } else {
            let user = if self.session.via_recovery() {
                format!("{}{RECOVERY_SUFFIX}", self.session.user())
            } else {
                self.session.user().to_string()
            };
            let entry = LogEntryV1 {
                at: Timestamp::now().unix_millis(),
                user,
                action: event.action.stored_name().to_string(),
                patient: event.patient.map(str::to_string),
                note: event.note.clone(),
                outcome: event.outcome.clone(),
            };
            seal_frame::<LogEntryRecord, _>(key, self.vault_id(), &at, &entry)?
        };
        let next = LogHeadV1 {
            count: at.seq + 1,
            head: log_link(&head.head, &sealed),
        };
        let sealed_head = seal_frame::<LogHeadRecord, _>(key, self.vault_id(), &(), &next)?;
        let seq_key = at.seq.to_be_bytes().to_vec();
        batch.require(space::LOG, seq_key.clone(), None);
        batch.put(space::LOG, seq_key, sealed);
        batch.require(space::META, META_LOG_HEAD, stored_head);
        batch.put(space::META, META_LOG_HEAD, sealed_head);
        Ok(())
    }

    /// Appends one entry durably, in its own atomic batch.
    pub(super) fn log_event(&self, event: &Event<'_>) -> Result<(), Error> {
        self.append_log(event, ReadLog::Synced)
    }

    /// Appends one entry in its own atomic batch, flushed as `policy` says.
    fn append_log(&self, event: &Event<'_>, policy: ReadLog) -> Result<(), Error> {
        // Not under a log key another process's key operation is retiring.
        self.require_fence_free_to_log()?;
        let mut attempt = 0;
        loop {
            let committed = {
                // The store's turn before this `Vault`'s write lock, as every writer takes
                // them. Another process sharing the store may have moved the head since it
                // was read: the entry is staged again on the new one.
                let _store_turn = self.store_turn()?;
                let _writing = self.writing();
                let mut b = Batch::new();
                self.stage_log(&mut b, event)?;
                // Under the log key this `Vault` read: a key operation since refuses the entry.
                self.require_fence(&mut b);
                self.store.commit(b)
            };
            match committed {
                Err(StoreError::Conflict) => {
                    // Waited for (if it must be) with the turn given back: the key operation
                    // needs it.
                    if let Some(e) = self.fence_moved_waiting()? {
                        return Err(e);
                    }
                    if attempt + 1 >= ATTEMPTS {
                        return Err(StoreError::Conflict.into());
                    }
                    backoff(attempt);
                    attempt += 1;
                }
                r => break r?,
            }
        }
        if policy == ReadLog::Synced {
            // Outside this `Vault`'s write lock: concurrent reads' flushes are the store's to
            // share (a server's store makes one fsync cover every entry committed before it).
            self.store.flush()?;
            return Ok(());
        }
        let _writing = self.writing();
        let mut unsynced = self.log.unsynced();
        let since = *unsynced.get_or_insert_with(Instant::now);
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
        self.log.policy = policy;
    }

    /// Flushes access-log entries that [`ReadLog::Grouped`] left in the store's buffers.
    pub fn sync_log(&self) -> Result<(), Error> {
        let _writing = self.writing();
        let mut unsynced = self.log.unsynced();
        if unsynced.is_some() {
            self.store.flush()?;
            *unsynced = None;
        }
        Ok(())
    }

    /// Runs a read, logs it with its outcome, and returns its result only once the entry is
    /// committed, and flushed unless [`ReadLog::Grouped`] defers it (fail closed: if the log
    /// cannot be written, nothing is returned).
    pub(super) fn logged<T>(
        &self,
        action: Action,
        patient: Option<&PatientId>,
        note: Option<&NoteId>,
        op: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let result = op();
        self.log_outcome(action, patient, note, result, self.log.policy)
    }

    /// [`Vault::logged`] for a read that shows several patients' data: `shown` names them
    /// from its result, and a format-2 entry records them all.
    pub(super) fn logged_showing<T>(
        &self,
        action: Action,
        patient: Option<&PatientId>,
        op: impl FnOnce() -> Result<T, Error>,
        shown: impl FnOnce(&T) -> Vec<String>,
    ) -> Result<T, Error> {
        let result = op();
        let mut event = Event::new(action, patient.map(PatientId::as_str), outcome(&result));
        if let Ok(t) = &result {
            event.also = shown(t)
                .into_iter()
                .filter(|p| Some(p.as_str()) != event.patient)
                .collect();
            event.also.sort();
            event.also.dedup();
        }
        self.append_log(&event, self.log.policy)?;
        result
    }

    /// [`Vault::logged_result`] for an operation that concerned another user (`subject`).
    pub(super) fn logged_about<T>(
        &self,
        action: Action,
        subject: &str,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        let mut event = Event::new(action, None, outcome(&result));
        event.subject = Some(subject.to_string());
        self.append_log(&event, ReadLog::Synced)?;
        result
    }

    /// Logs the outcome of an operation that already ran (key and user operations, which show
    /// no patient data). A failure to log is reported, so the administrator knows.
    pub(super) fn logged_result<T>(
        &self,
        action: Action,
        patient: Option<&PatientId>,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        self.log_outcome(action, patient, None, result, ReadLog::Synced)
    }

    /// Appends the entry for `result`, flushed as `policy` says, then returns `result` (or the
    /// logging error).
    fn log_outcome<T>(
        &self,
        action: Action,
        patient: Option<&PatientId>,
        note: Option<&NoteId>,
        result: Result<T, Error>,
        policy: ReadLog,
    ) -> Result<T, Error> {
        let mut event = Event::new(action, patient.map(PatientId::as_str), outcome(&result));
        event.note = note.map(NoteId::to_string);
        self.append_log(&event, policy)?;
        result
    }

    /// Logs a failed write (its success is logged atomically with the write itself). A failure
    /// to log is ignored here: the operation already failed, and its error is what matters.
    pub(super) fn log_failure<T>(
        &self,
        action: Action,
        patient: Option<&PatientId>,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if let Err(e) = &result {
            let _ = self.log_event(&Event::new(
                action,
                patient.map(PatientId::as_str),
                reason(e),
            ));
        }
        result
    }

    /// Every entry, checked: each opens with its position and the chain value before it, the
    /// count and chain match the head. Returns the entries and the chain value after each.
    fn read_log(&self, problems: &mut Vec<IntegrityError>) -> Result<Vec<ReadEntry>, Error> {
        let (head, _) = match self.log_head() {
            Ok(h) => h,
            Err(Error::Integrity(e)) => {
                problems.push(e);
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        // Format 1 stores a recovery-key unlock as a suffix of the user name. Vaults made before
        // such names were refused may hold a user whose name ends with it: a name that is a
        // listed user is taken as it is.
        let listed: HashSet<String> = self
            .load_users()
            .map(|(u, _)| u.users.into_iter().map(|u| u.name).collect())
            .unwrap_or_default();
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
                    ProblemKind::Missing,
                    "missing or out of order (the log was edited)",
                ));
                return Ok(out);
            }
            let at = LogAt {
                seq: expected,
                prev: chain,
            };
            let opened = Sealed::parse(&v)
                .map_err(|e| parse_error(&location, e))
                .and_then(|sealed| self.keys.log_key(sealed.key_version))
                .and_then(|key| {
                    open_record::<LogEntryRecord>(&location, &v, key, self.vault_id(), &at)
                })
                .and_then(|(format, plain)| {
                    self.decode_entry(&location, expected, format, &plain, &listed)
                });
            let (entry, states, registry) = match opened {
                Ok(e) => e,
                Err(Error::Integrity(e)) => {
                    problems.push(e);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            chain = log_link(&chain, &v);
            out.push(ReadEntry {
                entry,
                chain,
                states,
                registry,
            });
            expected += 1;
        }
        // Entries past the head read first were appended since (by this process or another)
        // if the head read again covers them.
        let chain_at = |n: u64| match n {
            0 => Some([0u8; 32]),
            n => out.get(usize::try_from(n - 1).ok()?).map(|r| r.chain),
        };
        let removed = || {
            IntegrityError::new(
                "access log",
                ProblemKind::Inconsistent,
                format!("the head lists {} entries but {expected} are stored, or the chain differs (entries removed or replaced)", head.count),
            )
        };
        let problem = if expected <= head.count {
            (expected < head.count || chain != head.head).then(removed)
        } else {
            let newer = match self.log_head() {
                Ok((newer, _)) => Ok(newer),
                Err(Error::Integrity(e)) => Err(e),
                // A storage failure is not a finding: it stops the read.
                Err(e) => return Err(e),
            };
            match newer {
                Ok(newer) if newer.count == expected => (chain != newer.head).then(removed),
                // Still more appended after the scan: the part the first head covers is checked.
                Ok(newer) if newer.count > expected => {
                    (chain_at(head.count) != Some(head.head)).then(removed)
                }
                _ => Some(IntegrityError::new(
                    "access log",
                    ProblemKind::Inconsistent,
                    format!("holds {expected} entries but its head lists {} (entries added past the head, or the head put back)", head.count),
                )),
            }
        };
        if let Some(p) = problem {
            problems.push(p);
            out.truncate(usize::try_from(head.count).unwrap_or(usize::MAX));
        }
        Ok(out)
    }

    /// Decodes one entry's payload, of either format.
    fn decode_entry(
        &self,
        location: &str,
        seq: u64,
        format: u8,
        plain: &[u8],
        listed: &HashSet<String>,
    ) -> Result<(LogEntry, Vec<ManifestState>, Option<RegistryV1>), Error> {
        if format == FORMAT_1 {
            let e: LogEntryV1 = decode_meta(location, plain)?;
            let (user, via_recovery_key) = match e.user.strip_suffix(RECOVERY_SUFFIX) {
                Some(name) if !listed.contains(&e.user) => (name.to_string(), true),
                _ => (e.user, false),
            };
            let entry = LogEntry {
                seq,
                at: Timestamp::from_unix_millis(e.at),
                user,
                via_recovery_key,
                action: Action::from_stored(e.action),
                patients: e.patient.iter().cloned().collect(),
                patient_id: e.patient,
                note_id: e.note,
                subject: None,
                outcome: e.outcome,
            };
            return Ok((entry, Vec::new(), None));
        }
        if format != FORMAT_2 {
            return Err(malformed_payload(location));
        }
        let (e, body) =
            frame::decode::<LogEntryV2>(plain).ok_or_else(|| malformed_payload(location))?;
        let lists: LogListsV2 =
            frame::decode_body(body).ok_or_else(|| malformed_payload(location))?;
        let entry = LogEntry {
            seq,
            at: Timestamp::from_unix_millis(e.at),
            user: e.user,
            via_recovery_key: e.via_recovery_key,
            action: Action::from_stored(e.action),
            patient_id: lists.patients.first().cloned(),
            patients: lists.patients,
            note_id: e.note,
            subject: e.subject,
            outcome: e.outcome,
        };
        Ok((entry, lists.states, e.registry))
    }

    /// The access log, oldest first, filtered (administrators and auditors). Itself logged.
    /// A log that fails its checks is an [`Error::Integrity`].
    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<LogEntry>, Error> {
        self.logged(Action::Audit, filter.patient.as_ref(), None, || {
            self.require(Duty::Audit)?;
            let mut problems = Vec::new();
            let entries = self.read_log(&mut problems)?;
            if let Some(p) = problems.into_iter().next() {
                return Err(Error::Integrity(p));
            }
            Ok(entries
                .into_iter()
                .map(|r| r.entry)
                .filter(|e| {
                    filter
                        .patient
                        .as_ref()
                        .is_none_or(|p| e.patients.iter().any(|q| q == p.as_str()))
                })
                .filter(|e| filter.user.as_ref().is_none_or(|u| by_user(e, u)))
                .filter(|e| filter.since.is_none_or(|t| e.at >= t))
                .collect())
        })
    }

    /// The access log's head, made durable first (entries that [`ReadLog::Grouped`] left
    /// unflushed are flushed): what a machine remembers of the vault after working on it, to
    /// check at its next unlock with [`Vault::check_extends`]. It reveals a count and a hash
    /// only: any role may ask, and it is not logged.
    pub fn durable_head(&self) -> Result<Checkpoint, Error> {
        self.sync_log()?;
        let (head, _) = self.log_head()?;
        Ok(Checkpoint::new(head.count, head.head))
    }

    /// Checks that the access log extends `seen`, a head this machine saw earlier
    /// ([`Vault::durable_head`]): it holds at least as many entries, and the entry after them
    /// is chained to `seen` (or the heads are equal). O(1). Fails with an
    /// [`Error::Integrity`] of kind [`crate::ProblemKind::RolledBack`] when the vault was put
    /// back to an older state, truncated or replaced behind this machine's back.
    pub fn check_extends(&self, seen: &Checkpoint) -> Result<(), Error> {
        let (head, _) = self.log_head()?;
        let found = Checkpoint::new(head.count, head.head);
        let short = |c: &Checkpoint| {
            format!(
                "{} entries, head {}",
                c.count,
                c.head[..4]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        };
        let rolled_back = || {
            integrity(
                "access log",
                ProblemKind::RolledBack,
                format!(
                    "does not extend what this machine saw ({}; found {}): the vault was rolled back, truncated or replaced by another copy",
                    short(seen),
                    short(&found)
                ),
            )
        };
        if found.count < seen.count || (found.count == seen.count && found.head != seen.head) {
            return Err(rolled_back());
        }
        if found.count == seen.count || seen.count == 0 {
            return Ok(());
        }
        // The entry after the seen ones must be bound to the seen head: its associated data
        // holds its position and the chain value before it.
        let Some(stored) = self.store.get(space::LOG, &seen.count.to_be_bytes())? else {
            return Err(rolled_back());
        };
        let at = LogAt {
            seq: seen.count,
            prev: seen.head,
        };
        let chained = Sealed::parse(&stored).ok().is_some_and(|sealed| {
            self.keys.log_key(sealed.key_version).is_ok_and(|key| {
                sealed
                    .open::<LogEntryRecord>(key, self.vault_id(), &at)
                    .is_some()
            })
        });
        if chained {
            Ok(())
        } else {
            Err(rolled_back())
        }
    }

    /// The vault's id: not secret (the keyring holds it in clear). With the vault's location
    /// it names what a machine remembers of the vault.
    pub fn id(&self) -> [u8; 16] {
        *self.vault_id()
    }

    /// The log's current head, to keep off the server (administrators and auditors).
    pub fn log_checkpoint(&self) -> Result<Checkpoint, Error> {
        self.logged(Action::AuditCheckpoint, None, None, || {
            self.require(Duty::Audit)?;
            let (head, _) = self.log_head()?;
            Ok(Checkpoint::new(head.count, head.head))
        })
    }

    /// Checks the whole log (and, with `checkpoint`, that it still contains that head).
    /// Returns its entries, as far as they could be read.
    pub(super) fn verify_log(
        &self,
        checkpoint: Option<&Checkpoint>,
        problems: &mut Vec<IntegrityError>,
    ) -> Result<Vec<ReadEntry>, Error> {
        let entries = self.read_log(problems)?;
        if let Some(c) = checkpoint {
            let ok = c.count == 0
                || entries
                    .get(usize::try_from(c.count - 1).unwrap_or(usize::MAX))
                    .is_some_and(|r| r.chain == c.head);
            if !ok {
                problems.push(IntegrityError::new(
                    "access log",
                    ProblemKind::RolledBack,
                    format!(
                        "does not contain the checkpoint of {} entries: the vault was rolled back or the log rewritten",
                        c.count
                    ),
                ));
            }
        }
        Ok(entries)
    }
}
