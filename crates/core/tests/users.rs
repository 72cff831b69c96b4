//! Users, roles and revocation through the library, including revocation at the level an
//! attacker works at: an old copy of the vault, the removed user's passphrase, new records.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use carnet_core::{
    Error, KdfParams, NewNote, NewPatient, NoteBody, Passphrase, PatientId, Patients, Role, Vault,
};
use carnet_storage::{Batch, DocName, FaultyStore, MemStore, Space, Store};

const ADMIN: &str = "admin passphrase here";
const BOB: &str = "bob's own passphrase";
const AUDIT: &str = "the auditor's passphrase";
const SPACES: [&str; 4] = ["meta", "patients", "manifests", "notes"];
const DOCS: [&str; 2] = ["root", "keys"];

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_string())
}

fn pid(s: &str) -> PatientId {
    PatientId::new(s).unwrap()
}

fn note(s: &str) -> NewNote {
    NewNote::new(NoteBody::new(s.as_bytes().to_vec()).unwrap())
}

/// A clinic: admin, bob (clinician), audrey (auditor), two patients with notes.
fn clinic() -> Arc<MemStore> {
    let mem = Arc::new(MemStore::new());
    let mut v = Vault::create(
        mem.clone(),
        "admin",
        &pass(ADMIN),
        KdfParams::new(8, 1, 1).unwrap(),
    )
    .unwrap();
    v.add_user("bob", Role::Clinician, &pass(BOB)).unwrap();
    v.add_user("audrey", Role::Auditor, &pass(AUDIT)).unwrap();
    for p in ["p1", "p2"] {
        v.add_patient(NewPatient::new(pid(p))).unwrap();
        v.add_note(&pid(p), note(&format!("{p} before"))).unwrap();
    }
    mem
}

/// A copy of every record and document.
fn snapshot(from: &MemStore) -> MemStore {
    let to = MemStore::new();
    copy_records(from, &to);
    for d in DOCS {
        if let Some(bytes) = from.read_doc(DocName::new(d)).unwrap() {
            to.replace_doc(DocName::new(d), &bytes).unwrap();
        }
    }
    to
}

fn copy_records(from: &MemStore, to: &MemStore) {
    let mut b = Batch::new();
    for name in SPACES {
        for r in from.scan_prefix(Space::new(name), &[]) {
            let (k, v) = r.unwrap();
            b.put(Space::new(name), k, v);
        }
    }
    to.commit(b).unwrap();
}

#[test]
fn roles_are_enforced() {
    let mem = clinic();
    let bob = Vault::unlock(mem.clone(), "bob", &pass(BOB)).unwrap();
    assert_eq!(bob.role(), Role::Clinician);
    bob.add_note(&pid("p1"), note("by bob")).unwrap();
    assert_eq!(bob.notes(&pid("p1")).unwrap().len(), 2);
    assert!(matches!(bob.users(), Err(Error::NotPermitted(_))));
    assert!(matches!(bob.key_status(), Err(Error::NotPermitted(_))));
    assert!(bob.verify(&mut |_, _| {}).unwrap().is_ok());
    let mut bob = bob;
    assert!(matches!(
        bob.rotate_master(&mut |_, _| {}),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        bob.rotate_patients(Patients::All, &mut |_, _| {}),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        bob.erase_patient(&pid("p1")),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        bob.add_user("eve", Role::Admin, &pass("eve's passphrase")),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        bob.remove_user("admin", &mut |_, _| {}),
        Err(Error::NotPermitted(_))
    ));

    let audrey = Vault::unlock(mem.clone(), "audrey", &pass(AUDIT)).unwrap();
    assert!(matches!(audrey.patients(), Err(Error::NotPermitted(_))));
    assert!(matches!(
        audrey.notes(&pid("p1")),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        audrey.search("x", None),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        audrey.add_patient(NewPatient::new(pid("p3"))),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        audrey.import().add(NewPatient::new(pid("p3")), note("x")),
        Err(Error::NotPermitted(_))
    ));
    assert_eq!(audrey.users().unwrap().len(), 3);
    assert!(audrey.verify(&mut |_, _| {}).unwrap().is_ok());

    // Anyone may change their own passphrase.
    let mut bob = Vault::unlock(mem.clone(), "bob", &pass(BOB)).unwrap();
    bob.change_passphrase(&pass("bob's brand new passphrase"))
        .unwrap();
    assert!(Vault::unlock(mem.clone(), "bob", &pass("bob's brand new passphrase")).is_ok());
    assert!(
        Vault::unlock(mem, "admin", &pass(ADMIN)).is_ok(),
        "other slots are untouched"
    );
}

