//! Patient-key rotation: a new key version for one patient or all, every note re-encrypted
//! under it, the old version destroyed; and the key renewal that ends a revocation
//! (docs/key-management.md, "Rotating patient keys"). Crash-safe and resumable.

use std::collections::HashMap;

use carnet_storage::{Batch, Store};

use super::fence::KeyOp;
use super::patients::seal_patient;
use super::Vault;
use crate::access::Duty;
use crate::access_log::Action;
use crate::envelope::{self, parse_error, seal_frame, Sealed};
use crate::error::{integrity, ProblemKind};
use crate::keys::PatientKeys;
use crate::model::PatientId;
use crate::records::{
    space, Blind, JobSlot, JobV1, NoteAt, PatientKeyAt, JOB_REVOKE, JOB_ROTATE_ALL_PATIENTS,
    REVOKED_AN_ADMIN,
};
use crate::sealing::{ManifestRecord, NoteRecord};
use crate::Error;

/// Note records re-encrypted per atomic batch during a patient-key rotation.
const ROTATE_BATCH: usize = 256;

/// What a patient-key rotation did (or, from [`Vault::plan_rotate_patients`], would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PatientRotation {
    /// Patients whose key was (or will be) rotated or whose rotation was finished.
    pub patients: u64,
    /// Records re-encrypted: notes, patient records and manifests.
    pub records_rewritten: u64,
    /// Old patient key versions destroyed (removed from the key store).
    pub keys_destroyed: u64,
    /// Whether this finished a rotation that an interruption had left unfinished.
    pub resumed: bool,
}

/// Which patients a rotation covers.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Patients<'a> {
    /// One patient.
    One(&'a PatientId),
    /// Every patient.
    All,
}

/// A patient's blind, the key version of its record, and the key versions in the key store.
pub(super) type PatientVersions = (Blind, u32, Vec<u32>);

/// One above every patient key version in use or in the key store.
fn next_version(all: &[PatientVersions]) -> u32 {
    all.iter()
        .flat_map(|(_, c, vs)| vs.iter().copied().chain([*c]))
        .max()
        .unwrap_or(0)
        + 1
}

impl<S: Store> Vault<S> {
    /// Every patient's blind, record version and key store versions.
    pub(super) fn patient_versions(&self) -> Result<Vec<PatientVersions>, Error> {
        let mut by_blind: HashMap<Blind, Vec<u32>> = HashMap::new();
        for at in self.keys.patient_key_index() {
            by_blind.entry(at.blind).or_default().push(at.version);
        }
        let mut out = Vec::new();
        for r in self.patient_records() {
            let (blind, v) = r?;
            let sealed = Sealed::parse(&v)
                .map_err(|e| parse_error(&format!("patient {}", blind.short()), e))?;
            let mut versions = by_blind.remove(&blind).unwrap_or_default();
            versions.sort_unstable();
            out.push((blind, sealed.key_version, versions));
        }
        Ok(out)
    }

    /// Adds to `b` the job record of a revocation (unless one is pending): every patient is to
    /// get key version `target`, one above every version in use; `admin`: the user revoked is
    /// an administrator.
    pub(super) fn stage_revocation_job_of(&self, b: &mut Batch, admin: bool) -> Result<(), Error> {
        if self.revocation_target()?.is_some() {
            return Ok(());
        }
        // Above the floor too: each revocation's target is higher than the last one's.
        let target = next_version(&self.patient_versions()?).max(self.keys.patient_key_floor() + 1);
        let mut job = JobV1 {
            kind: JOB_REVOKE,
            target,
            source: [0; 32],
            done: 0,
        };
        if admin {
            job.done = REVOKED_AN_ADMIN;
        }
        b.require(space::META, JobSlot::Revoke.meta_key(), None);
        b.put(
            space::META,
            JobSlot::Revoke.meta_key(),
            self.seal_job(JobSlot::Revoke, &job)?,
        );
        Ok(())
    }

    /// The patient-key version a revocation under way brings every patient to: from its job
    /// record, or, in format 2, from the keyring, which records it authenticated (a job record
    /// deleted behind the vault's back no longer makes a revocation look finished).
    ///
    /// In format 2 the keyring's mark is the authority: a job record that disagrees with it,
    /// or that names a target the patient-key floor already reached (the job record of a
    /// revocation that finished, put back), is an integrity failure. A job record without a
    /// mark is a revocation interrupted between its first two steps.
    pub(super) fn revocation_target(&self) -> Result<Option<u32>, Error> {
        let job = self.load_job(JobSlot::Revoke)?.map(|(j, _)| j.target);
        if self.keys.format() < 2 {
            return Ok(job);
        }
        let stale = || {
            integrity(
                "revoke-job",
                ProblemKind::RolledBack,
                "does not match the revocation the keyring records (a job record put back)",
            )
        };
        match (job, self.keys.revocation_marked()) {
            (Some(j), Some(m)) if j != m => Err(stale()),
            (Some(j), None) if j <= self.keys.patient_key_floor() => Err(stale()),
            (job, mark) => Ok(mark.or(job)),
        }
    }

