//! The findings of the adversarial review of concurrent use (ADR 0016), by a storage host that
//! answers the reads' re-check of a manifest with other bytes, or rolls a patient back while
//! verify runs: each now reported as an integrity problem.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test
use super::attacks::{kdf, note, pass, pid, ADMIN};
use super::Vault;
use crate::model::NewPatient;
use crate::records::space;
use crate::Error;
use carnet_storage::{Batch, DocName, EntryIter, MemStore, Space, Store, StoreError};
use std::sync::{Arc, Mutex};

type Hook = Box<dyn FnOnce(&MemStore) + Send>;
#[derive(Default)]
struct Adv {
    inner: MemStore,
    // (manifest key, next get returns garbage?)
    toggle: Mutex<Option<(Vec<u8>, bool)>>,
    on_notes_scan: Mutex<Option<Hook>>,
}
impl Store for Adv {
    fn get(&self, s: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if s == space::MANIFESTS {
            if let Some((k, garbage)) = self.toggle.lock().unwrap().as_mut() {
                if k.as_slice() == key {
                    *garbage = !*garbage;
                    if !*garbage {
                        return Ok(Some(b"not a manifest".to_vec()));
                    }
                }
            }
        }
        self.inner.get(s, key)
    }
    fn scan_prefix(&self, s: Space, prefix: &[u8]) -> EntryIter<'_> {
        if s == space::NOTES && prefix.is_empty() {
            if let Some(h) = self.on_notes_scan.lock().unwrap().take() {
                h(&self.inner);
            }
        }
        self.inner.scan_prefix(s, prefix)
    }
    fn commit(&self, b: Batch) -> Result<(), StoreError> {
        self.inner.commit(b)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn read_doc(&self, n: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read_doc(n)
    }
    fn replace_doc(&self, n: DocName, b: &[u8]) -> Result<(), StoreError> {
        self.inner.replace_doc(n, b)
    }
    fn append_doc(&self, n: DocName, b: &[u8]) -> Result<(), StoreError> {
        self.inner.append_doc(n, b)
    }
    fn replace_all(
        &self,
        r: &mut dyn Iterator<Item = Result<carnet_storage::SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        self.inner.replace_all(r)
    }
}

fn setup() -> (Arc<Adv>, Vault<Arc<Adv>>, Vec<u8>) {
    let store = Arc::new(Adv::default());
    let v = Vault::create_in_format(Arc::clone(&store), "admin", &pass(ADMIN), kdf(), 2).unwrap();
    v.add_patient(NewPatient::new(pid())).unwrap();
    v.add_note(&pid(), note("before")).unwrap();
    let blind = v.keys.blind(&pid()).0.to_vec();
    (store, v, blind)
}

fn flip_first_note(m: &MemStore) {
    let (k, mut val) = m.scan_prefix(space::NOTES, &[]).next().unwrap().unwrap();
    let n = val.len() - 1;
    val[n] ^= 1;
    let mut b = Batch::new();
    b.put(space::NOTES, k, val);
    m.commit(b).unwrap();
}

/// A flipped bit in a note, and a host that answers the re-check of the manifest with other
/// bytes each time: the read reports the tampering (it used to give up with Conflict, exit 6).
#[test]
fn a_tampered_note_stays_an_integrity_failure_when_the_manifest_keeps_changing() {
    let (store, v, blind) = setup();
    flip_first_note(&store.inner);
    assert!(matches!(v.read_notes(&pid()), Err(Error::Integrity(_))));
    *store.toggle.lock().unwrap() = Some((blind, false));
    let r = v.read_notes(&pid());
    assert!(matches!(r, Err(Error::Integrity(_))), "{r:?}");
}

/// The same against verify: a report with the problem, not an error that loses the report.
#[test]
fn verify_reports_a_tampered_note_when_the_manifest_keeps_changing() {
    let (store, v, blind) = setup();
    flip_first_note(&store.inner);
    assert!(!v.verify(&mut |_, _| {}).unwrap().is_ok());
    *store.toggle.lock().unwrap() = Some((blind, false));
    let r = v.verify(&mut |_, _| {}).unwrap();
    assert!(!r.is_ok());
}

