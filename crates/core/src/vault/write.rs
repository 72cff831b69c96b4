//! The write transaction, and the writes built on it: adding patients and notes, amending
//! notes (docs/architecture.md, "Writes").

use std::collections::HashMap;

use carnet_storage::{Batch, Store};

use super::logging::Event;
use super::notes::Bodies;
use super::patients::seal_patient;
use super::patients::PatientState;
use super::Vault;
use crate::access::Duty;
use crate::access_log::Action;
use crate::envelope::{self, seal_frame};
use crate::frame;
use crate::keys::WrappedKey;
use crate::model::{
    check_field, NewNote, NewPatient, NoteBody, NoteId, PatientId, PatientRef, Timestamp,
};
use crate::records::{
    note_link, registry_link, space, Blind, ManifestState, ManifestV1, NoteAt, NoteMetaV1,
    NoteMetaV2, PatientKeyAt, PatientV1, RegistryV1, META_REGISTRY,
};
use crate::sealing::{ManifestRecord, NoteRecord, RegistryRecord};
use crate::Error;

impl<S: Store> Vault<S> {
    /// The checks before any clinical write: the role, and no key operation left unfinished
    /// that would retire the keys the write uses ([`Error::Unfinished`]).
    pub(super) fn require_writable(&self) -> Result<(), Error> {
        self.require(Duty::Clinical)?;
        self.require_fence_free()?;
        self.require_no_retiring_keys()
    }

    /// Registers a patient; returns its new reference (ADR 0021; `None` in a format-1 vault).
    /// Fails with [`Error::PatientExists`] if the identifier is taken.
    pub fn add_patient(&self, patient: NewPatient) -> Result<Option<PatientRef>, Error> {
        let id = patient.id.clone();
        let at = Timestamp::now();
        let result = self.require_writable().and_then(|()| {
            self.retrying(|| {
                let mut txn = Txn::new(self);
                txn.log = Some(Logged {
                    action: Action::PatientAdd,
                    patient: Some(patient.id.as_str().to_string()),
                    note: None,
                });
                txn.create_patient(patient.clone(), at)?;
                let blind = self.keys.blind(&patient.id);
                let reference = txn.patients.get(&blind).and_then(|st| st.info.reference);
                txn.commit()?;
                Ok(reference.map(PatientRef))
            })
        });
        self.log_failure(Action::PatientAdd, Some(&id), result)
    }

    /// Stores a note for an existing patient; returns its new id once it is durable.
    pub fn add_note(&self, id: &PatientId, note: NewNote) -> Result<NoteId, Error> {
        let result = self.require_writable().and_then(|()| {
            self.retrying(|| {
                let mut txn = Txn::new(self);
                let blind = txn.existing_patient(id)?;
                let note_id = txn.add_note(blind, &note, None)?;
                txn.log = Some(Logged {
                    action: Action::NoteAdd,
                    patient: Some(id.as_str().to_string()),
                    note: Some(note_id.to_string()),
                });
                txn.commit()?;
                Ok(note_id)
            })
        });
        self.log_failure(Action::NoteAdd, Some(id), result)
    }

    /// Appends a new version of a note (earlier versions stay readable); returns its version.
    /// `author: None` keeps the previous version's author; the kind is kept.
    pub fn amend_note(
        &self,
        id: &PatientId,
        note: &NoteId,
        body: NoteBody,
        author: Option<String>,
    ) -> Result<u32, Error> {
        let result = self.retrying(|| self.amend_unlogged(id, note, &body, author.clone()));
        self.log_failure(Action::NoteAmend, Some(id), result)
    }

    fn amend_unlogged(
        &self,
        id: &PatientId,
        note: &NoteId,
        body: &NoteBody,
        author: Option<String>,
    ) -> Result<u32, Error> {
        self.require_writable()?;
        check_field("the author", &author)?;
        let mut txn = Txn::new(self);
        let blind = txn.existing_patient(id)?;
        let st = &txn.patients[&blind];
        let latest = self
            .settled(st, |st| self.notes_of(st, Bodies::None))?
            .into_iter()
            .filter(|d| d.note == note.0)
            .max_by_key(|d| d.version)
            .ok_or(Error::NoSuchNote)?;
        let version = latest.version + 1;
        let meta = NoteMetaV1 {
            seq: 0,
            created_at: latest.meta.created_at,
            updated_at: Timestamp::now().unix_millis(),
            author: author.or_else(|| latest.meta.author.clone()),
            kind: latest.meta.kind.clone(),
        };
        txn.add_version(blind, note.0, version, meta, body)?;
        txn.log = Some(Logged {
            action: Action::NoteAmend,
            patient: Some(id.as_str().to_string()),
            note: Some(note.to_string()),
        });
        txn.commit()?;
        Ok(version)
    }
}

