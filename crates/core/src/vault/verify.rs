//! Checking the whole vault: every record decrypted and authenticated, every link between
//! records checked, every problem reported (docs/architecture.md, "Reads").

use std::collections::{HashMap, HashSet};

use carnet_storage::{Store, StoreError};

use super::logging::{Event, ReadEntry};
use super::notes::{check_chain, Bodies, RawEntry};
use super::patients::{manifest_location, patient_location, PatientState};
use super::Vault;
use crate::access_log::{Action, Checkpoint, LogEntry};
use crate::error::{IntegrityError, ProblemKind};
use crate::model::{NoteId, PatientId};
use crate::records::{
    registry_link, space, Blind, JobSlot, ManifestState, RegistryV1, META_REGISTRY,
};
use crate::Error;

/// A verification report.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// How many stored records were authenticated (or found missing or out of place).
    pub records_checked: u64,
    /// Every problem found; empty when the vault is intact.
    pub problems: Vec<IntegrityError>,
    /// Key operations left unfinished ([`Vault::unfinished`]): not damage, but until they are
    /// finished no new record may be written.
    pub unfinished: Vec<crate::unfinished::Unfinished>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Adds the problem of `result`, if it is an integrity problem; other errors stop verify.
    fn note<T>(&mut self, result: Result<T, Error>) -> Result<Option<T>, Error> {
        match result {
            Ok(t) => Ok(Some(t)),
            Err(Error::Integrity(e)) => {
                self.problems.push(e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl<S: Store> Vault<S> {
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
        checkpoint: Option<&Checkpoint>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, Error> {
        // Verify shows no patient data, so it logs itself after the fact; a log too damaged to
        // append to is already among the problems it reports.
        let mut report = self.verify_unlogged(checkpoint, progress)?;
        if let Some(unfinished) = report.note(self.unfinished())? {
            report.unfinished = unfinished;
        }
        let outcome = if report.is_ok() {
            "ok"
        } else {
            "integrity failure"
        };
        let event = Event::new(Action::Verify, None, outcome);
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
        checkpoint: Option<&Checkpoint>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport {
            // The keyring and the vault keys were authenticated by `unlock`.
            records_checked: 2,
            problems: Vec::new(),
            unfinished: Vec::new(),
        };
        // The log first, then what it describes: writes landing meanwhile only add to the
        // state, so what the log records is stored (or newer) when read after it.
        let read = self.verify_log(checkpoint, &mut report.problems)?;
        report.records_checked += read.len() as u64 + 1;
        let loaded = report.note(self.load_registry())?;
        let registry_stored = loaded.as_ref().map(|(_, b)| b.clone());
        let mut registry = loaded.map(|(r, _)| r);
        report.records_checked += 1;
        let total = registry.as_ref().map_or(0, |r| r.patients);
        report.note(self.load_users())?;
        report.records_checked += 1;
        // What the log says must be stored; the note scan below keeps what it needs of it.
        let logged = logged_state(&read, |id| self.keys.blind(id));
        let log: Vec<LogEntry> = read.into_iter().map(|r| r.entry).collect();
        let expected = self.expected_from_log(&log);
        // The fence of key operations, once the log says it was made, must be there.
        if log.iter().any(|e| e.action == Action::KeyFence)
            && self
                .store
                .get(space::META, JobSlot::Fence.meta_key())?
                .is_none()
        {
            report.problems.push(IntegrityError::new(
                "fence",
                ProblemKind::Missing,
                "missing, though the log says it was made",
            ));
        }
        // Job records (an unfinished rotation or import) must open too.
        for slot in JobSlot::ALL {
            match self.load_job(slot) {
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
                report.problems.push(IntegrityError::new(
                    "patients",
                    ProblemKind::Malformed,
                    "malformed storage key",
                ));
                continue;
            };
            seen_blinds.insert(blind);
            if let Some(st) = report.note(self.load_patient(&blind, &v))? {
                patients.insert(blind, st);
            }
        }
        if let Some(reg) = &registry {
            let mut found = check_registry(reg, &patients, seen_blinds.len());
            // Patients registered while the patients were read: check the registry again,
            // against a scan that no registration interrupted.
            if !found.is_empty() && self.store.get(space::META, META_REGISTRY)? != registry_stored {
                let (reg, problems) = self.settled_registry()?;
                registry = reg;
                found = problems;
            }
            report.problems.extend(found);
        }

        // Every wrapped key in the key store opens. Keys of no registered patient are left by
        // a registration interrupted before its records were written: unused, not a problem.
        for (at, wrapped) in self.keys.wrapped_patient_keys() {
            report.records_checked += 1;
            report.note(self.keys.open_patient_key(&at, &wrapped))?;
        }

        // Manifests: no orphans (each patient's own was opened above).
        for r in self.store.scan_prefix(space::MANIFESTS, &[]) {
            let (k, _) = r?;
            report.records_checked += 1;
            // A manifest's key is exactly a blind: anything longer belongs to no patient.
            let owner = Blind::from_slice(&k);
            if !owner.is_some_and(|b| seen_blinds.contains(&b)) && !self.registered_since(owner)? {
                let location = owner.map_or_else(|| "manifest ?".into(), |b| manifest_location(&b));
                report.problems.push(IntegrityError::new(
                    location,
                    ProblemKind::Orphan,
                    "belongs to no registered patient (orphan)",
                ));
            }
        }

        // Notes: one pass over the store, one patient's run of notes at a time (storage keys
        // start with the patient's blind), decrypted on every core; runs of no registered
        // patient are orphans. Patients with no stored note at all are checked after.
        let mut done = 0u64;
        let mut with_notes = HashSet::new();
        // The versions stored of each note, for the check against the log below.
        let mut versions: HashMap<(Blind, [u8; 16]), u32> = HashMap::new();
        let runs = NoteRuns::new(self.store.scan_prefix(space::NOTES, &[]));
        let checked = crate::par::map_parallel(runs, |(owner, raw)| {
            let stored = raw.len() as u64;
            match owner.and_then(|b| patients.get(&b)) {
                Some(st) => self.check_notes(st, &raw, Bodies::None).map(|scan| {
                    let notes: Vec<([u8; 16], u32)> = match expected.get(&st.blind) {
                        Some(exp) if !exp.notes.is_empty() => scan
                            .decoded
                            .iter()
                            .filter(|d| exp.notes.contains_key(&d.note))
                            .map(|d| (d.note, d.version))
                            .collect(),
                        _ => Vec::new(),
                    };
                    (owner, scan.stored, scan.problems, notes)
                }),
                // A patient registered after the patients were read: checked next time.
                None if self.registered_since(owner)? => Ok((None, 0, Vec::new(), Vec::new())),
                None => {
                    let short = owner.map_or_else(|| "?".into(), |b| b.short());
                    let orphan = IntegrityError::new(
                        format!("note under {short}"),
                        ProblemKind::Orphan,
                        "belongs to no registered patient (orphan)",
                    );
                    Ok((None, stored, vec![orphan; raw.len()], Vec::new()))
                }
            }
        })?;
        // Patients read again because a write landed during the pass: the state checked against
        // the log below is the one read again.
        let mut newer: Vec<PatientState> = Vec::new();
        for result in checked {
            let (owner, stored, mut problems, notes) = result?;
            // A write to this patient landed between reading its manifest and its notes: check
            // it again on one moment.
            if let Some(st) = owner.and_then(|b| patients.get(&b)) {
                let (found, fresh) = self.recheck(st, problems)?;
                problems = found;
                newer.extend(fresh);
            }
            report.records_checked += stored;
            report.problems.extend(problems);
            if let Some(b) = owner {
                for (note, version) in notes {
                    let v = versions.entry((b, note)).or_insert(version);
                    *v = (*v).max(version);
                }
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
            let st = &patients[blind];
            let (problems, fresh) = self.recheck(st, check_chain(st, &[], 0))?;
            newer.extend(fresh);
            report.problems.extend(problems);
            done += 1;
            progress(done, total);
        }
        // What the log names and the store lacks, note by note (format 1's check), then what
        // format 2's entries record of each manifest and the registry, for the patients the
        // first found nothing wrong with.
        for st in newer {
            patients.insert(st.blind, st);
        }
        let mut reported = HashSet::new();
        for (blind, p) in missing_from_state(&expected, &seen_blinds, &versions) {
            reported.insert(blind);
            report.problems.push(p);
        }
        report
            .problems
            .extend(logged.check(registry.as_ref(), &patients, &seen_blinds, &reported));
        Ok(report)
    }

    /// Whether the patient `owner` names is registered now (after verify read the patients):
    /// its records are then those of a registration that landed during verify, not orphans.
    fn registered_since(&self, owner: Option<Blind>) -> Result<bool, Error> {
        Ok(match owner {
            Some(b) => self.store.get(space::PATIENTS, &b.0)?.is_some(),
            None => false,
        })
    }

    /// `problems`, found in `st`'s notes, unless a write to the patient landed since its
    /// manifest was read (the manifest read again opens and lists more note versions): then the
    /// problems of the patient read again, with that newer state, until a read that no write
    /// interrupted (at most `ATTEMPTS` times). Anything else the store shows is reported.
    fn recheck(
        &self,
        st: &PatientState,
        mut problems: Vec<IntegrityError>,
    ) -> Result<(Vec<IntegrityError>, Option<PatientState>), Error> {
        let mut fresh: Option<PatientState> = None;
        let mut attempt = 0;
        loop {
            let current = fresh.as_ref().unwrap_or(st);
            if problems.is_empty()
                || self.store.get(space::MANIFESTS, &current.blind.0)? == current.manifest_stored
            {
                return Ok((problems, fresh));
            }
            let again = match self.reload_patient(&current.blind) {
                Ok(again) => again,
                Err(Error::Integrity(e)) => {
                    problems.push(e);
                    return Ok((problems, fresh));
                }
                Err(e) => return Err(e),
            };
            if again.manifest.next_seq <= current.manifest.next_seq
                || again.info.id != current.info.id
            {
                return Ok((problems, fresh));
            }
            if attempt + 1 >= super::contention::ATTEMPTS {
                return Err(Error::Storage(StoreError::Conflict));
            }
            super::contention::backoff(attempt);
            attempt += 1;
            problems = self.scan_notes(&again, Bodies::None)?.problems;
            fresh = Some(again);
        }
    }

    /// The registry and the problems of its check against the patients stored, read until no
    /// registration landed in between (at most `ATTEMPTS` times).
    fn settled_registry(&self) -> Result<(Option<RegistryV1>, Vec<IntegrityError>), Error> {
        let mut attempt = 0;
        loop {
            let (reg, before) = match self.load_registry() {
                Ok(r) => r,
                Err(Error::Integrity(e)) => return Ok((None, vec![e])),
                Err(e) => return Err(e),
            };
            let mut patients = HashMap::new();
            let mut seen = 0usize;
            let mut problems = Vec::new();
            for r in self.patient_records() {
                seen += 1;
                match r.and_then(|(blind, v)| self.load_patient(&blind, &v)) {
                    Ok(st) => {
                        patients.insert(st.blind, st);
                    }
                    Err(Error::Integrity(e)) => problems.push(e),
                    Err(e) => return Err(e),
                }
            }
            problems.extend(check_registry(&reg, &patients, seen));
            let after = self.store.get(space::META, META_REGISTRY)?;
            if problems.is_empty() || after.as_deref() == Some(&before[..]) {
                return Ok((Some(reg), problems));
            }
            // Scanned again only for a registration that landed: a registry that opens and
            // lists more patients. Anything else the store shows is reported.
            match self.load_registry() {
                Ok((newer, _)) if newer.patients > reg.patients => {}
                Ok(_) => return Ok((Some(reg), problems)),
                Err(Error::Integrity(e)) => {
                    problems.push(e);
                    return Ok((Some(reg), problems));
                }
                Err(e) => return Err(e),
            }
            if attempt + 1 >= super::contention::ATTEMPTS {
                return Err(Error::Storage(StoreError::Conflict));
            }
            super::contention::backoff(attempt);
            attempt += 1;
        }
    }

    /// What the access log says was written and must still be stored: every patient registered
    /// (`patient add`) and every note added or amended (`note add`, `note amend`), with as many
    /// versions as were written, unless the patient was erased since. So the log, whose head a
    /// checkpoint or this machine's memory pins, also covers the records it describes: an older
    /// copy of a patient's records put back behind a whole log is found. (Notes of an import are
    /// not named in a format-1 log entry: format 2 covers them.)
    fn expected_from_log(&self, log: &[LogEntry]) -> HashMap<Blind, Expected> {
        let mut expected: HashMap<Blind, Expected> = HashMap::new();
        // An erasure may have destroyed the patient's records whatever its outcome says (it
        // logs "started" before destroying anything); every other write counts only if ok.
        let counts = |e: &&LogEntry| e.outcome == "ok" || e.action == Action::PatientErase;
        for e in log.iter().filter(counts) {
            let Some(id) = e.patient_id.as_ref() else {
                continue;
            };
            let Ok(id) = PatientId::from_stored(id.clone()) else {
                continue;
            };
            let blind = self.keys.blind(&id);
            let note = e.note_id.as_deref().and_then(|n| n.parse::<NoteId>().ok());
            match (&e.action, note) {
                (Action::PatientAdd, _) => {
                    expected.insert(
                        blind,
                        Expected {
                            registered: Some(e.seq),
                            notes: HashMap::new(),
                        },
                    );
                }
                (Action::PatientErase, _) => {
                    expected.remove(&blind);
                }
                (Action::NoteAdd, Some(n)) => {
                    expected
                        .entry(blind)
                        .or_default()
                        .notes
                        .insert(n.0, (1, e.seq));
                }
                (Action::NoteAmend, Some(n)) => {
                    let v = expected
                        .entry(blind)
                        .or_default()
                        .notes
                        .entry(n.0)
                        .or_insert((1, e.seq));
                    *v = (v.0 + 1, e.seq);
                }
                _ => {}
            }
        }
        expected
    }
}

/// The state the access log's format-2 entries give: each patient's manifest and the
/// registry as the last write that changed them left them, with that entry's position.
#[derive(Default)]
struct LoggedState {
    manifests: HashMap<Blind, (ManifestState, u64)>,
    registry: Option<(RegistryV1, u64)>,
}

/// What the log's entries, in order, say the state must be. An erasure takes its patient out
/// (it logs "started" before destroying anything), and the registry until its "ok" entry
/// gives the registry it left.
fn logged_state(log: &[ReadEntry], blind: impl Fn(&PatientId) -> Blind) -> LoggedState {
    let mut st = LoggedState::default();
    for r in log {
        let e = &r.entry;
        if e.action == Action::PatientErase {
            if e.outcome == "started" {
                st.registry = None;
            }
            let erased = e.patient_id.clone().map(PatientId::from_stored);
            if let Some(Ok(id)) = erased {
                st.manifests.remove(&blind(&id));
            }
        }
        for s in &r.states {
            st.manifests.insert(Blind(s.blind), (*s, e.seq));
        }
        if let Some(reg) = &r.registry {
            st.registry = Some((reg.clone(), e.seq));
        }
    }
    st
}

impl LoggedState {
    /// Every stored manifest, and the registry, must be at least the last state the log gives
    /// them: a state behind it, or another at the same position, was put back from an older
    /// copy. (A state ahead of the log is a write committed after `verify` read the log.)
    fn check(
        &self,
        registry: Option<&RegistryV1>,
        patients: &HashMap<Blind, PatientState>,
        stored: &HashSet<Blind>,
        reported: &HashSet<Blind>,
    ) -> Vec<IntegrityError> {
        let mut problems = Vec::new();
        let mut blinds: Vec<&Blind> = self
            .manifests
            .keys()
            .filter(|b| !reported.contains(*b))
            .collect();
        blinds.sort();
        for blind in blinds {
            let (want, seq) = &self.manifests[blind];
            let Some(st) = patients.get(blind) else {
                if !stored.contains(blind) {
                    problems.push(IntegrityError::new(
                        patient_location(blind),
                        ProblemKind::RolledBack,
                        format!(
                            "the access log records its state (entry {seq}) but it is not stored: the patient's records were rolled back or removed"
                        ),
                    ));
                }
                continue;
            };
            let have = &st.manifest;
            if have.next_seq < want.next_seq
                || (have.next_seq == want.next_seq && have.head != want.head)
            {
                problems.push(IntegrityError::new(
                    manifest_location(blind),
                    ProblemKind::RolledBack,
                    format!(
                        "holds {} note versions where the access log records {} (entry {seq}): the patient's records were put back to an older state",
                        have.next_seq, want.next_seq
                    ),
                ));
            }
        }
        if let (Some(have), Some((want, seq))) = (registry, &self.registry) {
            if have.patients < want.patients
                || (have.patients == want.patients && have.head != want.head)
            {
                problems.push(IntegrityError::new(
                    "registry",
                    ProblemKind::RolledBack,
                    format!(
                        "lists {} patients where the access log records {} (entry {seq}): the registry was put back to an older state",
                        have.patients, want.patients
                    ),
                ));
            }
        }
        problems
    }
}

/// Per patient, what the log says must be stored: the entry that registered it (if logged),
/// and per note the versions written and the entry that wrote the last of them.
#[derive(Default)]
struct Expected {
    registered: Option<u64>,
    notes: HashMap<[u8; 16], (u32, u64)>,
}

/// What `expected` names and the store lacks: each a rollback.
fn missing_from_state(
    expected: &HashMap<Blind, Expected>,
    stored: &HashSet<Blind>,
    versions: &HashMap<(Blind, [u8; 16]), u32>,
) -> Vec<(Blind, IntegrityError)> {
    let mut problems = Vec::new();
    let mut blinds: Vec<&Blind> = expected.keys().collect();
    blinds.sort();
    for blind in blinds {
        let exp = &expected[blind];
        if !stored.contains(blind) {
            let seq = exp
                .registered
                .or_else(|| exp.notes.values().map(|(_, s)| *s).max())
                .unwrap_or(0);
            problems.push((
                *blind,
                IntegrityError::new(
                    patient_location(blind),
                    ProblemKind::RolledBack,
                    format!(
                        "the access log records it (entry {seq}) but it is not stored: the patient's records were rolled back or removed"
                    ),
                ),
            ));
            continue;
        }
        let mut notes: Vec<(&[u8; 16], &(u32, u64))> = exp.notes.iter().collect();
        notes.sort();
        for (note, (want, seq)) in notes {
            let have = versions.get(&(*blind, *note)).copied().unwrap_or(0);
            if have < *want {
                problems.push((
                    *blind,
                    IntegrityError::new(
                        format!("note {}/{}", blind.short(), NoteId(*note)),
                        ProblemKind::RolledBack,
                        format!(
                            "the access log records version {want} (entry {seq}) but {have} are stored: the note was rolled back or removed"
                        ),
                    ),
                ));
            }
        }
    }
    problems
}

/// Groups a scan of the notes space into runs of one patient each: (the blind the storage
/// keys start with, or `None` for malformed keys; the run's entries).
struct NoteRuns<I: Iterator> {
    entries: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = Result<RawEntry, StoreError>>> NoteRuns<I> {
    fn new(entries: I) -> Self {
        NoteRuns {
            entries: entries.peekable(),
        }
    }
}

impl<I: Iterator<Item = Result<RawEntry, StoreError>>> Iterator for NoteRuns<I> {
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
            ProblemKind::Inconsistent,
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
                    patient_location(blind),
                    ProblemKind::Moved,
                    "out of place in the registry chain",
                ));
                return problems;
            }
            head = registry_link(&head, blind);
        }
        if head != reg.head && reg.patients == found as u64 {
            problems.push(IntegrityError::new(
                "registry",
                ProblemKind::Inconsistent,
                "chain head does not match the patients stored",
            ));
        }
    }
    problems
}