    /// Gives every patient the revocation's new key version, used by all later writes; notes
    /// already written keep their key version. Returns the patients renewed.
    pub(super) fn renew_patient_keys(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, Error> {
        let Some(target) = self.revocation_target()? else {
            return Ok(0);
        };
        let all = self.patient_versions()?;
        let total = all.len() as u64;
        let mut renewed = 0;
        for (i, (blind, current, _)) in all.iter().enumerate() {
            if *current < target {
                self.move_patient(*blind, *current, target, false)?;
                renewed += 1;
            }
            self.fence_renew()?;
            progress(i as u64 + 1, total);
        }
        Ok(renewed)
    }

    /// What [`Vault::rotate_patients`] would do now, without doing it.
    pub fn plan_rotate_patients(&self, which: Patients<'_>) -> Result<PatientRotation, Error> {
        self.require(Duty::Administration)?;
        let all = self.patient_versions()?;
        let job = self.load_job(JobSlot::RotateAllPatients)?.map(|(j, _)| j);
        let selected: Vec<_> = match which {
            Patients::One(id) => {
                let b = self.keys.blind(id);
                let found: Vec<_> = all.into_iter().filter(|(x, _, _)| *x == b).collect();
                if found.is_empty() {
                    return Err(Error::NoSuchPatient);
                }
                found
            }
            Patients::All => all,
        };
        let mut plan = PatientRotation::default();
        let mut note_counts: HashMap<Blind, u64> = HashMap::new();
        for r in self.store.scan_prefix(space::NOTES, &[]) {
            let (k, _) = r?;
            if let Some(at) = NoteAt::parse(&k) {
                *note_counts.entry(at.blind).or_default() += 1;
            }
        }
        for (blind, current, versions) in &selected {
            let pending = versions.iter().any(|v| v != current);
            let done_by_job =
                matches!((&job, which), (Some(j), Patients::All) if *current >= j.target);
            if done_by_job && !pending {
                continue;
            }
            plan.resumed |= pending || job.is_some();
            plan.patients += 1;
            plan.records_rewritten += note_counts.get(blind).copied().unwrap_or(0) + 2;
            plan.keys_destroyed += versions.len().max(1) as u64;
        }
        Ok(plan)
    }

    /// Rotates patient keys: a new key version, every version of every note and the
    /// patient's record and manifest re-encrypted under it, then the old version destroyed.
    /// Resumable: a patient left half-rotated is finished (not rotated again), and an
    /// interrupted `All` rotation continues where it stopped. `progress` gets (patients done,
    /// patients in all).
    pub fn rotate_patients(
        &mut self,
        which: Patients<'_>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PatientRotation, Error> {
        let result = self.require(Duty::Administration).and_then(|()| {
            self.alone(KeyOp::RotatePatients, |v| {
                v.rotate_patients_unlogged(which, progress)
            })
        });
        let logged = self.logged_result(
            Action::KeyRotatePatient,
            match which {
                Patients::One(id) => Some(id),
                Patients::All => None,
            },
            result,
        );
        self.end_key_operation(logged)
    }

    fn rotate_patients_unlogged(
        &mut self,
        which: Patients<'_>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PatientRotation, Error> {
        self.require(Duty::Administration)?;
        // New patient keys would be wrapped under an epoch that the unfinished operation retires.
        self.require_no_retiring_keys()?;
        let all = self.patient_versions()?;
        let mut summary = PatientRotation::default();
        let mut destroy: Vec<PatientKeyAt> = Vec::new();
        let old_versions = |blind: Blind, versions: &[u32], target: u32| {
            versions
                .iter()
                .filter(move |v| **v != target)
                .map(move |v| PatientKeyAt { blind, version: *v })
                .collect::<Vec<_>>()
        };
        match which {
            Patients::One(id) => {
                let b = self.keys.blind(id);
                let (blind, current, versions) = all
                    .into_iter()
                    .find(|(x, _, _)| *x == b)
                    .ok_or(Error::NoSuchPatient)?;
                // A rotation left unfinished (a newer key version than the record's) is
                // finished, not started again.
                let target = match versions.iter().max() {
                    Some(&m) if m > current => {
                        summary.resumed = true;
                        m
                    }
                    m => m.copied().unwrap_or(current).max(current) + 1,
                };
                summary.records_rewritten += self.move_patient(blind, current, target, true)?;
                destroy.extend(old_versions(blind, &versions, target));
                summary.patients = 1;
                progress(1, 1);
            }
            Patients::All => {
                // The job record makes an interrupted --all resumable: patients already at the
                // target version are done.
                let job = match self.load_job(JobSlot::RotateAllPatients)? {
                    Some((j, _)) => {
                        summary.resumed = true;
                        j
                    }
                    None => self.start_rotate_all(next_version(&all))?,
                };
                let total = all.len() as u64;
                for (i, (blind, current, versions)) in all.iter().enumerate() {
                    if *current < job.target {
                        summary.records_rewritten +=
                            self.move_patient(*blind, *current, job.target, true)?;
                        summary.patients += 1;
                    } else if versions.iter().any(|v| v != current) {
                        summary.patients += 1;
                    }
                    destroy.extend(old_versions(*blind, versions, job.target));
                    self.fence_renew()?;
                    progress(i as u64 + 1, total);
                }
            }
        }
        summary.keys_destroyed = self.keys.destroy_patient_keys(&self.store, &destroy)?;
        if matches!(which, Patients::All) {
            self.finish_job(JobSlot::RotateAllPatients)?;
        }
        Ok(summary)
    }

    /// Writes the job record of a `rotate-patient --all` bringing every patient to `target`.
    fn start_rotate_all(&self, target: u32) -> Result<JobV1, Error> {
        let mut b = Batch::new();
        let job = self.stage_job(
            &mut b,
            JobSlot::RotateAllPatients,
            JOB_ROTATE_ALL_PATIENTS,
            target,
        )?;
        self.require_fence(&mut b);
        self.store.commit(b)?;
        self.store.flush()?;
        Ok(job)
    }

    /// Brings one patient from key version `current` to `target`: the new key, then (with
    /// `notes`) every note re-encrypted, then the patient record and manifest. Returns the
    /// records rewritten.
    fn move_patient(
        &mut self,
        blind: Blind,
        current: u32,
        target: u32,
        notes: bool,
    ) -> Result<u64, Error> {
        // Step 1: the new key, appended to the key store (unless a previous run did).
        let target_at = PatientKeyAt {
            blind,
            version: target,
        };
        if !self.keys.has_patient_key(&target_at) {
            let (_, wrapped) = self.keys.new_patient_key(target_at)?;
            self.keys
                .append_patient_keys(&self.store, vec![(target_at, wrapped)])?;
        }
        let new_keys = self.patient_keys(&blind, target)?;
        let mut keys: HashMap<u32, PatientKeys> = HashMap::new();
        let mut rewritten = 0u64;
        // Step 2: every note record not yet under the target version, in CAS-guarded batches.
        let raw: Vec<(Vec<u8>, Vec<u8>)> = if notes {
            self.store
                .scan_prefix(space::NOTES, &blind.0)
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let mut batch = Batch::new();
        for (k, v) in raw {
            let location = format!("note record under {}", blind.short());
            let at = NoteAt::parse(&k)
                .filter(|at| at.blind == blind)
                .ok_or_else(|| {
                    integrity(&location, ProblemKind::Malformed, "malformed storage key")
                })?;
            let sealed = Sealed::parse(&v).map_err(|e| parse_error(&location, e))?;
            if sealed.key_version == target {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(sealed.key_version) {
                // The key that opens this note (a candidate, if the chosen one does not).
                let (k, _) = self.patient_keys_opening(&blind, sealed.key_version, &|k| {
                    sealed.open_at::<NoteRecord>(&location, &k.note, self.vault_id(), &at)
                })?;
                e.insert(k);
            }
            let old = &keys[&sealed.key_version];
            let plain = sealed.open_at::<NoteRecord>(&location, &old.note, self.vault_id(), &at)?;
            // The same payload under the new key: its format stays.
            let resealed = envelope::seal_as::<NoteRecord>(
                sealed.format,
                &new_keys.note,
                self.vault_id(),
                &at,
                &plain,
            )?;
            batch.require(space::NOTES, k.clone(), Some(v));
            batch.put(space::NOTES, k, resealed);
            rewritten += 1;
            if batch.len() >= ROTATE_BATCH {
                self.require_fence(&mut batch);
                self.store.commit(std::mem::take(&mut batch))?;
                self.store.flush()?;
            }
        }
        if !batch.is_empty() {
            self.require_fence(&mut batch);
            self.store.commit(batch)?;
            self.store.flush()?;
        }
        // Step 3: the patient record and manifest, together, under the target version.
        if current != target {
            let precord = self.store.get(space::PATIENTS, &blind.0)?.ok_or_else(|| {
                integrity(
                    format!("patient {}", blind.short()),
                    ProblemKind::Missing,
                    "missing",
                )
            })?;
            let st = self.load_patient(&blind, &precord)?;
            let mstored = st
                .manifest_stored
                .clone()
                .ok_or(Error::Internal("manifest not loaded"))?;
            let record = seal_patient(&new_keys.record, self.vault_id(), &blind, &st.info)?;
            let manifest = seal_frame::<ManifestRecord, _>(
                &new_keys.manifest,
                self.vault_id(),
                &blind,
                &st.manifest,
            )?;
            let mut b = Batch::new();
            b.require(space::PATIENTS, blind.0.to_vec(), Some(precord));
            b.put(space::PATIENTS, blind.0.to_vec(), record);
            b.require(space::MANIFESTS, blind.0.to_vec(), Some(mstored));
            b.put(space::MANIFESTS, blind.0.to_vec(), manifest);
            self.chains.forget(&blind);
            self.require_fence(&mut b);
            self.store.commit(b)?;
            self.store.flush()?;
            rewritten += 2;
        }
        Ok(rewritten)
    }
}