/// The access-log entry a transaction commits with its writes.
pub(super) struct Logged {
    pub(super) action: Action,
    pub(super) patient: Option<String>,
    pub(super) note: Option<String>,
}

/// A write transaction: stages records and the manifests and registry they change, then
/// commits them in one atomic batch guarded by compare-and-swap on those manifests and on the
/// registry, and flushes.
pub(super) struct Txn<'v, S: Store> {
    pub(super) vault: &'v Vault<S>,
    pub(super) batch: Batch,
    pub(super) patients: HashMap<Blind, PatientState>,
    registry: Option<(RegistryV1, Vec<u8>)>,
    registry_dirty: bool,
    /// Wrapped keys of the patients this transaction registers, for the key store.
    new_keys: Vec<(PatientKeyAt, WrappedKey)>,
    /// The access-log entry committed with the writes.
    pub(super) log: Option<Logged>,
}

impl<'v, S: Store> Txn<'v, S> {
    pub(super) fn new(vault: &'v Vault<S>) -> Self {
        Txn {
            vault,
            batch: Batch::new(),
            patients: HashMap::new(),
            registry: None,
            registry_dirty: false,
            new_keys: Vec::new(),
            log: None,
        }
    }

    /// Loads an existing patient into the transaction and returns its blind.
    pub(super) fn existing_patient(&mut self, id: &PatientId) -> Result<Blind, Error> {
        let blind = self.vault.keys.blind(id);
        if !self.patients.contains_key(&blind) {
            let st = self.vault.find_patient(id)?;
            self.patients.insert(blind, st);
        }
        Ok(blind)
    }

    /// Stages a new patient, registered `at`: its key, record and empty manifest, and the
    /// registry's new count and chain head.
    pub(super) fn create_patient(&mut self, p: NewPatient, at: Timestamp) -> Result<(), Error> {
        check_field("the name", &p.name)?;
        let v = self.vault;
        let blind = v.keys.blind(&p.id);
        if self.patients.contains_key(&blind) || v.store.get(space::PATIENTS, &blind.0)?.is_some() {
            return Err(Error::PatientExists);
        }
        if self.registry.is_none() {
            self.registry = Some(v.load_registry()?);
        }
        let Some((reg, _)) = self.registry.as_mut() else {
            return Err(Error::Internal("registry not loaded"));
        };
        let seq = reg.patients;
        reg.patients += 1;
        reg.head = registry_link(&reg.head, &blind);
        self.registry_dirty = true;

        // At the patient-key floor (format 2): a record under a lower version would be refused.
        let key_at = PatientKeyAt {
            blind,
            version: v.keys.patient_key_floor().max(1),
        };
        // A key already stored for this patient and no record: left by an attempt that lost its
        // race, or by a registration a crash cut short. Used again rather than appending a
        // second key for the same place (another process may have taken in the first).
        let reused = match v.keys.stored_patient_key(&key_at) {
            Some(wrapped) => Some(v.keys.open_patient_key(&key_at, &wrapped)?),
            None => None,
        };
        let keys = match reused {
            Some(pk) => pk.derive(),
            None => {
                let (pk, wrapped) = v.keys.new_patient_key(key_at)?;
                self.new_keys.push((key_at, wrapped));
                pk.derive()
            }
        };
        let info = PatientV1 {
            seq,
            id: p.id.as_str().to_string(),
            name: p.name,
            birth_date: p.birth_date.map(|d| d.as_str().to_string()),
            created_at: at.unix_millis(),
            // Format 2 vaults give every new patient a random reference (ADR 0021).
            reference: match v.keys.format() {
                1 => None,
                _ => Some(PatientRef::random()?.0),
            },
        };
        let record = seal_patient(&keys.record, v.vault_id(), &blind, &info)?;
        self.batch.require(space::PATIENTS, blind.0.to_vec(), None);
        self.batch.put(space::PATIENTS, blind.0.to_vec(), record);
        self.patients.insert(
            blind,
            PatientState {
                blind,
                keys,
                info,
                manifest: ManifestV1 {
                    next_seq: 0,
                    head: [0; 32],
                    notes: 0,
                },
                manifest_stored: None,
                dirty: true,
            },
        );
        Ok(())
    }

