//! Opening a patient (its record, the key version that record names, and its manifest), and
//! the registry of patients.

use carnet_storage::Store;

use super::Vault;
use crate::envelope::{
    decode_meta, malformed_payload, open_frame, open_record, parse_error, seal_frame,
    seal_frame_as, Sealed, FORMAT_1, FORMAT_3,
};
use crate::error::{integrity, ProblemKind};
use crate::keys::{PatientKeys, PatientRecordKey, RegistryKey};
use crate::model::{BirthDate, Patient, PatientId, PatientRef, Timestamp};
use crate::records::{
    space, Blind, ManifestV1, PatientKeyAt, PatientV1, PatientV3, RegistryV1, META_REGISTRY,
};
use crate::sealing::{ManifestRecord, PatientRecord, RegistryRecord};
use crate::secret::SecretBytes;
use crate::Error;

/// Opens a patient's record with a candidate's keys.
type OpenRecord<'a> = dyn Fn(&PatientKeys) -> Result<(PatientV1, SecretBytes), Error> + 'a;

/// A patient's decrypted record, keys and manifest.
pub(super) struct PatientState {
    pub(super) blind: Blind,
    pub(super) keys: PatientKeys,
    pub(super) info: PatientV1,
    pub(super) manifest: ManifestV1,
    /// The manifest's bytes as stored now (`None`: not stored yet), for compare-and-swap.
    pub(super) manifest_stored: Option<Vec<u8>>,
    /// Whether the manifest changed since it was read (a write must seal it again).
    pub(super) dirty: bool,
}

impl PatientState {
    /// Where integrity errors about this patient's record point.
    pub(super) fn location(&self) -> String {
        patient_location(&self.blind)
    }

    /// The public view of the patient.
    pub(super) fn to_patient(&self) -> Result<Patient, Error> {
        let bad = || {
            integrity(
                self.location(),
                ProblemKind::Malformed,
                "invalid stored field",
            )
        };
        Ok(Patient {
            id: PatientId::from_stored(self.info.id.clone()).map_err(|_| bad())?,
            name: self.info.name.clone(),
            birth_date: match self.info.birth_date.as_deref() {
                Some(d) => Some(BirthDate::from_stored(d).map_err(|_| bad())?),
                None => None,
            },
            created_at: Timestamp::from_unix_millis(self.info.created_at),
            notes: self.manifest.notes,
            reference: self.info.reference.map(PatientRef),
        })
    }
}

/// Seals a patient's record: as format 3 with its reference (ADR 0021), else with format 1's
/// payload and byte (format-1 vaults, and patients not given a reference yet).
pub(super) fn seal_patient(
    key: &PatientRecordKey,
    vault_id: &[u8; 16],
    blind: &Blind,
    info: &PatientV1,
) -> Result<Vec<u8>, Error> {
    match info.reference {
        None => seal_frame::<PatientRecord, _>(key, vault_id, blind, info),
        Some(reference) => {
            let v3 = PatientV3 {
                seq: info.seq,
                id: info.id.clone(),
                name: info.name.clone(),
                birth_date: info.birth_date.clone(),
                created_at: info.created_at,
                reference,
            };
            seal_frame_as::<PatientRecord, _>(FORMAT_3, key, vault_id, blind, &v3)
        }
    }
}

/// Opens a patient's record of format 1 or 3; returns it with the whole frame.
pub(super) fn open_patient(
    location: &str,
    stored: &[u8],
    key: &PatientRecordKey,
    vault_id: &[u8; 16],
    blind: &Blind,
) -> Result<(PatientV1, SecretBytes), Error> {
    let (format, plain) = open_record::<PatientRecord>(location, stored, key, vault_id, blind)?;
    let info = match format {
        FORMAT_1 => decode_meta::<PatientV1>(location, &plain)?,
        FORMAT_3 => {
            let v3 = decode_meta::<PatientV3>(location, &plain)?;
            PatientV1 {
                seq: v3.seq,
                id: v3.id.clone(),
                name: v3.name.clone(),
                birth_date: v3.birth_date.clone(),
                created_at: v3.created_at,
                reference: Some(v3.reference),
            }
        }
        _ => return Err(malformed_payload(location)),
    };
    Ok((info, plain))
}

