//! Bulk import: notes written in atomic batches with one flush each, patients created as
//! needed, resumable after an interruption (docs/architecture.md, "Writes").

use std::collections::VecDeque;

use carnet_storage::Store;

use super::contention::{backoff, is_conflict, ATTEMPTS};
use super::write::{Logged, Prepared, Txn};
use super::Vault;
use crate::access_log::Action;
use crate::error::{integrity, ProblemKind};
use crate::model::{NewNote, NewPatient, NoteId, Timestamp};
use crate::records::{space, JobSlot, JobV1, JOB_IMPORT};
use crate::Error;

/// Notes per atomic batch during an import.
const IMPORT_BATCH_NOTES: usize = 1000;
/// Plaintext bytes per atomic batch during an import.
const IMPORT_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// `JobV1::target` of an import job: 0 while under way, this once complete.
const IMPORT_COMPLETE: u32 = 1;

/// Counts of what an import wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Whether the checks before writing passed (once per import: see
    /// `Vault::require_writable`).
    writable: bool,
    pending_notes: usize,
    pending_bytes: usize,
    committed: ImportSummary,
    staged: ImportSummary,
    job: Option<ImportJob>,
    /// Batches handed to be written and not yet durable, oldest first, and the notes of the
    /// batch being staged: what a batch that lost a compare-and-swap race to another writer
    /// is staged again from (with the same note ids), on the state that won.
    inflight: VecDeque<Vec<Staged>>,
    current: Vec<Staged>,
}

/// One note staged by an import and not yet durable.
struct Staged {
    patient: NewPatient,
    note: NewNote,
    id: NoteId,
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

impl<S: Store> Vault<S> {
    /// Starts a bulk import: notes are written in atomic batches (one flush per batch), and
    /// patients are created as needed. See [`Import`].
    pub fn import(&self) -> Import<'_, S> {
        Import {
            txn: Txn::new(self),
            writable: false,
            pending_notes: 0,
            pending_bytes: 0,
            committed: ImportSummary::default(),
            staged: ImportSummary::default(),
            job: None,
            inflight: VecDeque::new(),
            current: Vec::new(),
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
        self.require_writable()?;
        let mut import = self.import();
        let mut job = ImportJob {
            source,
            base: 0,
            stored: None,
            abandoned: None,
            complete: false,
        };
        if let Some((j, stored)) = self.load_job_named(JobSlot::Import, "import job")? {
            if j.kind != JOB_IMPORT {
                return Err(integrity(
                    "import job",
                    ProblemKind::Malformed,
                    "of an unknown kind",
                ));
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
}

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
        let (id, full) = self.stage(patient, note, None)?;
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
        let mut items = items.into_iter();
        let mut attempt = 0;
        loop {
            match self.add_all_once(&mut items, progress) {
                // A batch lost a race with another writer (nothing of it was written): its
                // notes, and those of the batch after it, are staged again; then the rest.
                Err(e) if is_conflict(&e) && attempt + 1 < ATTEMPTS => {
                    backoff(attempt);
                    attempt += 1;
                    self.restage()?;
                }
                r => return r,
            }
        }
    }

    /// [`Import::add_all`] until the first error.
    fn add_all_once(
        &mut self,
        items: &mut impl Iterator<Item = Result<(NewPatient, NewNote), Error>>,
        progress: &mut dyn FnMut(ImportSummary),
    ) -> Result<(), Error> {
        let vault = self.txn.vault;
        let (to_writer, batches) = std::sync::mpsc::sync_channel::<(Prepared, ImportSummary)>(1);
        let (to_producer, written) = std::sync::mpsc::channel::<ImportSummary>();
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<(), Error> {
                for (prepared, staged) in batches {
                    vault.apply(prepared)?;
                    // The producer may have stopped listening after an error of its own.
                    let _ = to_producer.send(staged);
                }
                Ok(())
            });
            let mut produce = || -> Result<(), Error> {
                for item in items.by_ref() {
                    let (patient, note) = item?;
                    let (_, full) = self.stage(patient, note, None)?;
                    if full {
                        if let Some(batch) = self.prepare_write(false)? {
                            if to_writer.send(batch).is_err() {
                                // The writer stopped on an error: it is reported below.
                                break;
                            }
                        }
                    }
                    while let Ok(c) = written.try_recv() {
                        self.written(c);
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
                self.written(c);
                progress(c);
            }
            wrote.and(produced)
        })
    }

