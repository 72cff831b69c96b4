//! Patient references (ADR 0021): giving patients registered before references one, finding a
//! patient by its reference.

use std::collections::HashMap;
use std::sync::MutexGuard;

use carnet_storage::{Batch, Store};

use super::patients::seal_patient;
use super::write::Txn;
use super::Vault;
use crate::access::Duty;
use crate::access_log::Action;
use crate::error::{integrity, ProblemKind};
use crate::model::{PatientId, PatientRef};
use crate::records::{space, Blind};
use crate::Error;

/// Patients given a reference per commit by [`Vault::assign_references`].
const ASSIGN_BATCH: usize = 500;

/// Where this `Vault` found each reference: blinds only (no identifier), as of one state of
/// the registry.
#[derive(Default)]
pub(super) struct RefIndex {
    by_ref: HashMap<[u8; 16], Blind>,
    /// The registry (count and chain head) when the index was built: `None` before.
    built_at: Option<(u64, [u8; 32])>,
    /// Patients without a reference when it was built (another process may give them one).
    unreferenced: usize,
}

impl<S: Store> Vault<S> {
    /// Gives every patient registered before references (ADR 0021) a random one, in atomic
    /// batches; returns how many it gave. Patients registered since have one already. Another
    /// process giving the same patient a reference at the same time loses nothing: one
    /// reference wins and both read it. Not logged (it reads or changes no clinical data);
    /// refused in a format-1 vault ([`Error::InvalidArgument`]: upgrade it first).
    pub fn assign_references(&self) -> Result<u64, Error> {
        self.require_writable()?;
        if self.keys.format() < 2 {
            return Err(Error::InvalidArgument(
                "patient references need a format-2 vault (run `carnet key upgrade`)".into(),
            ));
        }
        let mut given = 0u64;
        loop {
            let n = self.retrying(|| {
                let mut txn = Txn::new(self);
                let mut staged = 0;
                for record in self.patient_records() {
                    let (blind, stored) = record?;
                    let mut st = self.load_patient(&blind, &stored)?;
                    if st.info.reference.is_some() {
                        continue;
                    }
                    st.info.reference = Some(PatientRef::random()?.0);
                    let sealed = seal_patient(&st.keys.record, self.vault_id(), &blind, &st.info)?;
                    stage_rewrite(&mut txn.batch, &blind, stored, sealed);
                    staged += 1;
                    if staged == ASSIGN_BATCH {
                        break;
                    }
                }
                txn.commit()?;
                Ok(staged)
            })?;
            given += n as u64;
            if n < ASSIGN_BATCH {
                return Ok(given);
            }
        }
    }

    /// The reference of a patient, given one first if it has none (a patient registered
    /// before references). Logged as [`Action::PatientShow`]: it tells whether the patient
    /// exists.
    pub fn patient_ref(&self, id: &PatientId) -> Result<PatientRef, Error> {
        self.logged(Action::PatientShow, Some(id), None, || {
            self.require(Duty::Clinical)?;
            if let Some(r) = self.find_patient(id)?.info.reference {
                return Ok(PatientRef(r));
            }
            self.assign_references()?;
            self.find_patient(id)?
                .info
                .reference
                .map(PatientRef)
                .ok_or(Error::Internal("a reference was just given"))
        })
    }

    /// The patient a reference names, or [`Error::NoSuchPatient`]. What is returned was read
    /// from the patient's own record (authenticated): a reference the index remembers for a
    /// place that now holds another reference names nobody. Not logged: the operation that
    /// follows, on the identifier returned, is. Auditors may too (to filter the access log,
    /// which names patients by identifier anyway).
    pub fn patient_by_ref(&self, reference: &PatientRef) -> Result<PatientId, Error> {
        self.require(Duty::Clinical)
            .or_else(|_| self.require(Duty::Audit))?;
        let mut index = self.ref_index();
        if let Some(blind) = index.by_ref.get(&reference.0).copied() {
            if let Some(id) = self.named_by(&blind, reference)? {
                return Ok(id);
            }
        }
        // Not where the index says, or not in it: read every record again only if patients
        // were registered or erased since it was built, or some had no reference then.
        let (registry, _) = self.load_registry()?;
        let now = (registry.patients, registry.head);
        if index.built_at == Some(now) && index.unreferenced == 0 {
            return Err(Error::NoSuchPatient);
        }
        let mut rebuilt = RefIndex {
            built_at: Some(now),
            ..RefIndex::default()
        };
        for record in self.patient_records() {
            let (blind, stored) = record?;
            match self.load_patient(&blind, &stored)?.info.reference {
                Some(r) => {
                    rebuilt.by_ref.insert(r, blind);
                }
                None => rebuilt.unreferenced += 1,
            }
        }
        *index = rebuilt;
        match index.by_ref.get(&reference.0).copied() {
            Some(blind) => self
                .named_by(&blind, reference)?
                .ok_or(Error::NoSuchPatient),
            None => Err(Error::NoSuchPatient),
        }
    }

    /// The identifier of the patient at `blind` if its record holds `reference`.
    fn named_by(&self, blind: &Blind, reference: &PatientRef) -> Result<Option<PatientId>, Error> {
        let Some(stored) = self.store.get(space::PATIENTS, &blind.0)? else {
            return Ok(None);
        };
        let st = self.load_patient(blind, &stored)?;
        if st.info.reference != Some(reference.0) {
            return Ok(None);
        }
        PatientId::from_stored(st.info.id.clone())
            .map(Some)
            .map_err(|_| {
                integrity(
                    st.location(),
                    ProblemKind::Malformed,
                    "invalid stored field",
                )
            })
    }