/// `patient BLIND`, as integrity errors name a patient record.
pub(super) fn patient_location(blind: &Blind) -> String {
    format!("patient {}", blind.short())
}

/// `manifest BLIND`, as integrity errors name a manifest.
pub(super) fn manifest_location(blind: &Blind) -> String {
    format!("manifest {}", blind.short())
}

impl<S: Store> Vault<S> {
    /// The record keys of one version of a patient's key.
    /// A key missing from the key store read at unlock may have been appended since by another
    /// process sharing the store: the key store is read again once before it is called missing.
    pub(super) fn patient_keys(&self, blind: &Blind, version: u32) -> Result<PatientKeys, Error> {
        let at = PatientKeyAt {
            blind: *blind,
            version,
        };
        match self.keys.patient_keys(at) {
            // Looked up again whatever the refresh found: another thread of this `Vault` (a
            // search runs on every core) may have read the new key in between, and then this
            // refresh finds nothing new although the key is there now.
            Err(Error::Integrity(e)) if e.kind() == ProblemKind::Missing => {
                self.keys.refresh_patient_keys(&self.store)?;
                self.keys.patient_keys(at)
            }
            r => r,
        }
    }

    /// Decrypts a patient's record (`stored`, under `blind`) and manifest.
    pub(super) fn load_patient(&self, blind: &Blind, stored: &[u8]) -> Result<PatientState, Error> {
        let location = patient_location(blind);
        let sealed = Sealed::parse(stored).map_err(|e| parse_error(&location, e))?;
        // Format 2: every patient was brought to the last revocation's key version; a record
        // under an older one was put back from before it (later notes would be sealed under a
        // key the removed user holds).
        if sealed.key_version < self.keys.patient_key_floor() {
            return Err(integrity(
                &location,
                ProblemKind::RolledBack,
                format!(
                    "sealed under patient key version {} where every patient is at {} or later since the last revocation (put back from before it)",
                    sealed.key_version,
                    self.keys.patient_key_floor()
                ),
            ));
        }
        let keys = self.patient_keys(blind, sealed.key_version)?;
        let open = |keys: &PatientKeys| {
            open_patient(&location, stored, &keys.record, self.vault_id(), blind)
        };
        let (keys, info) = match open(&keys) {
            Ok((info, _)) => (keys, info),
            Err(Error::Integrity(e)) => {
                self.other_patient_key(blind, sealed.key_version, &open, e)?
            }
            Err(e) => return Err(e),
        };
        let mlocation = manifest_location(blind);
        let mstored = self
            .store
            .get(space::MANIFESTS, &blind.0)?
            .ok_or_else(|| integrity(&mlocation, ProblemKind::Missing, "missing"))?;
        let msealed = Sealed::parse(&mstored).map_err(|e| parse_error(&mlocation, e))?;
        if msealed.key_version != keys.version() {
            return Err(integrity(
                &mlocation,
                ProblemKind::Moved,
                "sealed under another patient key version",
            ));
        }
        let (manifest, _) = open_frame::<ManifestRecord, ManifestV1>(
            &mlocation,
            &mstored,
            &keys.manifest,
            self.vault_id(),
            blind,
        )?;
        Ok(PatientState {
            blind: *blind,
            keys,
            info,
            manifest,
            manifest_stored: Some(mstored),
            dirty: false,
        })
    }

    /// When the chosen key of a patient's place does not open its record: another key the key
    /// store holds for that place (two processes registered the patient at once, and the record
    /// that won is sealed under the other's key). If none opens it, the record's problem `e` is
    /// reported.
    fn other_patient_key(
        &self,
        blind: &Blind,
        version: u32,
        open: &OpenRecord<'_>,
        e: crate::error::IntegrityError,
    ) -> Result<(PatientKeys, PatientV1), Error> {
        let at = PatientKeyAt {
            blind: *blind,
            version,
        };
        match self.candidate_opening(at, open)? {
            Some((keys, (info, _))) => Ok((keys, info)),
            None => Err(Error::Integrity(e)),
        }
    }

