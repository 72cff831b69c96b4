//! Key lifecycle: master-key rotation, patient-key rotation, passphrase change, key status and
//! crypto-shredding. Every operation here is crash-safe and resumable; the write order and the
//! argument for each are in docs/key-management.md, "Key lifecycle".

use std::collections::{BTreeMap, HashMap, HashSet};

use carnet_storage::{Batch, SpacedEntry, Store, StoreError};

use crate::crypto::{self, LABEL_WRAP_PATIENT_KEY, LABEL_WRAP_VAULT_KEYS};
use crate::envelope::{self, Kind, Sealed};
use crate::frame;
use crate::keyring::{KdfParams, SlotSecret};
use crate::keystore::{KeyStore, KEYS_DOC, ROOT_DOC};
use crate::records::{
    parse_note_key, patient_key_key, registry_link, space, Blind, JobV1, PatientV1, RegistryV1,
    VaultKeyV1, VaultKeysV1, JOB_REVOKE, JOB_ROTATE_ALL_PATIENTS, META_JOB, META_REGISTRY,
    META_REVOKE_JOB, PURPOSE_LOG,
};
use crate::secret::{Passphrase, SecretKey};
use crate::users::Duty;
use crate::vault::{
    integrity, open_frame, parse_error, seal_registry, PatientKeys, REGISTRY_KEY_VERSION,
};
use crate::{Error, PatientId, Vault};

/// Note records re-encrypted per atomic batch during a patient-key rotation.
const ROTATE_BATCH: usize = 256;

/// What a master-key rotation did (or, from [`Vault::plan_rotate_master`], would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterRotation {
    /// The epoch before.
    pub from_epoch: u32,
    /// The epoch after.
    pub to_epoch: u32,
    /// Wrapped keys re-wrapped (vault keys and patient keys): the records rewritten.
    pub keys_rewrapped: u64,
    /// Key slots re-sealed.
    pub slots: u64,
    /// Note records rewritten: always 0.
    pub notes_rewritten: u64,
    /// Whether this finished a rotation that an interruption had left unfinished.
    pub resumed: bool,
}

/// What a patient-key rotation did (or, from [`Vault::plan_rotate_patients`], would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
pub enum Patients<'a> {
    /// One patient.
    One(&'a PatientId),
    /// Every patient.
    All,
}

/// The state of a vault's keys, as `carnet key status` shows it.
#[derive(Clone, Debug)]
pub struct KeyStatus {
    /// The current master epoch.
    pub epoch: u32,
    /// The epoch a master-key rotation left unfinished, if any.
    pub pending_epoch: Option<u32>,
    /// The epoch the key store is wrapped under.
    pub key_store_epoch: u32,
    /// The unlocking user's KDF parameters.
    pub kdf: KdfParams,
    /// Key slots (users).
    pub slots: u64,
    /// Per master epoch: how many wrapped keys use it.
    pub keys_per_epoch: BTreeMap<u32, u64>,
    /// Per patient key version: how many records use it (patient records, manifests, notes).
    pub records_per_patient_key_version: BTreeMap<u32, u64>,
    /// Patients with a rotation left unfinished (records under several key versions, or an old
    /// key version not yet destroyed).
    pub patients_unfinished: u64,
    /// Whether a `rotate-patient --all` was interrupted.
    pub all_patients_rotation_unfinished: bool,
    /// Wrapped keys of no registered patient (left by interrupted registrations or erasures).
    pub unused_keys: u64,
    /// Every unfinished operation, in words.
    pub unfinished: Vec<String>,
}

impl<S: Store> Vault<S> {
    // ----- master key -----

    /// What [`Vault::rotate_master`] would do now, without doing it.
    pub fn plan_rotate_master(&self) -> Result<MasterRotation, Error> {
        self.require(Duty::Administration)?;
        let ks = self.key_store();
        let resumed = self.pending.is_some();
        Ok(MasterRotation {
            from_epoch: self.keyring.epoch,
            to_epoch: self
                .pending
                .as_ref()
                .map_or(self.keyring.epoch + 1, |(e, _)| *e),
            keys_rewrapped: ks.patient.len() as u64 + 1,
            slots: self.keyring.slots().len() as u64,
            notes_rewritten: 0,
            resumed,
        })
    }

