//! The state of a vault's keys: epochs, KDF settings, which key versions records use, and any
//! long operation left unfinished. Reads record headers only; decrypts nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use carnet_storage::Store;

use super::Vault;
use crate::access::Duty;
use crate::access_log::Action;
use crate::envelope::Sealed;
use crate::keyring::KdfParams;
use crate::records::{space, Blind, JobSlot, NoteAt};
use crate::unfinished::Unfinished;
use crate::Error;

/// The state of a vault's keys, as [`Vault::key_status`] reports it.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// Whether a rotation of every patient's key was interrupted.
    pub all_patients_rotation_unfinished: bool,
    /// Wrapped keys of no registered patient (left by interrupted registrations or erasures).
    pub unused_keys: u64,
    /// The vault's format (1 or 2).
    pub format: u16,
    /// Format 2: slots carried over from format 1 that their users have not reopened since:
    /// open to master-key injection until each user unlocks once.
    pub legacy_slots: u64,
    /// Format 2: slots that hold an older keyring key than the newest (their users have not
    /// unlocked since a revocation or a passphrase change): until each of those users unlocks
    /// once, whoever was revoked could still inject a master key against their slot.
    pub slots_behind: u64,
    /// Every unfinished operation; running the same operation again finishes each.
    pub unfinished: Vec<Unfinished>,
}

impl<S: Store> Vault<S> {
    /// The key operations left unfinished that every later write would undermine: a
    /// master-key rotation and a user's revocation (in that order), and a rotation of every
    /// patient's key. Cheap (no record is decrypted but the job records); for a warning at
    /// every unlock. [`Vault::key_status`] also counts single patients' rotations.
    pub fn unfinished(&self) -> Result<Vec<Unfinished>, Error> {
        let mut out = Vec::new();
        if let Some(e) = self.keys.pending_epoch() {
            out.push(Unfinished::MasterRotation { to_epoch: e });
        }
        if self.revocation_target()?.is_some() {
            out.push(Unfinished::Revocation);
        }
        if self.load_job(JobSlot::RotateAllPatients)?.is_some() {
            out.push(Unfinished::AllPatientsRotation);
        }
        if self.upgrade_unfinished()? {
            out.push(Unfinished::Upgrade);
        }
        Ok(out)
    }

    /// Whether an upgrade to format 2 is unfinished: begun (a keyring key among the vault keys
    /// of a version-1 keyring), its baseline unwritten, or its job record left.
    fn upgrade_unfinished(&self) -> Result<bool, Error> {
        Ok(self.keys.upgrade_started()
            || self.keys.baseline_pending()
            || self.load_job(JobSlot::Upgrade)?.is_some())
    }

    /// Fails with [`Error::Unfinished`] while a master-key rotation or a user's revocation is
    /// unfinished: what is written then would be sealed under keys it retires.
    pub(super) fn require_no_retiring_keys(&self) -> Result<(), Error> {
        if let Some(e) = self.keys.pending_epoch() {
            return Err(Error::Unfinished(Unfinished::MasterRotation {
                to_epoch: e,
            }));
        }
        if self.revocation_target()?.is_some() {
            return Err(Error::Unfinished(Unfinished::Revocation));
        }
        Ok(())
    }

    /// The state of the vault's keys: epochs, KDF settings, which key versions records use,
    /// and any rotation left unfinished. Reads record headers only; decrypts nothing.
    pub fn key_status(&self) -> Result<KeyStatus, Error> {
        let result = self.key_status_unlogged();
        self.logged_result(Action::KeyStatus, None, result)
    }

    fn key_status_unlogged(&self) -> Result<KeyStatus, Error> {
        self.require(Duty::Administration)?;
        let versions = self.patient_versions()?;
        let current: HashMap<Blind, u32> = versions.iter().map(|(b, c, _)| (*b, *c)).collect();
        let mut per_version: BTreeMap<u32, u64> = BTreeMap::new();
        let mut mixed: HashSet<Blind> = HashSet::new();
        for (b, c, vs) in &versions {
            // The patient record and the manifest.
            *per_version.entry(*c).or_default() += 2;
            // A key version newer than the record's: a rotation stopped before its end.
            if vs.iter().any(|v| v > c) {
                mixed.insert(*b);
            }
        }
        for r in self.store.scan_prefix(space::NOTES, &[]) {
            let (k, v) = r?;
            let (Some(at), Ok(sealed)) = (NoteAt::parse(&k), Sealed::parse(&v)) else {
                continue;
            };
            *per_version.entry(sealed.key_version).or_default() += 1;
            // A note under a newer version than its patient's record: a rotation stopped
            // before its end. (Older versions are normal after a revocation.)
            if current
                .get(&at.blind)
                .is_some_and(|c| sealed.key_version > *c)
            {
                mixed.insert(at.blind);
            }
        }
        let index = self.keys.patient_key_index();
        let unused = index
            .iter()
            .filter(|at| !current.contains_key(&at.blind))
            .count() as u64;
        let key_store_epoch = self.keys.index_epoch();
        let mut keys_per_epoch = BTreeMap::new();
        keys_per_epoch.insert(key_store_epoch, index.len() as u64 + 1);
        let all_patients = self.load_job(JobSlot::RotateAllPatients)?.is_some();
        let mut unfinished = Vec::new();
        if let Some(e) = self.keys.pending_epoch() {
            unfinished.push(Unfinished::MasterRotation { to_epoch: e });
        }
        if all_patients {
            unfinished.push(Unfinished::AllPatientsRotation);
        }
        if self.revocation_target()?.is_some() {
            unfinished.push(Unfinished::Revocation);
        }
        if self.upgrade_unfinished()? {
            unfinished.push(Unfinished::Upgrade);
        }
        if !mixed.is_empty() {
            unfinished.push(Unfinished::PatientRotations {
                patients: mixed.len() as u64,
            });
        }
        Ok(KeyStatus {
            epoch: self.keys.epoch(),
            pending_epoch: self.keys.pending_epoch(),
            key_store_epoch,
            kdf: self
                .keys
                .slot_kdf(self.session.user())
                .ok_or(Error::UnknownUser)?,
            slots: self.keys.slot_count(),
            keys_per_epoch,
            records_per_patient_key_version: per_version,
            patients_unfinished: mixed.len() as u64,
            all_patients_rotation_unfinished: all_patients,
            unused_keys: unused,
            format: self.keys.format(),
            legacy_slots: self.keys.legacy_slots(),
            slots_behind: self.keys.slots_behind(),
            unfinished,
        })
    }
}