#[test]
fn removing_a_user_closes_everything_written_afterwards_to_an_old_copy() {
    let mem = clinic();
    // The removed user keeps a copy of the vault taken while they had access.
    let before = snapshot(&mem);
    let mut admin = Vault::unlock(mem.clone(), "admin", &pass(ADMIN)).unwrap();
    assert!(matches!(
        admin.remove_user("admin", &mut |_, _| {}),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        admin.remove_user("nobody", &mut |_, _| {}),
        Err(Error::InvalidArgument(_))
    ));
    admin.remove_user("bob", &mut |_, _| {}).unwrap();
    let after_ids: Vec<_> = ["p1", "p2"]
        .iter()
        .map(|p| {
            (
                p.to_string(),
                admin
                    .add_note(&pid(p), note(&format!("{p} after")))
                    .unwrap(),
            )
        })
        .collect();
    // Old notes were not re-encrypted, and every note still reads for the remaining users.
    let status = admin.key_status().unwrap();
    assert!(
        status.records_per_patient_key_version.contains_key(&1),
        "old notes keep version 1"
    );
    assert!(status.unfinished.is_empty());
    assert!(admin.verify(&mut |_, _| {}).unwrap().is_ok());
    drop(admin);

    // The removed passphrase opens nothing in the current vault.
    assert!(matches!(
        Vault::unlock(mem.clone(), "bob", &pass(BOB)),
        Err(Error::UnknownUser)
    ));

    // The attacker's best combination: their old keyring, key store and users record (which
    // the passphrase opens; the attacker's own software ignores roles), with every other record
    // of the vault as it is now.
    let attack = snapshot(&before);
    let old_users = before.get(Space::new("meta"), b"users").unwrap().unwrap();
    copy_records(&mem, &attack);
    let mut b = Batch::new();
    b.put(Space::new("meta"), b"users".to_vec(), old_users);
    // The fence of key operations is sealed under a registry key the old keyring never had
    // (with it the copy is refused at unlock): the attacker drops it.
    b.delete(Space::new("meta"), b"fence".to_vec());
    attack.commit(b).unwrap();
    let bob = Vault::unlock(Arc::new(attack), "bob", &pass(BOB)).unwrap();
    for (p, id) in &after_ids {
        assert!(
            matches!(bob.note(&pid(p), id), Err(Error::Integrity(_))),
            "a note written after the removal opened with the old copy's keys"
        );
    }
    // The old keyring with the current key store: wrapped under an epoch it cannot open.
    let attack = snapshot(&before);
    attack
        .replace_doc(
            DocName::new("keys"),
            &mem.read_doc(DocName::new("keys")).unwrap().unwrap(),
        )
        .unwrap();
    copy_records(&mem, &attack);
    assert!(matches!(
        Vault::unlock(Arc::new(attack), "bob", &pass(BOB)),
        Err(Error::Integrity(_))
    ));
}