    fn ref_index(&self) -> MutexGuard<'_, RefIndex> {
        // Poisoning is harmless: the index is rebuilt from the store when it misses.
        self.refs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Stages a patient record sealed again (with a reference), on the condition that the
/// record is still what was read.
fn stage_rewrite(batch: &mut Batch, blind: &Blind, stored: Vec<u8>, sealed: Vec<u8>) {
    batch.require(space::PATIENTS, blind.0.to_vec(), Some(stored));
    batch.put(space::PATIENTS, blind.0.to_vec(), sealed);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test
    use super::super::attacks::{pass, pid, vault, ADMIN};
    use super::*;
    use crate::model::NewPatient;
    use crate::Patients;
    use std::sync::Arc;

    /// Strips `id`'s reference, as a patient registered before references was stored.
    fn unreference<S: Store>(v: &Vault<S>, id: &PatientId) {
        let st = v.find_patient(id).unwrap();
        let mut info = st.info.clone();
        info.reference = None;
        let sealed = seal_patient(&st.keys.record, v.vault_id(), &st.blind, &info).unwrap();
        assert_eq!(sealed[2], 1, "format 1's byte without a reference");
        let mut b = Batch::new();
        b.put(space::PATIENTS, st.blind.0.to_vec(), sealed);
        v.store.commit(b).unwrap();
    }

    #[test]
    fn a_new_patient_has_a_random_reference_that_finds_it_and_nothing_else_does() {
        let (_, v) = vault(2);
        let other = PatientId::new("p2").unwrap();
        let r2 = v
            .add_patient(NewPatient::new(other.clone()))
            .unwrap()
            .unwrap();
        let r1 = v.patient_ref(&pid()).unwrap();
        assert_ne!(r1, r2);
        assert_eq!(v.patient_by_ref(&r1).unwrap(), pid());
        assert_eq!(v.patient_by_ref(&r2).unwrap(), other);
        assert_eq!(v.patient(&other).unwrap().reference, Some(r2));
        let unknown: PatientRef = "00112233445566778899aabbccddeeff".parse().unwrap();
        assert!(matches!(
            v.patient_by_ref(&unknown),
            Err(Error::NoSuchPatient)
        ));
        assert!(matches!(
            "nope".parse::<PatientRef>(),
            Err(Error::NoSuchPatient)
        ));
        // Stored with the record's byte 3, and nowhere in clear.
        let st = v.find_patient(&other).unwrap();
        let stored = v.store.get(space::PATIENTS, &st.blind.0).unwrap().unwrap();
        assert_eq!(stored[2], 3);
        for s in crate::records::space::ALL {
            for e in v.store.scan_prefix(s, &[]) {
                let (k, val) = e.unwrap();
                for bytes in [&k, &val] {
                    assert!(!bytes.windows(16).any(|w| w == r2.as_bytes()));
                }
            }
        }
    }

    #[test]
    fn a_patient_registered_before_references_gets_one_that_stays_through_rotations() {
        let (store, mut v) = vault(2);
        unreference(&v, &pid());
        assert_eq!(v.patient(&pid()).unwrap().reference, None);
        // Another process opened before the reference was given finds it by it afterwards.
        let other = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
        let unknown: PatientRef = "00112233445566778899aabbccddeeff".parse().unwrap();
        assert!(matches!(
            other.patient_by_ref(&unknown),
            Err(Error::NoSuchPatient)
        ));
        assert_eq!(v.assign_references().unwrap(), 1);
        assert_eq!(v.assign_references().unwrap(), 0);
        let r = v.patient_ref(&pid()).unwrap();
        assert_eq!(other.patient_by_ref(&r).unwrap(), pid());
        // Re-sealed under new patient keys and after a revocation: the same reference.
        v.rotate_patients(Patients::All, &mut |_, _| {}).unwrap();
        v.remove_user("bob", &mut |_, _| {}).unwrap();
        let again = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
        assert_eq!(again.patient_ref(&pid()).unwrap(), r);
        assert_eq!(again.patient_by_ref(&r).unwrap(), pid());
        assert!(again.verify(&mut |_, _| {}).unwrap().is_ok());
    }

    #[test]
    fn a_reference_put_on_another_patients_place_names_nobody() {
        let (_, v) = vault(2);
        let other = PatientId::new("p2").unwrap();
        let r2 = v
            .add_patient(NewPatient::new(other.clone()))
            .unwrap()
            .unwrap();
        let r1 = v.patient_ref(&pid()).unwrap();
        let (b1, b2) = (v.keys.blind(&pid()), v.keys.blind(&other));
        // The host swaps the two patient records: neither opens in the other's place.
        let s1 = v.store.get(space::PATIENTS, &b1.0).unwrap().unwrap();
        let s2 = v.store.get(space::PATIENTS, &b2.0).unwrap().unwrap();
        let mut b = Batch::new();
        b.put(space::PATIENTS, b1.0.to_vec(), s2);
        b.put(space::PATIENTS, b2.0.to_vec(), s1);
        v.store.commit(b).unwrap();
        assert!(matches!(v.patient_by_ref(&r1), Err(Error::Integrity(_))));
        assert!(matches!(v.patient_by_ref(&r2), Err(Error::Integrity(_))));
    }

    #[test]
    fn a_format_1_vault_has_no_references() {
        let (_, v) = vault(1);
        assert_eq!(v.patient(&pid()).unwrap().reference, None);
        assert!(matches!(
            v.assign_references(),
            Err(Error::InvalidArgument(_))
        ));
    }
}
