//! Many threads on one `Vault` (issue 14's first finding): writers that lose a race retry, reads
//! see one moment of a patient, and nothing is lost, duplicated or reported as damaged. On the
//! memory backend and on sled.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use carnet_core::{
    Error, KdfParams, NewNote, NewPatient, NoteBody, NoteId, Passphrase, PatientId, Vault,
};
use carnet_storage::pg_cluster::TestCluster;
use carnet_storage::{MemStore, PgStore, SledStore, Store};

const THREADS: usize = 8;
const ROUNDS: usize = 12;
/// Patients every thread writes to (so that writers collide on their manifests).
const SHARED: [&str; 3] = ["shared-0", "shared-1", "shared-2"];

fn pid(s: &str) -> PatientId {
    PatientId::new(s).unwrap()
}

fn note(body: &str) -> NewNote {
    NewNote::new(NoteBody::new(body.as_bytes().to_vec()).unwrap())
}

fn vault<S: Store>(store: S) -> Vault<S> {
    let kdf = KdfParams::new(8, 1, 1).unwrap();
    let v = Vault::create(
        store,
        "admin",
        &Passphrase::new("a long passphrase 1".into()),
        kdf,
    )
    .unwrap();
    for p in SHARED {
        v.add_patient(NewPatient::new(pid(p))).unwrap();
    }
    v
}

/// Every failure any thread saw, by kind: all must be empty.
#[derive(Default)]
struct Failures {
    integrity: Vec<String>,
    other: Vec<String>,
}

impl Failures {
    fn record(&mut self, what: &str, e: &Error) {
        match e {
            Error::Integrity(i) => self.integrity.push(format!("{what}: {i}")),
            other => self.other.push(format!("{what}: {other}")),
        }
    }
}

/// Eight threads on one vault, each: registers patients of its own, adds notes to the shared
/// patients and to its own, amends them, imports, reads charts, single notes and histories,
/// searches, and verifies, all at once. Returns every note written, as (patient, id, version
/// count).
fn hammer<S: Store>(v: &Vault<S>, tag: &str) -> HashMap<(String, NoteId), u32> {
    let written: Mutex<HashMap<(String, NoteId), u32>> = Mutex::default();
    let failures: Mutex<Failures> = Mutex::default();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (written, failures) = (&written, &failures);
            s.spawn(move || {
                let fail = |what: &str, e: &Error| failures.lock().unwrap().record(what, e);
                let own = format!("own-{tag}-{t}");
                if let Err(e) = v.add_patient(NewPatient::new(pid(&own))) {
                    fail("add_patient", &e);
                }
                for r in 0..ROUNDS {
                    let p = if r % 2 == 0 { SHARED[r % 3] } else { &own };
                    match v.add_note(&pid(p), note(&format!("t{t} r{r} aspirine"))) {
                        Ok(id) => {
                            written.lock().unwrap().insert((p.to_string(), id), 1);
                            if r % 3 == 0 {
                                let body = NoteBody::new(format!("t{t} r{r} amended").into_bytes())
                                    .unwrap();
                                match v.amend_note(&pid(p), &id, body, None) {
                                    Ok(version) => {
                                        written
                                            .lock()
                                            .unwrap()
                                            .insert((p.to_string(), id), version);
                                    }
                                    Err(e) => fail("amend_note", &e),
                                }
                            }
                            if let Err(e) = v.note(&pid(p), &id) {
                                fail("note", &e);
                            }
                            if let Err(e) = v.note_history(&pid(p), &id) {
                                fail("note_history", &e);
                            }
                        }
                        Err(e) => fail("add_note", &e),
                    }
                    if let Err(e) = v.read_notes(&pid(SHARED[(r + t) % 3])) {
                        fail("read_notes", &e);
                    }
                    if let Err(e) = v.notes(&pid(SHARED[(r + t + 1) % 3])) {
                        fail("notes", &e);
                    }
                    if r % 4 == 1 {
                        // An import into a shared patient and a new one, beside the writers.
                        let mut imp = v.import();
                        let mut ids = Vec::new();
                        for (i, p) in [SHARED[t % 3], &format!("imp-{tag}-{t}-{r}")]
                            .iter()
                            .enumerate()
                        {
                            match imp.add(
                                NewPatient::new(pid(p)),
                                note(&format!("import {t} {r} {i}")),
                            ) {
                                Ok(id) => ids.push((p.to_string(), id)),
                                Err(e) => fail("import add", &e),
                            }
                        }
                        match imp.finish() {
                            Ok(_) => {
                                let mut w = written.lock().unwrap();
                                for k in ids {
                                    w.insert(k, 1);
                                }
                            }
                            Err(e) => fail("import finish", &e),
                        }
                    }
                    if r % 4 == 2 {
                        if let Err(e) = v.search("aspirine", None) {
                            fail("search", &e);
                        }
                    }
                    if r == ROUNDS / 2 && t % 4 == 0 {
                        match v.verify(&mut |_, _| {}) {
                            Ok(report) if report.is_ok() => {}
                            Ok(report) => failures
                                .lock()
                                .unwrap()
                                .integrity
                                .extend(report.problems.iter().map(|p| format!("verify: {p}"))),
                            Err(e) => fail("verify", &e),
                        }
                    }
                }
            });
        }
    });
    let f = failures.into_inner().unwrap();
    assert!(
        f.integrity.is_empty(),
        "false integrity alarms: {:?}",
        f.integrity
    );
    assert!(f.other.is_empty(), "failed operations: {:?}", f.other);
    written.into_inner().unwrap()
}

