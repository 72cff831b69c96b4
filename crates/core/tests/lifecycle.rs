//! Key lifecycle over the memory backend: rotations keep every note byte-identical and touch
//! only what they must; a failure injected at every write leaves a readable vault that the
//! same operation, run again, finishes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;

use carnet_core::{
    Error, KdfParams, NewNote, NewPatient, NoteBody, NoteId, Passphrase, PatientId, Patients, Vault,
};
use carnet_storage::{FaultyStore, MemStore, Space, Store};

const PASS: &str = "correct horse battery staple";
const NEW_PASS: &str = "a completely different passphrase";
const SPACES: [&str; 5] = ["meta", "patients", "manifests", "notes", "log"];

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_string())
}

fn pid(i: usize) -> PatientId {
    PatientId::new(format!("patient-{i}")).unwrap()
}

/// A vault of `patients` patients with `notes` notes each (the first one amended).
fn populate<S: Store>(v: &Vault<S>, patients: usize, notes: usize) {
    let mut imp = v.import();
    for p in 0..patients {
        for n in 0..notes {
            let body = NoteBody::new(format!("patient {p} note {n}").into_bytes()).unwrap();
            imp.add(NewPatient::new(pid(p)), NewNote::new(body))
                .unwrap();
        }
    }
    imp.finish().unwrap();
    for p in 0..patients {
        let first = v.notes(&pid(p)).unwrap()[0].id;
        v.amend_note(
            &pid(p),
            &first,
            NoteBody::new(format!("patient {p} amended").into_bytes()).unwrap(),
            None,
        )
        .unwrap();
    }
}

/// Every version of every note: (patient, note, version) -> body.
fn contents<S: Store>(v: &Vault<S>) -> BTreeMap<(String, NoteId, u32), Vec<u8>> {
    let mut out = BTreeMap::new();
    for p in v.patients().unwrap() {
        for n in v.notes(&p.id).unwrap() {
            for h in v.note_history(&p.id, &n.id).unwrap() {
                out.insert(
                    (p.id.as_str().to_string(), h.id, h.version),
                    h.body.unwrap().as_bytes().to_vec(),
                );
            }
        }
    }
    out
}

fn records(s: &MemStore) -> BTreeMap<(String, Vec<u8>), Vec<u8>> {
    let mut out = BTreeMap::new();
    for name in SPACES {
        for r in s.scan_prefix(Space::new(name), &[]) {
            let (k, v) = r.unwrap();
            out.insert((name.to_string(), k), v);
        }
    }
    out
}

/// Whether a record is the access log's (its head or an entry), which every operation adds
/// to, or the fence of key operations, which every key operation moves (ADR 0019).
fn is_log(k: &(String, Vec<u8>)) -> bool {
    k.0 == "log" || (k.0 == "meta" && (k.1 == b"log-head" || k.1 == b"fence"))
}

fn changed(
    a: &BTreeMap<(String, Vec<u8>), Vec<u8>>,
    b: &BTreeMap<(String, Vec<u8>), Vec<u8>>,
) -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<_> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(k) != b.get(k) && !is_log(k))
        .collect()
}

fn kdf() -> KdfParams {
    KdfParams::new(8, 1, 1).unwrap()
}

#[test]
fn rotate_master_rewrites_no_record_and_keeps_every_note() {
    let mem = Arc::new(MemStore::new());
    let mut v = Vault::create(mem.clone(), "admin", &pass(PASS), kdf()).unwrap();
    populate(&v, 40, 5);
    let before_notes = contents(&v);
    let before = records(&mem);
    let r = v.rotate_master(&mut |_, _| {}).unwrap();
    assert_eq!(
        (
            r.from_epoch,
            r.to_epoch,
            r.keys_rewrapped,
            r.notes_rewritten
        ),
        (1, 2, 41, 0)
    );
    assert!(
        changed(&before, &records(&mem)).is_empty(),
        "no record of the record store changed"
    );
    assert_eq!(contents(&v), before_notes);
    drop(v);
    let v = Vault::unlock(mem.clone(), "admin", &pass(PASS)).unwrap();
    assert_eq!(v.epoch(), 2);
    assert_eq!(contents(&v), before_notes);
    assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
    assert!(v.key_status().unwrap().unfinished.is_empty());
}

#[test]
fn rotate_one_patient_touches_only_that_patient() {
    let mem = Arc::new(MemStore::new());
    let mut v = Vault::create(mem.clone(), "admin", &pass(PASS), kdf()).unwrap();
    populate(&v, 10, 4);
    let before_notes = contents(&v);
    let before = records(&mem);
    let r = v
        .rotate_patients(Patients::One(&pid(3)), &mut |_, _| {})
        .unwrap();
    assert_eq!(
        (r.patients, r.records_rewritten, r.keys_destroyed),
        (1, 5 + 2, 1)
    );
    let blind_of_changes: std::collections::BTreeSet<Vec<u8>> = changed(&before, &records(&mem))
        .into_iter()
        .map(|(_, k)| k[..32].to_vec())
        .collect();
    assert_eq!(
        blind_of_changes.len(),
        1,
        "only one patient's records changed"
    );
    assert_eq!(
        changed(&before, &records(&mem)).len(),
        5 + 2,
        "its notes, record and manifest"
    );
    assert_eq!(contents(&v), before_notes);
    let st = v.key_status().unwrap();
    assert_eq!(st.records_per_patient_key_version.get(&2), Some(&7));
    assert!(st.unfinished.is_empty());

    let r = v.rotate_patients(Patients::All, &mut |_, _| {}).unwrap();
    assert_eq!(r.patients, 10);
    assert_eq!(contents(&v), before_notes);
    assert_eq!(
        v.key_status()
            .unwrap()
            .records_per_patient_key_version
            .len(),
        1,
        "one version left"
    );
    assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
}