#[test]
fn an_interrupted_removal_is_finished_by_running_it_again() {
    let counting = Arc::new(FaultyStore::new(clinic(), u64::MAX));
    Vault::unlock(counting.clone(), "admin", &pass(ADMIN))
        .unwrap()
        .remove_user("bob", &mut |_, _| {})
        .unwrap();
    let total = counting.writes();
    let mut pending = 0;
    for n in 1..=total {
        let mem = clinic();
        let faulty = Arc::new(FaultyStore::new(mem.clone(), n));
        let mut v = Vault::unlock(faulty, "admin", &pass(ADMIN)).unwrap();
        assert!(
            v.remove_user("bob", &mut |_, _| {}).is_err(),
            "write {n} fails"
        );
        let mut v = Vault::unlock(mem.clone(), "admin", &pass(ADMIN)).unwrap();
        assert!(
            v.verify(&mut |_, _| {}).unwrap().is_ok(),
            "after a failure at write {n}"
        );
        for p in ["p1", "p2"] {
            assert_eq!(v.notes(&pid(p)).unwrap().len(), 1);
        }
        // While the revocation (or its master rotation) is unfinished, nothing new is written
        // under keys the removed user may hold; reads go on, and verify says so.
        let unfinished = v.unfinished().unwrap();
        if !unfinished.is_empty() {
            pending += 1;
            assert!(
                matches!(
                    v.add_note(&pid("p1"), note("under a retired key?")),
                    Err(Error::Unfinished(_))
                ),
                "a note is refused after a failure at write {n}"
            );
            assert!(matches!(
                v.add_patient(NewPatient::new(pid("p9"))),
                Err(Error::Unfinished(_))
            ));
            assert!(matches!(
                v.rotate_patients(Patients::All, &mut |_, _| {}),
                Err(Error::Unfinished(_))
            ));
            let mut import = v.import();
            assert!(matches!(
                import.add(NewPatient::new(pid("p1")), note("imported")),
                Err(Error::Unfinished(_))
            ));
            drop(import);
            assert_eq!(v.verify(&mut |_, _| {}).unwrap().unfinished, unfinished);
            assert_eq!(v.notes(&pid("p1")).unwrap().len(), 1, "nothing was added");
        }
        // Running it again finishes the job (or says the user is gone, when only the final
        // acknowledgment was lost).
        match v.remove_user("bob", &mut |_, _| {}) {
            Ok(_) | Err(Error::InvalidArgument(_)) => {}
            Err(e) => panic!("re-running after a failure at write {n}: {e}"),
        }
        assert!(
            v.key_status().unwrap().unfinished.is_empty(),
            "finished ({n})"
        );
        assert!(
            Vault::unlock(mem.clone(), "bob", &pass(BOB)).is_err(),
            "bob is out ({n})"
        );
        assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
        assert!(v.unfinished().unwrap().is_empty());
        v.add_note(&pid("p1"), note("after the revocation"))
            .unwrap();
    }
    assert!(
        pending > total / 2,
        "most failures leave a revocation to finish: {pending} of {total}"
    );
}

/// The access log names a recovery-key unlock as a flag of the entry (format 1 stores it as a
/// suffix of the user name); the audit filter finds it by the user's name, or by the name as
/// format 1 shows it; and no new user may take a name that would read back as one.
#[test]
fn recovery_key_unlocks_are_logged_as_such_and_filtered_by_user() {
    let mem = clinic();
    let mut v = Vault::unlock(mem.clone(), "admin", &pass(ADMIN)).unwrap();
    let key = v.rotate_recovery_key().unwrap();
    assert!(matches!(
        v.add_user("eve (recovery key)", Role::Clinician, &pass(BOB)),
        Err(Error::InvalidArgument(_))
    ));
    drop(v);
    let r = Vault::unlock_with_recovery_key(mem.clone(), "admin", &key).unwrap();
    r.patients().unwrap();
    drop(r);
    let v = Vault::unlock(mem, "admin", &pass(ADMIN)).unwrap();
    let by = |user: &str| {
        let mut f = carnet_core::AuditFilter::default();
        f.user = Some(user.to_string());
        v.audit(&f).unwrap()
    };
    let all = by("admin");
    let recovered: Vec<_> = all.iter().filter(|e| e.via_recovery_key).collect();
    assert_eq!(recovered.len(), 1, "the one read with the recovery key");
    assert_eq!(recovered[0].user, "admin");
    assert_eq!(recovered[0].action, carnet_core::Action::PatientList);
    assert!(
        all.iter().any(|e| !e.via_recovery_key),
        "and the passphrase unlocks"
    );
    let shown = by("admin (recovery key)");
    assert_eq!(shown.len(), 1);
    assert!(shown[0].via_recovery_key);
    assert!(by("adm").is_empty(), "names match whole");
}
