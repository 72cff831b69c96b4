//! Reads of patients and notes, and the cache of note chains already verified
//! (docs/architecture.md, "Reads"). Every read is logged (`logging.rs`) and fails closed.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use carnet_storage::Store;

use super::notes::{current_versions, note_order, to_note, Bodies, Decoded, RawEntry};
use super::patients::PatientState;
use super::Vault;
use crate::access::Duty;
use crate::access_log::Action;
use crate::error::{integrity, ProblemKind};
use crate::model::{Note, NoteId, Patient, PatientId};
use crate::records::{space, Blind};
use crate::Error;

/// Per patient, the latest version of each note as of a fully verified chain, keyed by the
/// manifest it was verified against. Lets single-note reads skip re-verifying the whole chain
/// while the manifest is unchanged. Only a cache of verified facts: any write to a patient
/// forgets that patient.
#[derive(Default)]
pub(super) struct ChainCache(Mutex<HashMap<Blind, VerifiedChain>>);

struct VerifiedChain {
    manifest: Vec<u8>,
    latest: HashMap<[u8; 16], u32>,
}

impl ChainCache {
    fn map(&self) -> MutexGuard<'_, HashMap<Blind, VerifiedChain>> {
        // The map is only a cache of verified facts; a poisoned one is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that `decoded` is the whole, verified chain of `blind` under `manifest`.
    fn remember(&self, blind: Blind, manifest: &[u8], decoded: &[Decoded]) {
        let mut latest = HashMap::new();
        for d in decoded {
            let v = latest.entry(d.note).or_insert(d.version);
            *v = (*v).max(d.version);
        }
        self.map().insert(
            blind,
            VerifiedChain {
                manifest: manifest.to_vec(),
                latest,
            },
        );
    }

    /// If `blind`'s chain was verified against exactly `manifest`: the latest version of
    /// `note` in it (`Some(None)`: no such note).
    fn latest(&self, blind: &Blind, manifest: &[u8], note: &NoteId) -> Option<Option<u32>> {
        let map = self.map();
        let c = map.get(blind).filter(|c| c.manifest == manifest)?;
        Some(c.latest.get(&note.0).copied())
    }

    /// Forgets `blind`'s chain (its manifest is about to change, or changed).
    pub(super) fn forget(&self, blind: &Blind) {
        self.map().remove(blind);
    }
}

impl<S: Store> Vault<S> {
    /// The patient's note versions, all authenticated, or the first integrity problem. A
    /// chain that verifies is remembered.
    pub(super) fn notes_of(
        &self,
        st: &PatientState,
        bodies: Bodies,
    ) -> Result<Vec<Decoded>, Error> {
        let mut scan = self.scan_notes(st, bodies)?;
        if !scan.problems.is_empty() {
            return Err(Error::Integrity(scan.problems.swap_remove(0)));
        }
        if let Some(m) = &st.manifest_stored {
            self.chains.remember(st.blind, m, &scan.decoded);
        }
        Ok(scan.decoded)
    }

    /// The versions of one note, ascending (only the last one's body when `latest_only`).
    ///
    /// If this patient's chain was fully verified against the manifest stored now, only the
    /// note's own records are read: their versions must be exactly 1..=latest as verified.
    /// Otherwise the whole chain is verified first (and remembered).
    fn note_versions(
        &self,
        st: &PatientState,
        note: &NoteId,
        latest_only: bool,
    ) -> Result<Vec<Decoded>, Error> {
        let cached = st
            .manifest_stored
            .as_ref()
            .and_then(|m| self.chains.latest(&st.blind, m, note));
        let mut versions = match cached {
            Some(None) => return Err(Error::NoSuchNote),
            Some(Some(latest)) => {
                let prefix = [&st.blind.0[..], &note.0[..]].concat();
                let raw: Vec<RawEntry> = self
                    .store
                    .scan_prefix(space::NOTES, &prefix)
                    .collect::<Result<_, _>>()?;
                if raw.len() as u64 != u64::from(latest) {
                    return Err(integrity(
                        format!("note {}/{}", st.blind.short(), note),
                        ProblemKind::Inconsistent,
                        "versions were removed or added since the chain was verified",
                    ));
                }
                let mut out = Vec::with_capacity(raw.len());
                for (i, (k, v)) in raw.iter().enumerate() {
                    let d = self.open_note(st, k, v, !latest_only || i + 1 == raw.len())?;
                    if d.version != i as u32 + 1 || d.meta.seq >= st.manifest.next_seq {
                        return Err(integrity(
                            format!("note {}/{}/v{}", st.blind.short(), note, d.version),
                            ProblemKind::Moved,
                            "out of place in the patient's note chain",
                        ));
                    }
                    out.push(d);
                }
                out
            }
            None => self
                .notes_of(st, Bodies::Of(note.0))?
                .into_iter()
                .filter(|d| d.note == note.0)
                .collect(),
        };
        if versions.is_empty() {
            return Err(Error::NoSuchNote);
        }
        versions.sort_by_key(|d| d.version);
        Ok(versions)
    }