    /// Stages a new note (its first version) for a patient already in the transaction, with
    /// the id given (an import staging again a batch that lost a race keeps its notes' ids) or
    /// a new one.
    pub(super) fn add_note(
        &mut self,
        blind: Blind,
        note: &NewNote,
        id: Option<NoteId>,
    ) -> Result<NoteId, Error> {
        check_field("the author", &note.author)?;
        check_field("the kind", &note.kind)?;
        let seq = self
            .patients
            .get(&blind)
            .ok_or(Error::Internal("patient not loaded"))?
            .manifest
            .next_seq;
        // The id's leading position is only a hint for locality (ADR 0011): nothing checks it.
        let id = match id {
            Some(id) => id,
            None => NoteId::at_position(seq)?,
        };
        let now = Timestamp::now();
        let meta = NoteMetaV1 {
            seq: 0,
            created_at: note.created_at.unwrap_or(now).unix_millis(),
            updated_at: note.created_at.unwrap_or(now).unix_millis(),
            author: note.author.clone(),
            kind: note.kind.clone(),
        };
        self.add_version(blind, id.0, 1, meta, &note.body)?;
        Ok(id)
    }

    /// Stages one note version at the next position of the patient's chain.
    fn add_version(
        &mut self,
        blind: Blind,
        note: [u8; 16],
        version: u32,
        mut meta: NoteMetaV1,
        body: &NoteBody,
    ) -> Result<(), Error> {
        if body.is_blank() {
            return Err(Error::InvalidArgument(
                "a note cannot be empty (or only blanks)".into(),
            ));
        }
        let v = self.vault;
        let st = self
            .patients
            .get_mut(&blind)
            .ok_or(Error::Internal("patient not loaded"))?;
        meta.seq = st.manifest.next_seq;
        let at = NoteAt {
            blind,
            note,
            version,
        };
        let record = if v.keys.format() >= 2 {
            // Format 2 records who wrote the version: the unlocking user, beside the author.
            let meta = NoteMetaV2 {
                seq: meta.seq,
                created_at: meta.created_at,
                updated_at: meta.updated_at,
                author: meta.author.clone(),
                kind: meta.kind.clone(),
                written_by: v.session.user().to_string(),
                via_recovery_key: v.session.via_recovery(),
            };
            envelope::seal_as::<NoteRecord>(
                2,
                &st.keys.note,
                v.vault_id(),
                &at,
                &frame::encode(&meta, body.as_bytes())?,
            )?
        } else {
            envelope::seal::<NoteRecord>(
                &st.keys.note,
                v.vault_id(),
                &at,
                &frame::encode(&meta, body.as_bytes())?,
            )?
        };
        // No "absent" precondition per note: the patient's manifest is guarded by
        // compare-and-swap in the same batch, and every note version extends that manifest, so
        // two writers of one note position cannot both commit (a lookup per note saved).
        self.batch.put(space::NOTES, at.key(), record);
        st.manifest.next_seq += 1;
        st.manifest.head = note_link(&st.manifest.head, &note, version);
        if version == 1 {
            st.manifest.notes += 1;
        }
        st.dirty = true;
        Ok(())
    }

    /// Seals the changed manifests and registry, commits everything atomically (guarded by
    /// compare-and-swap on their stored values) and flushes.
    pub(super) fn commit(&mut self) -> Result<(), Error> {
        match self.prepare()? {
            Some(p) => self.vault.apply(p),
            None => Ok(()),
        }
    }