    /// The oldest batch in flight is durable.
    fn written(&mut self, totals: ImportSummary) {
        self.committed = totals;
        self.inflight.pop_front();
    }

    /// After a batch lost a race: stages every note not yet durable again, in order and with
    /// the same ids, on a fresh read of the state (the patients, the registry, the job record).
    fn restage(&mut self) -> Result<(), Error> {
        let items: Vec<Staged> = self
            .inflight
            .drain(..)
            .flatten()
            .chain(self.current.drain(..))
            .collect();
        let vault = self.txn.vault;
        self.txn = Txn::new(vault);
        self.staged = self.committed;
        self.pending_notes = 0;
        self.pending_bytes = 0;
        if let Some(job) = &mut self.job {
            job.stored = vault.store.get(space::META, JobSlot::Import.meta_key())?;
        }
        for s in items {
            self.stage(s.patient, s.note, Some(s.id))?;
        }
        Ok(())
    }

    /// Stages one note (with `id`, when staged again); true when the batch is full.
    fn stage(
        &mut self,
        patient: NewPatient,
        note: NewNote,
        id: Option<NoteId>,
    ) -> Result<(NoteId, bool), Error> {
        if !self.writable {
            self.txn.vault.require_writable()?;
            self.writable = true;
        }
        let blind = self.txn.vault.keys.blind(&patient.id);
        if !self.txn.patients.contains_key(&blind) {
            match self.txn.existing_patient(&patient.id) {
                Ok(_) => {}
                Err(Error::NoSuchPatient) => {
                    let at = note.created_at.unwrap_or_else(Timestamp::now);
                    self.txn.create_patient(patient.clone(), at)?;
                    self.staged.patients_created += 1;
                }
                Err(e) => return Err(e),
            }
        }
        self.pending_bytes += note.body.as_bytes().len();
        let id = self.txn.add_note(blind, &note, id)?;
        self.current.push(Staged { patient, note, id });
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
        let mut attempt = 0;
        loop {
            let result = match self.prepare_write(last)? {
                Some((prepared, staged)) => self.txn.vault.apply(prepared).map(|()| {
                    self.written(staged);
                }),
                None => {
                    self.committed = self.staged;
                    Ok(())
                }
            };
            match result {
                // Lost a race with another writer: nothing of the batch was written.
                Err(e) if is_conflict(&e) && attempt + 1 < ATTEMPTS => {
                    backoff(attempt);
                    attempt += 1;
                    self.restage()?;
                }
                r => return r,
            }
        }
    }

    /// Seals the pending batch with the import's progress record, for [`Vault::apply`]; with
    /// the totals it makes durable.
    fn prepare_write(&mut self, last: bool) -> Result<Option<(Prepared, ImportSummary)>, Error> {
        if self.pending_notes > 0 || last {
            self.txn.log = Some(Logged {
                action: Action::Import,
                patient: None,
                note: None,
            });
        }
        if let Some(job) = &mut self.job {
            let slot = JobSlot::Import;
            self.txn
                .batch
                .require(space::META, slot.meta_key(), job.stored.clone());
            let record = JobV1 {
                kind: JOB_IMPORT,
                target: if last { IMPORT_COMPLETE } else { 0 },
                source: job.source,
                done: job.base + self.staged.notes_imported,
            };
            let sealed = self.txn.vault.seal_job(slot, &record)?;
            self.txn
                .batch
                .put(space::META, slot.meta_key(), sealed.clone());
            // As for the manifests: the next batch is guarded by what this one writes.
            job.stored = Some(sealed);
        }
        let prepared = self.txn.prepare()?;
        if prepared.is_some() {
            self.inflight.push_back(std::mem::take(&mut self.current));
        }
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
