//! Crypto-shredding: a patient's records and keys destroyed so that no copy of the vault taken
//! afterwards can recover them (docs/key-management.md, "Erasing a patient").

use carnet_storage::{SpacedEntry, Store, StoreError};

use super::fence::KeyOp;
use super::logging::Event;
use super::patients::seal_patient;
use super::Vault;
use crate::access::Duty;
use crate::access_log::{outcome, Action};
use crate::envelope::seal_frame;
use crate::model::PatientId;
use crate::records::{
    registry_link, space, Blind, PatientKeyAt, PatientV1, RegistryV1, META_REGISTRY,
};
use crate::sealing::RegistryRecord;
use crate::Error;

impl<S: Store> Vault<S> {
    /// Crypto-shredding: destroys a patient's keys and records so that no copy of the vault
    /// taken afterwards, with any passphrase, can recover them. Rewrites the record store into
    /// a fresh one without the patient and swaps it in, then rewrites the key store without the
    /// patient's keys. O(size of the vault): for the end of a retention period or a lawful
    /// erasure, not for daily use. If an earlier erasure of this patient was interrupted, this
    /// finishes it.
    pub fn erase_patient(&mut self, id: &PatientId) -> Result<(), Error> {
        let result = self
            .require(Duty::Administration)
            .and_then(|()| self.alone(KeyOp::Erase, |v| v.erase_patient_unlogged(id)));
        // The entry carries the registry the rewrite left (format 2), from which verify holds
        // the registry again.
        let mut event = Event::new(Action::PatientErase, Some(id.as_str()), outcome(&result));
        if let Ok(reg) = &result {
            event.registry = reg.clone();
        }
        let logged = self.log_event(&event).and(result.map(|_| ()));
        self.end_key_operation(logged)
    }

    /// Erases the patient; returns the registry left, if the record store was rewritten.
    fn erase_patient_unlogged(&mut self, id: &PatientId) -> Result<Option<RegistryV1>, Error> {
        self.require(Duty::Administration)?;
        let blind = self.keys.blind(id);
        let exists = self.store.get(space::PATIENTS, &blind.0)?.is_some()
            || self.store.get(space::MANIFESTS, &blind.0)?.is_some();
        let keys: Vec<PatientKeyAt> = self
            .keys
            .patient_key_index()
            .into_iter()
            .filter(|at| at.blind == blind)
            .collect();
        if !exists && keys.is_empty() {
            return Err(Error::NoSuchPatient);
        }
        // Logged before anything is destroyed: a log that names a patient whose records are
        // gone must also say that an erasure began (verify holds the log against the records).
        self.log_event(&Event::new(
            Action::PatientErase,
            Some(id.as_str()),
            "started",
        ))?;
        let registry = if exists {
            Some(self.rewrite_without(&blind)?)
        } else {
            None
        };
        self.keys.destroy_patient_keys(&self.store, &keys)?;
        self.chains.forget(&blind);
        Ok(registry)
    }

    /// Rewrites the record store without `gone`'s records, renumbering the registry; returns
    /// the registry it wrote.
    fn rewrite_without(&mut self, gone: &Blind) -> Result<RegistryV1, Error> {
        // The remaining patients, in registry order, with their records re-sealed when their
        // position changes.
        let mut patients: Vec<(u64, Blind, Vec<u8>, PatientV1, u32)> = Vec::new();
        for r in self.patient_records() {
            let (blind, v) = r?;
            if blind == *gone {
                continue;
            }
            let st = self.load_patient(&blind, &v)?;
            patients.push((st.info.seq, blind, v, st.info.clone(), st.keys.version()));
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
                seal_patient(&keys.record, self.vault_id(), blind, &info)?
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
            seal_frame::<RegistryRecord, _>(self.keys.registry()?, self.vault_id(), &(), &reg)?,
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
        Ok(reg)
    }
}