    /// Seals the changed manifests and registry into the batch and takes everything a commit
    /// writes ([`Vault::apply`] writes it). From here on the transaction assumes that commit
    /// succeeds: the next one is guarded by the bytes sealed now, so if it fails, drop the
    /// transaction (a later commit could only fail its compare-and-swap, never overwrite).
    pub(super) fn prepare(&mut self) -> Result<Option<Prepared>, Error> {
        let v = self.vault;
        let mut batch = std::mem::take(&mut self.batch);
        let mut sealed_manifests = Vec::new();
        // What the log entry records of the state this commit leaves (format 2).
        let mut states = Vec::new();
        let mut changed = Vec::new();
        for st in self.patients.values().filter(|s| s.dirty) {
            states.push(ManifestState {
                blind: st.blind.0,
                next_seq: st.manifest.next_seq,
                head: st.manifest.head,
            });
            changed.push(st.info.id.clone());
            let m = seal_frame::<ManifestRecord, _>(
                &st.keys.manifest,
                v.vault_id(),
                &st.blind,
                &st.manifest,
            )?;
            batch.require(
                space::MANIFESTS,
                st.blind.0.to_vec(),
                st.manifest_stored.clone(),
            );
            batch.put(space::MANIFESTS, st.blind.0.to_vec(), m.clone());
            sealed_manifests.push((st.blind, m));
        }
        states.sort_by_key(|s| s.blind);
        changed.sort();
        let mut sealed_registry = None;
        let mut registry_state = None;
        if self.registry_dirty {
            if let Some((reg, stored)) = &self.registry {
                registry_state = Some(reg.clone());
                let r =
                    seal_frame::<RegistryRecord, _>(v.keys.registry()?, v.vault_id(), &(), reg)?;
                batch.require(space::META, META_REGISTRY, Some(stored.clone()));
                batch.put(space::META, META_REGISTRY, r.clone());
                sealed_registry = Some(r);
            }
        }
        if batch.is_empty() && batch.preconditions.is_empty() {
            return Ok(None);
        }
        for (blind, _) in &sealed_manifests {
            v.chains.forget(blind);
        }
        for (blind, m) in sealed_manifests {
            if let Some(st) = self.patients.get_mut(&blind) {
                st.manifest_stored = Some(m);
                st.dirty = false;
            }
        }
        if let (Some(r), Some((_, stored))) = (sealed_registry, self.registry.as_mut()) {
            *stored = r;
            self.registry_dirty = false;
        }
        Ok(Some(Prepared {
            batch,
            new_keys: std::mem::take(&mut self.new_keys),
            log: self.log.take(),
            changed,
            states,
            registry: registry_state,
        }))
    }
}

/// Everything one commit writes, sealed: see [`Txn::prepare`].
pub(super) struct Prepared {
    batch: Batch,
    new_keys: Vec<(PatientKeyAt, WrappedKey)>,
    log: Option<Logged>,
    /// The identifiers of the patients whose records the commit changes.
    changed: Vec<String>,
    /// Their manifests, and the registry, as the commit leaves them.
    states: Vec<ManifestState>,
    registry: Option<RegistryV1>,
}

impl<S: Store> Vault<S> {
    /// Writes a prepared commit: the new patients' wrapped keys first, then the records with
    /// the access-log entry in one atomic batch, then a flush.
    pub(super) fn apply(&self, p: Prepared) -> Result<(), Error> {
        let Prepared {
            mut batch,
            new_keys,
            log,
            changed,
            states,
            registry,
        } = p;
        let _writing = self.writing();
        if !new_keys.is_empty() {
            // The keys go first: a crash before the records are committed leaves unused keys,
            // never a record without its key. Under the write lock no one else can register
            // these patients between this check and the commit.
            // A patient registered by another writer since this commit was staged: a lost
            // race, retried as one (a registration then finds the patient and says it exists;
            // an import adds its notes to it).
            for (at, _) in &new_keys {
                if self.store.get(space::PATIENTS, &at.blind.0)?.is_some() {
                    return Err(carnet_storage::StoreError::Conflict.into());
                }
            }
            self.keys.append_patient_keys(&self.store, new_keys)?;
        }
        // The access-log entry goes in the same atomic batch: no write without its entry.
        if let Some(Logged {
            action,
            patient,
            note,
        }) = log
        {
            let mut event = Event::new(action, patient.as_deref(), "ok");
            event.note = note;
            event.also = changed
                .into_iter()
                .filter(|c| Some(c) != patient.as_ref())
                .collect();
            event.states = states;
            event.registry = registry;
            self.stage_log(&mut batch, &event)?;
        }
        // Only under the keys this `Vault` read: a key operation since refuses the batch.
        self.require_fence(&mut batch);
        self.store.commit(batch)?;
        self.store.flush()?;
        // The flush made any grouped access-log entries durable too.
        self.log.flushed();
        Ok(())
    }
}