#[test]
fn change_passphrase_replaces_the_slot() {
    let mem = Arc::new(MemStore::new());
    let mut v = Vault::create(mem.clone(), "admin", &pass(PASS), kdf()).unwrap();
    populate(&v, 2, 2);
    let before = contents(&v);
    assert!(matches!(
        v.change_passphrase(&pass("short")),
        Err(Error::InvalidArgument(_))
    ));
    v.change_passphrase(&pass(NEW_PASS)).unwrap();
    drop(v);
    assert!(matches!(
        Vault::unlock(mem.clone(), "admin", &pass(PASS)),
        Err(Error::WrongPassphrase)
    ));
    let v = Vault::unlock(mem, "admin", &pass(NEW_PASS)).unwrap();
    assert_eq!(contents(&v), before);
}

#[test]
fn erase_removes_the_patient_and_renumbers_the_registry() {
    let mem = Arc::new(MemStore::new());
    let mut v = Vault::create(mem.clone(), "admin", &pass(PASS), kdf()).unwrap();
    populate(&v, 5, 3);
    let mut expected = contents(&v);
    expected.retain(|(p, _, _), _| p != "patient-1");
    v.erase_patient(&pid(1)).unwrap();
    assert!(matches!(v.notes(&pid(1)), Err(Error::NoSuchPatient)));
    assert!(matches!(
        v.erase_patient(&pid(1)),
        Err(Error::NoSuchPatient)
    ));
    assert_eq!(contents(&v), expected);
    assert_eq!(v.patients().unwrap().len(), 4);
    assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
    // New patients still register after a renumbering.
    v.add_patient(NewPatient::new(pid(99))).unwrap();
    assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
}

/// A vault over a store that fails its n-th write.
type FaultyVault = Vault<Arc<FaultyStore<Arc<MemStore>>>>;

/// Runs `op` on a fresh vault whose store fails its n-th write, for every n, then checks that
/// the vault still unlocks (with `passes`), verifies and reads identically, and that running
/// `op` again without faults finishes.
fn fault_sweep(
    op: &dyn Fn(&mut FaultyVault) -> Result<(), Error>,
    passes: &[&str],
    erased: Option<usize>,
) {
    let fresh = || {
        let mem = Arc::new(MemStore::new());
        let v = Vault::create(mem.clone(), "admin", &pass(PASS), kdf()).unwrap();
        populate(&v, 4, 3);
        let mut c = contents(&v);
        if let Some(e) = erased {
            c.retain(|(p, _, _), _| *p != format!("patient-{e}"));
        }
        (mem, c)
    };
    let (mem, _) = fresh();
    let counting = Arc::new(FaultyStore::new(mem, u64::MAX));
    op(&mut Vault::unlock(counting.clone(), "admin", &pass(PASS)).unwrap()).unwrap();
    let total = counting.writes();
    assert!(total >= 1, "the operation writes ({total})");
    for n in 1..=total {
        let (mem, expected) = fresh();
        let faulty = Arc::new(FaultyStore::new(mem.clone(), n));
        assert!(
            op(&mut Vault::unlock(faulty, "admin", &pass(PASS)).unwrap()).is_err(),
            "write {n} fails"
        );
        let v = passes
            .iter()
            .find_map(|p| Vault::unlock(mem.clone(), "admin", &pass(p)).ok())
            .unwrap_or_else(|| {
                panic!("after a failure at write {n}, no passphrase opens the vault")
            });
        let r = v.verify(&mut |_, _| {}).unwrap();
        assert!(r.is_ok(), "after a failure at write {n}: {:?}", r.problems);
        let now = contents(&v);
        if erased.is_none() {
            assert_eq!(now, expected, "after a failure at write {n}, notes changed");
        }
        drop(v);
        // Running the operation again finishes the job.
        let mut v = passes
            .iter()
            .find_map(|p| {
                Vault::unlock(
                    Arc::new(FaultyStore::new(mem.clone(), u64::MAX)),
                    "admin",
                    &pass(p),
                )
                .ok()
            })
            .unwrap();
        match op(&mut v) {
            Ok(()) | Err(Error::NoSuchPatient) => {}
            Err(e) => panic!("re-running after a failure at write {n}: {e}"),
        }
        assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
        assert_eq!(contents(&v), expected, "after finishing, at write {n}");
        assert!(
            v.key_status().unwrap().unfinished.is_empty(),
            "nothing left unfinished ({n})"
        );
    }
}

#[test]
fn rotate_master_survives_a_failure_at_every_write() {
    fault_sweep(
        &|v| v.rotate_master(&mut |_, _| {}).map(|_| ()),
        &[PASS],
        None,
    );
}

#[test]
fn rotate_all_patients_survives_a_failure_at_every_write() {
    fault_sweep(
        &|v| v.rotate_patients(Patients::All, &mut |_, _| {}).map(|_| ()),
        &[PASS],
        None,
    );
}

#[test]
fn change_passphrase_survives_a_failure_at_every_write() {
    fault_sweep(
        &|v| v.change_passphrase(&pass(NEW_PASS)),
        &[PASS, NEW_PASS],
        None,
    );
}

#[test]
fn erase_survives_a_failure_at_every_write() {
    fault_sweep(&|v| v.erase_patient(&pid(2)), &[PASS], Some(2));
}