    /// Every patient, in the order they were registered.
    pub fn patients(&self) -> Result<Vec<Patient>, Error> {
        self.logged(Action::PatientList, None, None, || {
            self.require(Duty::Clinical)?;
            let mut states = self.all_patients()?;
            states.sort_by_key(|s| s.info.seq);
            states.iter().map(PatientState::to_patient).collect()
        })
    }

    /// One patient.
    pub fn patient(&self, id: &PatientId) -> Result<Patient, Error> {
        self.logged(Action::PatientShow, Some(id), None, || {
            self.require(Duty::Clinical)?;
            self.find_patient(id)?.to_patient()
        })
    }

    /// The current version of each of the patient's notes, in the order the notes were added,
    /// without their bodies.
    pub fn notes(&self, id: &PatientId) -> Result<Vec<Note>, Error> {
        self.logged(Action::NoteList, Some(id), None, || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            Ok(current_versions(
                self.settled(&st, |st| self.notes_of(st, Bodies::None))?,
            ))
        })
    }

    /// The current version of each of the patient's notes, with their bodies, in the order the
    /// notes were added: opening a patient's chart in one read (and one access-log entry,
    /// [`Action::NoteRead`]), instead of a [`Vault::note`] per note.
    pub fn read_notes(&self, id: &PatientId) -> Result<Vec<Note>, Error> {
        self.logged(Action::NoteRead, Some(id), None, || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            Ok(current_versions(
                self.settled(&st, |st| self.notes_of(st, Bodies::Current))?,
            ))
        })
    }

    /// The current version of one note, with its body.
    pub fn note(&self, id: &PatientId, note: &NoteId) -> Result<Note, Error> {
        self.logged(Action::NoteShow, Some(id), Some(note), || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            self.settled(&st, |st| self.note_versions(st, note, true))?
                .pop()
                .map(to_note)
                .ok_or(Error::NoSuchNote)
        })
    }

    /// Every version of one note, oldest first, with bodies.
    pub fn note_history(&self, id: &PatientId, note: &NoteId) -> Result<Vec<Note>, Error> {
        self.logged(Action::NoteHistory, Some(id), Some(note), || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            Ok(self
                .settled(&st, |st| self.note_versions(st, note, false))?
                .into_iter()
                .map(to_note)
                .collect())
        })
    }

    /// A patient's whole record: the patient and every version of every note (in the order the
    /// notes were added, versions oldest first), for the patient's right of access or a move to
    /// another system. Logged as [`Action::Export`].
    pub fn export(&self, id: &PatientId) -> Result<(Patient, Vec<Vec<Note>>), Error> {
        self.logged(Action::Export, Some(id), None, || {
            self.require(Duty::Clinical)?;
            let st = self.find_patient(id)?;
            // The patient (with its note count) and the notes of one moment.
            let (patient, all) = self.settled(&st, |st| {
                Ok((st.to_patient()?, self.notes_of(st, Bodies::All)?))
            })?;
            let order = note_order(&all);
            let mut by_note: HashMap<[u8; 16], Vec<Decoded>> = HashMap::new();
            for d in all {
                by_note.entry(d.note).or_default().push(d);
            }
            let mut notes = Vec::with_capacity(order.len());
            for n in order {
                let mut versions = by_note.remove(&n.0).unwrap_or_default();
                versions.sort_by_key(|d| d.version);
                notes.push(versions.into_iter().map(to_note).collect());
            }
            Ok((patient, notes))
        })
    }
}
