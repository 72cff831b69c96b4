//! Key operations across processes (issue 14, ADR 0019): a rotation, a revocation or a new user
//! in one process runs alone; another process's writes never land on keys it retires; that
//! process notices, reloads without its passphrase, and goes on; a key operation killed in the
//! middle holds nobody up. Two `Vault`s on one store stand for two processes (on PostgreSQL,
//! each with connections of its own).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use carnet_core::{
    Error, KdfParams, NewNote, NewPatient, NoteBody, Passphrase, PatientId, Patients, Role, Vault,
};
use carnet_storage::pg_cluster::TestCluster;
use carnet_storage::{FaultyStore, MemStore, PgStore, Store};

const PASS: &str = "a long passphrase 1";

fn pid(s: &str) -> PatientId {
    PatientId::new(s).unwrap()
}

fn note(body: &str) -> NewNote {
    NewNote::new(NoteBody::new(body.as_bytes().to_vec()).unwrap())
}

fn pass() -> Passphrase {
    Passphrase::new(PASS.into())
}

fn create<S: Store>(store: S) {
    let v = Vault::create(store, "admin", &pass(), KdfParams::new(8, 1, 1).unwrap()).unwrap();
    v.add_patient(NewPatient::new(pid("P1"))).unwrap();
    v.add_note(&pid("P1"), note("before")).unwrap();
}

/// One process rotates every key and adds a user while another holds keys read before: the
/// other's write is refused (nothing written), and after a reload it writes under the new
/// keys; everything reads back and verifies.
fn stale_writes_are_refused_then_reloaded<S: Store>(a: S, b: S) {
    let mut a = Vault::unlock(a, "admin", &pass()).unwrap();
    let mut b = Vault::unlock(b, "admin", &pass()).unwrap();
    assert!(!b.keys_changed().unwrap());
    a.rotate_master(&mut |_, _| {}).unwrap();
    a.rotate_patients(Patients::All, &mut |_, _| {}).unwrap();
    assert!(b.keys_changed().unwrap());
    let before = a.notes(&pid("P1")).unwrap().len();
    assert!(
        matches!(
            b.add_note(&pid("P1"), note("stale")),
            Err(Error::KeysChanged)
        ),
        "a write under retired keys is refused"
    );
    assert!(matches!(
        b.add_patient(NewPatient::new(pid("P2"))),
        Err(Error::KeysChanged)
    ));
    assert_eq!(
        a.notes(&pid("P1")).unwrap().len(),
        before,
        "nothing written"
    );
    b.reload().unwrap();
    b.add_note(&pid("P1"), note("after the rotation")).unwrap();
    b.add_patient(NewPatient::new(pid("P2"))).unwrap();
    // A key operation of a process with old keys: refused the same way, then done.
    a.add_user(
        "bob",
        Role::Clinician,
        &Passphrase::new("bob's long passphrase".into()),
    )
    .unwrap();
    assert!(matches!(
        b.rotate_master(&mut |_, _| {}),
        Err(Error::KeysChanged)
    ));
    b.reload().unwrap();
    b.rotate_master(&mut |_, _| {}).unwrap();
    a.reload().unwrap();
    assert_eq!(a.notes(&pid("P1")).unwrap().len(), before + 1);
    assert!(a.verify(&mut |_, _| {}).unwrap().problems.is_empty());
    assert!(b.verify(&mut |_, _| {}).unwrap().problems.is_empty());
}

/// While a key operation runs (here: inside its progress callback), another process's writes
/// and key operations are told it is busy, waiting is bounded, and afterwards all goes on.
fn a_running_key_operation_runs_alone<S: Store>(a: S, b: S) {
    let mut a = Vault::unlock(a, "admin", &pass()).unwrap();
    let mut b = Vault::unlock(b, "admin", &pass()).unwrap();
    let mut seen = Vec::new();
    a.rotate_patients(Patients::All, &mut |_, _| {
        seen.push(match b.add_note(&pid("P1"), note("during")) {
            Err(Error::Busy { .. }) => "busy",
            Err(Error::KeysChanged) => "changed",
            Ok(_) => "written",
            Err(_) => "other",
        });
        let mut told = None;
        let waited =
            b.wait_for_key_operations(Duration::from_millis(300), &mut |op| told = Some(op));
        assert!(matches!(waited, Err(Error::Busy { .. })), "{waited:?}");
        assert_eq!(told, Some("patient-key rotation"));
    })
    .unwrap();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| *s == "busy"),
        "every write during the rotation is held off: {seen:?}"
    );
    b.wait_for_key_operations(Duration::from_secs(5), &mut |_| {})
        .unwrap();
    b.add_note(&pid("P1"), note("after")).unwrap();
    assert!(b.verify(&mut |_, _| {}).unwrap().problems.is_empty());
}

#[test]
fn on_the_memory_backend_as_two_processes() {
    let store = Arc::new(MemStore::new());
    create(Arc::clone(&store));
    stale_writes_are_refused_then_reloaded(Arc::clone(&store), Arc::clone(&store));
    a_running_key_operation_runs_alone(Arc::clone(&store), Arc::clone(&store));
}

#[test]
fn on_postgresql_as_two_processes() {
    let Some(pg) = TestCluster::start_or_skip("key_operations_on_postgresql") else {
        return;
    };
    create(PgStore::create(&pg.uri("keys")).unwrap());
    let open = || PgStore::open(&pg.uri("keys")).unwrap();
    stale_writes_are_refused_then_reloaded(open(), open());
    a_running_key_operation_runs_alone(open(), open());
}

/// A key operation killed after it took the fence (every write from then on fails, as a dead
/// process's would) leaves the others free at once: the store knows it is gone.
#[test]
fn a_killed_key_operation_holds_nobody_up() {
    let store = Arc::new(MemStore::new());
    create(Arc::clone(&store));
    // Writes 1 and 2 take the fence; the rotation's first write and every later one fail.
    let dying = FaultyStore::new(Arc::clone(&store), 3);
    let mut a = Vault::unlock(dying, "admin", &pass()).unwrap();
    assert!(a.rotate_master(&mut |_, _| {}).is_err());
    drop(a);
    let mut b = Vault::unlock(Arc::clone(&store), "admin", &pass()).unwrap();
    b.add_note(&pid("P1"), note("after the kill")).unwrap();
    b.rotate_master(&mut |_, _| {}).unwrap();
    assert!(b.verify(&mut |_, _| {}).unwrap().problems.is_empty());
}