    /// The keys of `blind` at `version` under which `open` succeeds (a note sealed under that
    /// version), with what it opened: the chosen key, else a candidate, chosen from then on.
    /// When none does, the chosen key's failure.
    pub(super) fn patient_keys_opening<T>(
        &self,
        blind: &Blind,
        version: u32,
        open: &dyn Fn(&PatientKeys) -> Result<T, Error>,
    ) -> Result<(PatientKeys, T), Error> {
        let keys = self.patient_keys(blind, version)?;
        let failure = match open(&keys) {
            Ok(t) => return Ok((keys, t)),
            Err(Error::Integrity(e)) => e,
            Err(e) => return Err(e),
        };
        let at = PatientKeyAt {
            blind: *blind,
            version,
        };
        self.candidate_opening(at, open)?
            .ok_or(Error::Integrity(failure))
    }

    /// The candidate key of `at` (`KeyStore::earlier`) under which `open` succeeds, with what it
    /// opened, chosen from then on; the key store is read again once if none of those known does.
    fn candidate_opening<T>(
        &self,
        at: PatientKeyAt,
        open: &dyn Fn(&PatientKeys) -> Result<T, Error>,
    ) -> Result<Option<(PatientKeys, T)>, Error> {
        for attempt in 0..2 {
            for w in self.keys.patient_key_candidates(&at) {
                let Ok(key) = self.keys.open_patient_key(&at, &w) else {
                    continue;
                };
                let keys = key.derive();
                if let Ok(t) = open(&keys) {
                    self.keys.choose_patient_key(at, w);
                    return Ok(Some((keys, t)));
                }
            }
            if attempt == 0 {
                // Tried again even if this refresh adds nothing: another thread may have.
                self.keys.refresh_patient_keys(&self.store)?;
            }
        }
        Ok(None)
    }

    /// The patient registered as `id`.
    pub(super) fn find_patient(&self, id: &PatientId) -> Result<PatientState, Error> {
        let blind = self.keys.blind(id);
        let Some(stored) = self.store.get(space::PATIENTS, &blind.0)? else {
            // Unknown, unless the patient's other records say it was registered.
            if self.store.get(space::MANIFESTS, &blind.0)?.is_some() {
                return Err(integrity(
                    patient_location(&blind),
                    ProblemKind::Missing,
                    "missing (its manifest exists)",
                ));
            }
            return Err(Error::NoSuchPatient);
        };
        let st = self.load_patient(&blind, &stored)?;
        if st.info.id != id.as_str() {
            return Err(integrity(
                st.location(),
                ProblemKind::Moved,
                "identifier mismatch",
            ));
        }
        Ok(st)
    }

    /// Every stored patient record, in storage order, with its blind (still sealed).
    pub(super) fn patient_records(
        &self,
    ) -> impl Iterator<Item = Result<(Blind, Vec<u8>), Error>> + '_ {
        self.store.scan_prefix(space::PATIENTS, &[]).map(|r| {
            let (k, v) = r?;
            let blind = Blind::from_slice(&k).ok_or_else(|| {
                integrity("patients", ProblemKind::Malformed, "malformed storage key")
            })?;
            Ok((blind, v))
        })
    }

    /// Every registered patient, in storage order.
    pub(super) fn all_patients(&self) -> Result<Vec<PatientState>, Error> {
        self.patient_records()
            .map(|r| r.and_then(|(blind, v)| self.load_patient(&blind, &v)))
            .collect()
    }

    /// The registry and its stored bytes.
    pub(super) fn load_registry(&self) -> Result<(RegistryV1, Vec<u8>), Error> {
        let stored = self
            .store
            .get(space::META, META_REGISTRY)?
            .ok_or_else(|| integrity("registry", ProblemKind::Missing, "missing"))?;
        let (reg, _) = open_frame::<RegistryRecord, RegistryV1>(
            "registry",
            &stored,
            self.registry_key_of("registry", &stored)?,
            self.vault_id(),
            &(),
        )?;
        Ok((reg, stored))
    }

    /// The registry key a stored registry, users or job record names in its header.
    pub(super) fn registry_key_of(
        &self,
        location: &str,
        stored: &[u8],
    ) -> Result<&RegistryKey, Error> {
        let sealed = Sealed::parse(stored).map_err(|e| parse_error(location, e))?;
        self.keys.registry_key(sealed.key_version)
    }
}