/// An import rolled back (the older manifest put back, the imported note deleted) while verify
/// scans the notes: the manifest read again is older, so it is no write that landed; the
/// problem is reported by this verify (it used to pass it, and only the next one saw it).
#[test]
fn a_rollback_during_verify_is_reported_by_it() {
    let (store, v, blind) = setup();
    let m1 = store.inner.get(space::MANIFESTS, &blind).unwrap().unwrap();
    let before: Vec<Vec<u8>> = store
        .inner
        .scan_prefix(space::NOTES, &[])
        .map(|r| r.unwrap().0)
        .collect();
    let mut imp = v.import();
    imp.add(NewPatient::new(pid()), note("imported")).unwrap();
    imp.finish().unwrap();
    let added: Vec<Vec<u8>> = store
        .inner
        .scan_prefix(space::NOTES, &[])
        .map(|r| r.unwrap().0)
        .filter(|k| !before.contains(k))
        .collect();
    assert_eq!(added.len(), 1);
    assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
    let b2 = blind.clone();
    *store.on_notes_scan.lock().unwrap() = Some(Box::new(move |m: &MemStore| {
        let mut b = Batch::new();
        b.put(space::MANIFESTS, b2, m1);
        b.delete(space::NOTES, added[0].clone());
        m.commit(b).unwrap();
    }));
    let first = v.verify(&mut |_, _| {}).unwrap();
    assert!(
        !first.is_ok(),
        "the verify during which it happened reports it"
    );
    assert!(!v.verify(&mut |_, _| {}).unwrap().is_ok());
}

/// Two processes register one new patient at once: each appends a key for its place, and the
/// record that wins may be sealed under the key that is not the last entry (which the key store
/// chooses). The record tells which key is its own: every process reads the patient, before and
/// after a master-key rotation (which re-wraps the other candidates too).
#[test]
fn a_patient_registered_by_two_processes_at_once_opens_everywhere() {
    use crate::records::PatientKeyAt;
    let store = Arc::new(MemStore::new());
    let a = Vault::create_in_format(Arc::clone(&store), "admin", &pass(ADMIN), kdf(), 2).unwrap();
    let unlock = || Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
    let b = unlock();
    // B passed its "not registered yet" check and appended its key just after A appended its
    // own; A's record won the race (B's commit then finds the patient registered).
    a.add_patient(NewPatient::new(pid())).unwrap();
    let at = PatientKeyAt {
        blind: b.keys.blind(&pid()),
        version: b.keys.patient_key_floor().max(1),
    };
    let (_, wrapped) = b.keys.new_patient_key(at).unwrap();
    b.keys
        .append_patient_keys(&b.store, vec![(at, wrapped)])
        .unwrap();
    a.add_note(&pid(), note("from A")).unwrap();

    // B (which chose its own key), a fresh process, and A again all read the patient.
    assert_eq!(b.notes(&pid()).unwrap().len(), 1);
    let c = unlock();
    assert_eq!(c.notes(&pid()).unwrap().len(), 1);
    assert!(c.verify(&mut |_, _| {}).unwrap().is_ok());
    a.add_note(&pid(), note("again")).unwrap();
    // A rotation by a process that never read the patient keeps the key its record needs.
    let mut d = unlock();
    d.rotate_master(&mut |_, _| {}).unwrap();
    drop(d);
    let e = unlock();
    assert_eq!(e.notes(&pid()).unwrap().len(), 2);
    assert!(e.verify(&mut |_, _| {}).unwrap().is_ok());
    drop(e);
    // A patient-key rotation and a revocation in processes that never read the patient.
    let mut f = unlock();
    f.rotate_patients(super::Patients::One(&pid()), &mut |_, _| {})
        .unwrap();
    drop(f);
    let mut g = unlock();
    g.add_user(
        "bob",
        crate::access::Role::Clinician,
        &pass(super::attacks::BOB),
    )
    .unwrap();
    drop(g);
    let mut h = unlock();
    h.remove_user("bob", &mut |_, _| {}).unwrap();
    drop(h);
    let i = unlock();
    assert_eq!(i.notes(&pid()).unwrap().len(), 2);
    assert!(i.verify(&mut |_, _| {}).unwrap().is_ok());
}

/// A record planted in the manifests under a registered patient's blind followed by more bytes
/// belongs to no patient: verify calls it an orphan (it used to look only at the first 32
/// bytes of the key).
#[test]
fn a_manifest_key_longer_than_a_blind_is_an_orphan() {
    let (store, v, blind) = setup();
    let planted = [&blind[..], b"-extra"].concat();
    let mut b = Batch::new();
    b.put(space::MANIFESTS, planted, b"planted".to_vec());
    store.inner.commit(b).unwrap();
    let report = v.verify(&mut |_, _| {}).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind() == crate::error::ProblemKind::Orphan),
        "{:?}",
        report.problems
    );
}