/// What the vault holds now: every note, with its current version, exactly once.
fn check_nothing_lost<S: Store>(
    v: &Vault<S>,
    written: &HashMap<(String, NoteId), u32>,
    hammers: usize,
) {
    let report = v.verify(&mut |_, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let mut stored = HashMap::new();
    let mut patients = HashSet::new();
    for p in v.patients().unwrap() {
        assert!(
            patients.insert(p.id.as_str().to_string()),
            "patient listed twice"
        );
        for n in v.notes(&p.id).unwrap() {
            let key = (p.id.as_str().to_string(), n.id);
            assert!(stored.insert(key, n.version).is_none(), "note listed twice");
        }
    }
    assert_eq!(
        &stored, written,
        "every acknowledged write, and nothing else"
    );
    // Each thread's own patient, the shared ones, and one per import.
    let imports = THREADS * ROUNDS.div_ceil(4);
    assert_eq!(patients.len(), hammers * (THREADS + imports) + SHARED.len());
}

#[test]
fn eight_threads_on_one_vault_in_memory() {
    let v = vault(Arc::new(MemStore::new()));
    let written = hammer(&v, "m");
    assert!(written.len() > THREADS * ROUNDS);
    check_nothing_lost(&v, &written, 1);
}

#[test]
fn eight_threads_on_one_vault_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(SledStore::create(&dir.path().join("vault")).unwrap());
    let written = hammer(&v, "s");
    check_nothing_lost(&v, &written, 1);
}

/// An import whose batch lost the race for a patient's manifest (another writer added a note
/// between its staging and its commit) stages the batch again on the new state: both notes
/// stay, and the id the import returned is the note's.
#[test]
fn an_import_batch_that_lost_a_race_is_staged_again_with_the_same_ids() {
    let v = vault(Arc::new(MemStore::new()));
    let mut imp = v.import();
    let imported = imp
        .add(NewPatient::new(pid(SHARED[0])), note("imported"))
        .unwrap();
    let created = imp
        .add(NewPatient::new(pid("new-by-import")), note("first"))
        .unwrap();
    // Meanwhile: a note for the same patient, and a registration (the registry moves too).
    let direct = v.add_note(&pid(SHARED[0]), note("direct")).unwrap();
    v.add_patient(NewPatient::new(pid("new-direct"))).unwrap();
    let summary = imp.finish().unwrap();
    assert_eq!(summary.notes_imported, 2);
    assert_eq!(summary.patients_created, 1);
    let body = |p: &str, n: &NoteId| v.note(&pid(p), n).unwrap().body.unwrap();
    assert_eq!(body(SHARED[0], &imported).as_bytes(), b"imported");
    assert_eq!(body(SHARED[0], &direct).as_bytes(), b"direct");
    assert_eq!(body("new-by-import", &created).as_bytes(), b"first");
    assert_eq!(v.notes(&pid(SHARED[0])).unwrap().len(), 2);
    assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
}

/// `Import::add_all` (sealing on one thread while another writes) beside a writer adding notes
/// to the same patients: batches that lose are staged again, nothing is lost or doubled.
#[test]
fn a_pipelined_import_beside_a_writer_loses_nothing() {
    let v = vault(Arc::new(MemStore::new()));
    const IMPORTED: usize = 3_500;
    const DIRECT: usize = 60;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut imp = v.import();
            let items = (0..IMPORTED).map(|i| {
                Ok((
                    NewPatient::new(pid(SHARED[i % 3])),
                    note(&format!("imp {i}")),
                ))
            });
            imp.add_all(items, &mut |_| {}).unwrap();
            assert_eq!(imp.finish().unwrap().notes_imported, IMPORTED as u64);
        });
        s.spawn(|| {
            for i in 0..DIRECT {
                v.add_note(&pid(SHARED[i % 3]), note(&format!("direct {i}")))
                    .unwrap();
            }
        });
    });
    let total: usize = SHARED.iter().map(|p| v.notes(&pid(p)).unwrap().len()).sum();
    assert_eq!(total, IMPORTED + DIRECT);
    assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
}

#[test]
fn eight_threads_on_one_vault_on_postgres() {
    let Some(pg) = TestCluster::start_or_skip("eight_threads_on_one_vault_on_postgres") else {
        return;
    };
    let v = vault(PgStore::create(&pg.uri("threads")).unwrap());
    let written = hammer(&v, "p");
    check_nothing_lost(&v, &written, 1);
}

/// Two `Vault`s (as two processes would) on one PostgreSQL vault, eight threads each: a `Vault`
/// takes in the patient keys the other appends (it reads the key store again before calling a
/// key missing), and a registration that lost its race uses its key again instead of appending a
/// second one. Registrations of the same new identifier by both at the same moment are not
/// covered yet (ADR 0017).
#[test]
fn two_vaults_on_one_postgres_vault() {
    let Some(pg) = TestCluster::start_or_skip("two_vaults_on_one_postgres_vault") else {
        return;
    };
    let a = vault(PgStore::create(&pg.uri("two")).unwrap());
    let b = Vault::unlock(
        PgStore::open(&pg.uri("two")).unwrap(),
        "admin",
        &Passphrase::new("a long passphrase 1".into()),
    )
    .unwrap();
    let (wa, wb) = std::thread::scope(|s| {
        let ha = s.spawn(|| hammer(&a, "a"));
        let hb = s.spawn(|| hammer(&b, "b"));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let mut all = wa;
    all.extend(wb);
    check_nothing_lost(&a, &all, 2);
}