    /// Rotates the master key: a new epoch, every wrapped key re-wrapped under it, every slot
    /// re-sealed, the old epoch destroyed. No record of the record store is rewritten; the cost
    /// grows with patients, not notes. If a previous rotation was interrupted, this finishes it
    /// instead of starting another. `progress` gets (keys re-wrapped, keys in all).
    pub fn rotate_master(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MasterRotation, Error> {
        let result = self.rotate_master_unlogged(progress);
        self.logged_result("key rotate-master", None, result)
    }

    fn rotate_master_unlogged(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MasterRotation, Error> {
        self.require(Duty::Administration)?;
        let from = self.keyring.epoch;
        let resumed = self.pending.is_some();
        // Step 1: seal a new master to every slot, beside the current one.
        let (next, next_master) = match self.pending.take() {
            Some(p) => p,
            None => {
                let next = from
                    .checked_add(1)
                    .ok_or(Error::Internal("epoch overflow"))?;
                let m = SecretKey::random()?;
                let mut keyring = self.keyring.clone();
                keyring.seal_to_all(next, &m)?;
                self.store
                    .replace_doc(ROOT_DOC, &keyring.encode(&self.master))?;
                self.keyring = keyring;
                (next, m)
            }
        };
        // Step 2: re-wrap the key store under the new epoch, and replace it whole.
        let total = self.key_store().patient.len() as u64 + 1;
        let mut rewrapped = 0;
        if self.key_store().epoch != next {
            let new_wrap_patient = crypto::subkey(&next_master, LABEL_WRAP_PATIENT_KEY);
            let old = self.key_store();
            let mut ks = KeyStore::new(next);
            let vault_keys = old
                .vault_keys
                .as_ref()
                .ok_or_else(|| integrity("vault keys", "missing"))?;
            ks.vault_keys = Some(rewrap(
                self.vault_id(),
                vault_keys,
                Kind::VaultKeys,
                &[],
                &crypto::subkey(self.store_master(&old, &next_master), LABEL_WRAP_VAULT_KEYS),
                next,
                &crypto::subkey(&next_master, LABEL_WRAP_VAULT_KEYS),
            )?);
            rewrapped += 1;
            // Re-wrapped on every core, in chunks of 1,024 keys (results keep their order).
            let entries: Vec<(&(Blind, u32), &Vec<u8>)> = old.patient.iter().collect();
            let (vault_id, wrap_patient) = (self.vault_id(), &self.wrap_patient);
            let chunks = crate::par::map_parallel(entries.chunks(1024).map(Ok), |chunk| {
                chunk
                    .iter()
                    .map(|((blind, version), sealed)| {
                        let binding = patient_key_key(blind, *version);
                        rewrap(
                            vault_id,
                            sealed,
                            Kind::PatientKey,
                            &binding,
                            wrap_patient,
                            next,
                            &new_wrap_patient,
                        )
                        .map(|w| ((*blind, *version), w))
                    })
                    .collect::<Result<Vec<_>, Error>>()
            })?;
            for chunk in chunks {
                for (k, w) in chunk? {
                    ks.patient.insert(k, w);
                    rewrapped += 1;
                }
                progress(rewrapped, total);
            }
            drop(entries);
            drop(old);
            self.store
                .replace_doc(KEYS_DOC, &ks.encode(self.vault_id()))?;
            *self.key_store() = ks;
            self.wrap_patient = new_wrap_patient;
        }
        progress(total, total);
        // Step 3: make the new epoch current and destroy the old one in every slot.
        let mut keyring = self.keyring.clone();
        keyring.epoch = next;
        keyring.drop_seals_before(next);
        self.store
            .replace_doc(ROOT_DOC, &keyring.encode(&next_master))?;
        self.keyring = keyring;
        self.master = next_master;
        Ok(MasterRotation {
            from_epoch: if resumed { next - 1 } else { from },
            to_epoch: next,
            keys_rewrapped: rewrapped,
            slots: self.keyring.slots().len() as u64,
            notes_rewritten: 0,
            resumed,
        })
    }

    /// The master of the key store's epoch: the current one, or the next during a rotation.
    fn store_master<'a>(&'a self, ks: &KeyStore, next: &'a SecretKey) -> &'a SecretKey {
        if ks.epoch == self.keyring.epoch {
            &self.master
        } else {
            next
        }
    }

    // ----- passphrase -----

    /// Gives the unlocking user's slot a fresh key pair protected by `new` (same KDF
    /// parameters) and seals the master to it. O(1). The old passphrase stops working, and a
    /// copy of the old slot opens nothing sealed afterwards.
    pub fn change_passphrase(&mut self, new: &Passphrase) -> Result<(), Error> {
        let result = self.change_passphrase_unlogged(new);
        self.logged_result("key change-passphrase", None, result)
    }

    fn change_passphrase_unlogged(&mut self, new: &Passphrase) -> Result<(), Error> {
        if !new.is_strong_enough() {
            return Err(Error::InvalidArgument(format!(
                "the passphrase is too short: use at least {} characters",
                Passphrase::MIN_CHARS
            )));
        }
        let kdf = self
            .keyring
            .slot(&self.user)
            .ok_or(Error::UnknownUser)?
            .kdf();
        let user = self.user.clone();
        self.put_slot(&user, SlotSecret::Passphrase(new, kdf))
    }

    // ----- patient keys -----

    /// Every patient's blind, record version and key store versions.
    fn patient_versions(&self) -> Result<Vec<(Blind, u32, Vec<u32>)>, Error> {
        let mut by_blind: HashMap<Blind, Vec<u32>> = HashMap::new();
        for (b, v) in self.key_store().patient.keys() {
            by_blind.entry(*b).or_default().push(*v);
        }
        let mut out = Vec::new();
        for r in self.store.scan_prefix(space::PATIENTS, &[]) {
            let (k, v) = r?;
            let blind = Blind::from_slice(&k)
                .ok_or_else(|| integrity("patients", "malformed storage key"))?;
            let sealed = Sealed::parse(&v)
                .map_err(|e| parse_error(&format!("patient {}", blind.short()), e))?;
            let mut versions = by_blind.remove(&blind).unwrap_or_default();
            versions.sort_unstable();
            out.push((blind, sealed.key_version, versions));
        }
        Ok(out)
    }

    fn load_job(&self) -> Result<Option<(JobV1, Vec<u8>)>, Error> {
        self.load_job_at(META_JOB)
    }

    pub(crate) fn load_job_at(&self, key: &[u8]) -> Result<Option<(JobV1, Vec<u8>)>, Error> {
        let Some(stored) = self.store.get(space::META, key)? else {
            return Ok(None);
        };
        let (job, _) = open_frame::<JobV1>(
            "job",
            &stored,
            Kind::Job,
            &self.registry_key,
            self.vault_id(),
            key,
        )?;
        Ok(Some((job, stored)))
    }

    /// Whether a user's revocation left patient keys to renew.
    pub(crate) fn revocation_pending(&self) -> Result<bool, Error> {
        Ok(self.load_job_at(META_REVOKE_JOB)?.is_some())
    }

    /// Adds to `b` the job record of a revocation (unless one is pending): every patient is to
    /// get key version `target`, one above every version in use.
    pub(crate) fn stage_revocation_job(&self, b: &mut Batch) -> Result<(), Error> {
        if self.revocation_pending()? {
            return Ok(());
        }
        let target = next_version(&self.patient_versions()?);
        self.stage_job(b, META_REVOKE_JOB, JOB_REVOKE, target)
    }

    /// Adds to `b` a new job record of `kind` under `key`, bringing patients to `target`.
    fn stage_job(&self, b: &mut Batch, key: &[u8], kind: u8, target: u32) -> Result<(), Error> {
        let job = JobV1 {
            kind,
            target,
            source: [0; 32],
            done: 0,
        };
        let sealed = envelope::seal(
            Kind::Job,
            REGISTRY_KEY_VERSION,
            &self.registry_key,
            self.vault_id(),
            key,
            &frame::encode(&job, &[])?,
        )?;
        b.require(space::META, key.to_vec(), None);
        b.put(space::META, key.to_vec(), sealed);
        Ok(())
    }

    /// Gives every patient the revocation's new key version, used by all later writes; notes
    /// already written keep their key version. Returns the patients renewed.
    pub(crate) fn renew_patient_keys(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, Error> {
        let Some((job, _)) = self.load_job_at(META_REVOKE_JOB)? else {
            return Ok(0);
        };
        let all = self.patient_versions()?;
        let total = all.len() as u64;
        let mut renewed = 0;
        for (i, (blind, current, _)) in all.iter().enumerate() {
            if *current < job.target {
                self.move_patient(*blind, *current, job.target, false)?;
                renewed += 1;
            }
            progress(i as u64 + 1, total);
        }
        Ok(renewed)
    }

    /// Adds a new access-log key version (after a revocation): later entries are sealed under
    /// it, closed to the removed user. Replaces the key store whole.
    pub(crate) fn add_log_key_version(&mut self) -> Result<(), Error> {
        let wrap_vault = crypto::subkey(&self.master, LABEL_WRAP_VAULT_KEYS);
        let mut ks = self.key_store();
        let stored = ks
            .vault_keys
            .clone()
            .ok_or_else(|| integrity("vault keys", "missing"))?;
        let (mut keys, _) = open_frame::<VaultKeysV1>(
            "vault keys",
            &stored,
            Kind::VaultKeys,
            &wrap_vault,
            self.vault_id(),
            &[],
        )?;
        let version = self.log_keys.keys().next_back().copied().unwrap_or(0) + 1;
        let key = SecretKey::random()?;
        keys.keys.push(VaultKeyV1 {
            purpose: PURPOSE_LOG,
            version,
            key: *key.expose(),
        });
        let sealed = envelope::seal(
            Kind::VaultKeys,
            ks.epoch,
            &wrap_vault,
            self.vault_id(),
            &[],
            &frame::encode(&keys, &[])?,
        )?;
        let mut next = KeyStore::new(ks.epoch);
        next.vault_keys = Some(sealed);
        next.patient = ks.patient.clone();
        self.store
            .replace_doc(KEYS_DOC, &next.encode(self.vault_id()))?;
        *ks = next;
        drop(ks);
        self.log_keys.insert(version, key);
        Ok(())
    }

    /// Deletes the revocation's job record.
    pub(crate) fn finish_revocation_job(&mut self) -> Result<(), Error> {
        if let Some((_, stored)) = self.load_job_at(META_REVOKE_JOB)? {
            let mut b = Batch::new();
            b.require(space::META, META_REVOKE_JOB, Some(stored));
            b.delete(space::META, META_REVOKE_JOB);
            self.store.commit(b)?;
            self.store.flush()?;
        }
        Ok(())
    }

    /// What [`Vault::rotate_patients`] would do now, without doing it.
    pub fn plan_rotate_patients(&self, which: Patients<'_>) -> Result<PatientRotation, Error> {
        self.require(Duty::Administration)?;
        let all = self.patient_versions()?;
        let job = self.load_job()?.map(|(j, _)| j);
        let selected: Vec<_> = match which {
            Patients::One(id) => {
                let b = self.blind(id);
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
            if let Some((b, _, _)) = parse_note_key(&k) {
                *note_counts.entry(b).or_default() += 1;
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
        let result = self.rotate_patients_unlogged(which, progress);
        self.logged_result(
            "key rotate-patient",
            match which {
                Patients::One(id) => Some(id),
                Patients::All => None,
            },
            result,
        )
    }

    fn rotate_patients_unlogged(
        &mut self,
        which: Patients<'_>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PatientRotation, Error> {
        self.require(Duty::Administration)?;
        let all = self.patient_versions()?;
        let mut summary = PatientRotation::default();
        let mut destroy: Vec<(Blind, u32)> = Vec::new();
        match which {
            Patients::One(id) => {
                let b = self.blind(id);
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
                destroy.extend(
                    versions
                        .iter()
                        .filter(|v| **v != target)
                        .map(|v| (blind, *v)),
                );
                summary.patients = 1;
                progress(1, 1);
            }
            Patients::All => {
                // The job record makes an interrupted --all resumable: patients already at the
                // target version are done.
                let job = match self.load_job()? {
                    Some((j, _)) => {
                        summary.resumed = true;
                        j
                    }
                    None => {
                        let target = next_version(&all);
                        let mut b = Batch::new();
                        self.stage_job(&mut b, META_JOB, JOB_ROTATE_ALL_PATIENTS, target)?;
                        self.store.commit(b)?;
                        self.store.flush()?;
                        JobV1 {
                            kind: JOB_ROTATE_ALL_PATIENTS,
                            target,
                            source: [0; 32],
                            done: 0,
                        }
                    }
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
                    destroy.extend(
                        versions
                            .iter()
                            .filter(|v| **v != job.target)
                            .map(|v| (*blind, *v)),
                    );
                    progress(i as u64 + 1, total);
                }
            }
        }
        summary.keys_destroyed = self.destroy_patient_keys(&destroy)?;
        if matches!(which, Patients::All) {
            if let Some((_, stored)) = self.load_job()? {
                let mut b = Batch::new();
                b.require(space::META, META_JOB, Some(stored));
                b.delete(space::META, META_JOB);
                self.store.commit(b)?;
                self.store.flush()?;
            }
        }
        Ok(summary)
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
        let has_target = self.key_store().patient.contains_key(&(blind, target));
        if !has_target {
            let pk = SecretKey::random()?;
            let sealed = envelope::seal(
                Kind::PatientKey,
                self.key_store().epoch,
                &self.wrap_patient,
                self.vault_id(),
                &patient_key_key(&blind, target),
                pk.expose(),
            )?;
            self.append_keys(vec![(blind, target, sealed)])?;
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
            let sealed = Sealed::parse(&v).map_err(|e| parse_error(&location, e))?;
            if sealed.key_version == target {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry(sealed.key_version) {
                e.insert(self.patient_keys(&blind, sealed.key_version)?);
            }
            let old = &keys[&sealed.key_version];
            let plain = sealed.open_at(&location, Kind::Note, &old.note, self.vault_id(), &k)?;
            let resealed = envelope::seal(
                Kind::Note,
                target,
                &new_keys.note,
                self.vault_id(),
                &k,
                &plain,
            )?;
            batch.require(space::NOTES, k.clone(), Some(v));
            batch.put(space::NOTES, k, resealed);
            rewritten += 1;
            if batch.len() >= ROTATE_BATCH {
                self.store.commit(std::mem::take(&mut batch))?;
                self.store.flush()?;
            }
        }
        if !batch.is_empty() {
            self.store.commit(batch)?;
            self.store.flush()?;
        }
        // Step 3: the patient record and manifest, together, under the target version.
        if current != target {
            let precord = self
                .store
                .get(space::PATIENTS, &blind.0)?
                .ok_or_else(|| integrity(format!("patient {}", blind.short()), "missing"))?;
            let st = self.load_patient(&blind, &precord)?;
            let mstored = st
                .manifest_stored
                .clone()
                .ok_or(Error::Internal("manifest not loaded"))?;
            let mut b = Batch::new();
            let record = envelope::seal(
                Kind::Patient,
                target,
                &new_keys.record,
                self.vault_id(),
                &blind.0,
                &frame::encode(&st.info, &[])?,
            )?;
            let manifest = envelope::seal(
                Kind::Manifest,
                target,
                &new_keys.manifest,
                self.vault_id(),
                &blind.0,
                &frame::encode(&st.manifest, &[])?,
            )?;
            b.require(space::PATIENTS, blind.0.to_vec(), Some(precord));
            b.put(space::PATIENTS, blind.0.to_vec(), record);
            b.require(space::MANIFESTS, blind.0.to_vec(), Some(mstored));
            b.put(space::MANIFESTS, blind.0.to_vec(), manifest);
            self.chains().remove(&blind);
            self.store.commit(b)?;
            self.store.flush()?;
            rewritten += 2;
        }
        Ok(rewritten)
    }

    /// Removes key versions from the key store (rewriting it whole); returns how many.
    fn destroy_patient_keys(&mut self, which: &[(Blind, u32)]) -> Result<u64, Error> {
        if which.is_empty() {
            return Ok(0);
        }
        let mut ks = self.key_store();
        let mut next = KeyStore::new(ks.epoch);
        next.vault_keys = ks.vault_keys.clone();
        next.patient = ks.patient.clone();
        let mut n = 0;
        for k in which {
            if next.patient.remove(k).is_some() {
                n += 1;
            }
        }
        self.store
            .replace_doc(KEYS_DOC, &next.encode(self.vault_id()))?;
        *ks = next;
        Ok(n)
    }

    // ----- status -----

    /// The state of the vault's keys: epochs, KDF settings, which key versions records use,
    /// and any rotation left unfinished. Reads record headers only; decrypts nothing.
    pub fn key_status(&self) -> Result<KeyStatus, Error> {
        let result = self.key_status_unlogged();
        self.logged_result("key status", None, result)
    }

    fn key_status_unlogged(&self) -> Result<KeyStatus, Error> {
        self.require(Duty::Administration)?;
        let versions = self.patient_versions()?;
        let current: HashMap<Blind, u32> = versions.iter().map(|(b, c, _)| (*b, *c)).collect();
        let mut per_version: BTreeMap<u32, u64> = BTreeMap::new();
        let mut mixed: HashSet<Blind> = HashSet::new();
        for (b, c, vs) in &versions {
            *per_version.entry(*c).or_default() += 2; // patient record and manifest
                                                      // A key version newer than the record's: a rotation stopped before its end.
            if vs.iter().any(|v| v > c) {
                mixed.insert(*b);
            }
        }
        for r in self.store.scan_prefix(space::NOTES, &[]) {
            let (k, v) = r?;
            let (Some((b, _, _)), Ok(sealed)) = (parse_note_key(&k), Sealed::parse(&v)) else {
                continue;
            };
            *per_version.entry(sealed.key_version).or_default() += 1;
            // A note under a newer version than its patient's record: a rotation stopped
            // before its end. (Older versions are normal after a revocation.)
            if current.get(&b).is_some_and(|c| sealed.key_version > *c) {
                mixed.insert(b);
            }
        }
        let ks = self.key_store();
        let unused = ks
            .patient
            .keys()
            .filter(|(b, _)| !current.contains_key(b))
            .count() as u64;
        let mut keys_per_epoch = BTreeMap::new();
        keys_per_epoch.insert(ks.epoch, ks.patient.len() as u64 + 1);
        let job = self.load_job()?.is_some();
        let mut unfinished = Vec::new();
        if let Some((e, _)) = &self.pending {
            unfinished.push(format!(
                "master-key rotation to epoch {e} (run `carnet key rotate-master` to finish it)"
            ));
        }
        if job {
            unfinished.push("rotation of every patient's key (run `carnet key rotate-patient --all` to finish it)".into());
        }
        if self.revocation_pending()? {
            unfinished.push(
                "a user's revocation (run `carnet user remove NAME` again to finish it)".into(),
            );
        }
        if !mixed.is_empty() {
            unfinished.push(format!(
                "{} patient key rotation(s) (run `carnet key rotate-patient ID` or `--all` to finish)",
                mixed.len()
            ));
        }
        Ok(KeyStatus {
            epoch: self.keyring.epoch,
            pending_epoch: self.pending.as_ref().map(|(e, _)| *e),
            key_store_epoch: ks.epoch,
            kdf: self
                .keyring
                .slot(&self.user)
                .ok_or(Error::UnknownUser)?
                .kdf(),
            slots: self.keyring.slots().len() as u64,
            keys_per_epoch,
            records_per_patient_key_version: per_version,
            patients_unfinished: mixed.len() as u64,
            all_patients_rotation_unfinished: job,
            unused_keys: unused,
            unfinished,
        })
    }

    // ----- erasure -----

    /// Crypto-shredding: destroys a patient's keys and records so that no copy of the vault
    /// taken afterwards, with any passphrase, can recover them. Rewrites the record store into
    /// a fresh one without the patient and swaps it in, then rewrites the key store without the
    /// patient's keys. O(size of the vault): for the end of a retention period or a lawful
    /// erasure, not for daily use. If an earlier erasure of this patient was interrupted, this
    /// finishes it.
    pub fn erase_patient(&mut self, id: &PatientId) -> Result<(), Error> {
        let result = self.erase_patient_unlogged(id);
        self.logged_result("patient erase", Some(id), result)
    }

    fn erase_patient_unlogged(&mut self, id: &PatientId) -> Result<(), Error> {
        self.require(Duty::Administration)?;
        let blind = self.blind(id);
        let exists = self.store.get(space::PATIENTS, &blind.0)?.is_some()
            || self.store.get(space::MANIFESTS, &blind.0)?.is_some();
        let keys: Vec<(Blind, u32)> = self
            .key_store()
            .patient
            .keys()
            .filter(|(b, _)| *b == blind)
            .copied()
            .collect();
        if !exists && keys.is_empty() {
            return Err(Error::NoSuchPatient);
        }
        if exists {
            self.rewrite_without(&blind)?;
        }
        self.destroy_patient_keys(&keys)?;
        self.chains().remove(&blind);
        Ok(())
    }

    /// Rewrites the record store without `gone`'s records, renumbering the registry.
    fn rewrite_without(&mut self, gone: &Blind) -> Result<(), Error> {
        // The remaining patients, in registry order, with their records re-sealed when their
        // position changes.
        let mut patients: Vec<(u64, Blind, Vec<u8>, PatientV1, u32)> = Vec::new();
        for r in self.store.scan_prefix(space::PATIENTS, &[]) {
            let (k, v) = r?;
            let blind = Blind::from_slice(&k)
                .ok_or_else(|| integrity("patients", "malformed storage key"))?;
            if blind == *gone {
                continue;
            }
            let st = self.load_patient(&blind, &v)?;
            patients.push((st.info.seq, blind, v, st.info.clone(), st.keys.version));
        }
        patients.sort_by_key(|p| p.0);
        let mut head = [0u8; 32];
        let mut meta: Vec<SpacedEntry> = Vec::new();
        let mut records: Vec<SpacedEntry> = Vec::new();
        for (i, (seq, blind, stored, info, version)) in patients.iter().enumerate() {
            head = registry_link(&head, blind);
            let value = if *seq == i as u64 {
                stored.clone()
            } else {
                let mut info = info.clone();
                info.seq = i as u64;
                let keys = self.patient_keys(blind, *version)?;
                envelope::seal(
                    Kind::Patient,
                    *version,
                    &keys.record,
                    self.vault_id(),
                    &blind.0,
                    &frame::encode(&info, &[])?,
                )?
            };
            records.push((space::PATIENTS, blind.0.to_vec(), value));
        }
        let reg = RegistryV1 {
            patients: patients.len() as u64,
            head,
        };
        meta.push((
            space::META,
            META_REGISTRY.to_vec(),
            seal_registry(&self.registry_key, self.vault_id(), &reg)?,
        ));
        for r in self.store.scan_prefix(space::META, &[]) {
            let (k, v) = r?;
            if k != META_REGISTRY {
                meta.push((space::META, k, v));
            }
        }
        let store = &self.store;
        let keep = move |sp| {
            store
                .scan_prefix(sp, &[])
                .filter(move |r| !matches!(r, Ok((k, _)) if k.starts_with(&gone.0)))
                .map(move |r: Result<(Vec<u8>, Vec<u8>), StoreError>| r.map(|(k, v)| (sp, k, v)))
        };
        let mut all = meta
            .into_iter()
            .map(Ok)
            .chain(records.into_iter().map(Ok))
            .chain(keep(space::MANIFESTS))
            .chain(keep(space::NOTES))
            .chain(keep(space::LOG));
        self.store.replace_all(&mut all)?;
        Ok(())
    }
}

/// One above every patient key version in use or in the key store.
fn next_version(all: &[(Blind, u32, Vec<u32>)]) -> u32 {
    all.iter()
        .flat_map(|(_, c, vs)| vs.iter().copied().chain([*c]))
        .max()
        .unwrap_or(0)
        + 1
}

/// Opens a sealed key under `old` and seals it again under `new` for epoch `epoch`.
fn rewrap(
    vault_id: &[u8; 16],
    sealed: &[u8],
    kind: Kind,
    binding: &[u8],
    old: &SecretKey,
    epoch: u32,
    new: &SecretKey,
) -> Result<Vec<u8>, Error> {
    let location = if kind == Kind::VaultKeys {
        "vault keys"
    } else {
        "patient key"
    };
    let s = Sealed::parse(sealed).map_err(|e| parse_error(location, e))?;
    let plain = s.open_at(location, kind, old, vault_id, binding)?;
    envelope::seal(kind, epoch, new, vault_id, binding, &plain)
}
