//! The access log answers "who read my record" (issue 13, finding 5): every patient a command
//! showed or changed, the user an operation concerned, a recovery-key unlock as a field, and
//! on every note version who wrote it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use carnet_core::{
    Action, AuditFilter, KdfParams, LogEntry, NewNote, NewPatient, NoteBody, Passphrase, PatientId,
    Role, Vault,
};
use carnet_storage::MemStore;

const ADMIN: &str = "admin passphrase here";
const BOB: &str = "bob's own passphrase";

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_string())
}

fn pid(s: &str) -> PatientId {
    PatientId::new(s).unwrap()
}

fn note(s: &str) -> NewNote {
    NewNote::new(NoteBody::new(s.as_bytes().to_vec()).unwrap())
}

fn clinic() -> (Arc<MemStore>, Vault<Arc<MemStore>>) {
    let mem = Arc::new(MemStore::new());
    let mut v = Vault::create(
        mem.clone(),
        "admin",
        &pass(ADMIN),
        KdfParams::new(8, 1, 1).unwrap(),
    )
    .unwrap();
    v.add_user("bob", Role::Clinician, &pass(BOB)).unwrap();
    (mem, v)
}

fn last(v: &Vault<Arc<MemStore>>, action: Action) -> LogEntry {
    v.audit(&AuditFilter::default())
        .unwrap()
        .into_iter()
        .rfind(|e| e.action == action)
        .unwrap()
}

#[test]
fn a_search_names_every_patient_it_showed() {
    let (_m, v) = clinic();
    for (p, body) in [
        ("p1", "hiv serology positive"),
        ("p2", "flu"),
        ("p3", "HIV test"),
    ] {
        v.add_patient(NewPatient::new(pid(p))).unwrap();
        v.add_note(&pid(p), note(body)).unwrap();
    }
    assert_eq!(v.search("hiv", None).unwrap().len(), 2);
    let e = last(&v, Action::Search);
    assert_eq!(e.patients, vec!["p1".to_string(), "p3".to_string()]);
    // "Who read my record": p3's audit trail has the search; p2's has not.
    let mut f = AuditFilter::default();
    f.patient = Some(pid("p3"));
    assert!(v
        .audit(&f)
        .unwrap()
        .iter()
        .any(|e| e.action == Action::Search));
    f.patient = Some(pid("p2"));
    assert!(!v
        .audit(&f)
        .unwrap()
        .iter()
        .any(|e| e.action == Action::Search));
}

#[test]
fn an_import_names_every_patient_of_its_batch() {
    let (_m, v) = clinic();
    let mut imp = v.import();
    for p in ["p1", "p2", "p3"] {
        imp.add(NewPatient::new(pid(p)), note("imported")).unwrap();
    }
    imp.finish().unwrap();
    let e = last(&v, Action::Import);
    assert_eq!(e.patients, vec!["p1", "p2", "p3"]);
}

#[test]
fn user_operations_name_the_user_concerned() {
    let (_m, mut v) = clinic();
    let e = last(&v, Action::UserAdd);
    assert_eq!(e.subject.as_deref(), Some("bob"));
    assert_eq!(e.user, "admin");
    v.remove_user("bob", &mut |_, _| {}).unwrap();
    assert_eq!(last(&v, Action::UserRemove).subject.as_deref(), Some("bob"));
}

#[test]
fn a_recovery_key_unlock_is_a_field_not_a_name() {
    let (mem, mut v) = clinic();
    let key = v.rotate_recovery_key().unwrap();
    drop(v);
    let v = Vault::unlock_with_recovery_key(mem, "admin", &key).unwrap();
    v.patients().unwrap();
    let e = last(&v, Action::PatientList);
    assert_eq!(e.user, "admin");
    assert!(e.via_recovery_key);
    let mut f = AuditFilter::default();
    f.user = Some("admin".into());
    let by_admin = v.audit(&f).unwrap();
    assert!(by_admin.iter().any(|e| e.via_recovery_key));
    assert!(by_admin.iter().any(|e| !e.via_recovery_key));
}

#[test]
fn every_version_records_who_wrote_it() {
    let (mem, v) = clinic();
    v.add_patient(NewPatient::new(pid("p1"))).unwrap();
    let mut n = note("dosage 50 mg");
    n.author = Some("Dr Martin".into());
    let id = v.add_note(&pid("p1"), n).unwrap();
    drop(v);
    let bob = Vault::unlock(mem, "bob", &pass(BOB)).unwrap();
    bob.amend_note(
        &pid("p1"),
        &id,
        NoteBody::new(b"dosage 5 mg".to_vec()).unwrap(),
        None,
    )
    .unwrap();
    let history = bob.note_history(&pid("p1"), &id).unwrap();
    let by: Vec<_> = history.iter().map(|n| n.written_by.as_deref()).collect();
    assert_eq!(by, vec![Some("admin"), Some("bob")]);
    // The free-text author stays beside it, as given (an amendment given none keeps it).
    assert_eq!(history[1].author.as_deref(), Some("Dr Martin"));
}
