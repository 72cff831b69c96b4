//! The attacks of issue 13 made with the crate's own encoders, by someone who can write the
//! storage and holds no key (or, for the window after a removal, only what the removed user
//! kept). Each shows what format 1 let through and what format 2 refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use carnet_storage::{MemStore, Store};

use super::Vault;
use crate::access::Role;
use crate::keyring::{inject, KdfParams, Keyring, SlotSecret};
use crate::keys::{EpochKey, KeyringKey};
use crate::keystore::{KEYS_DOC, ROOT_DOC};
use crate::model::{NewNote, NewPatient, NoteBody, PatientId};
use crate::records::{space, META_USERS};
use crate::secret::Passphrase;
use crate::{Error, ProblemKind};

pub(super) const ADMIN: &str = "admin's long passphrase 1";
pub(super) const BOB: &str = "bob's own long passphrase";
pub(super) const CAROL: &str = "carol's own long passphrase";

/// The fixtures below are shared with `review_attacks`.
pub(super) fn kdf() -> KdfParams {
    KdfParams::new(8, 1, 1).unwrap()
}

pub(super) fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_string())
}

pub(super) fn pid() -> PatientId {
    PatientId::new("p1").unwrap()
}

pub(super) fn note(s: &str) -> NewNote {
    NewNote::new(NoteBody::new(s.as_bytes().to_vec()).unwrap())
}

/// A vault in `format` with an administrator, two clinicians (bob, carol) and patient `p1`
/// with one note.
pub(super) fn vault(format: u16) -> (Arc<MemStore>, Vault<Arc<MemStore>>) {
    let store = Arc::new(MemStore::new());
    let mut v =
        Vault::create_in_format(Arc::clone(&store), "admin", &pass(ADMIN), kdf(), format).unwrap();
    v.add_user("bob", Role::Clinician, &pass(BOB)).unwrap();
    v.add_user("carol", Role::Clinician, &pass(CAROL)).unwrap();
    v.add_patient(NewPatient::new(pid())).unwrap();
    v.add_note(&pid(), note("before")).unwrap();
    (store, v)
}

pub(super) fn root<S: Store>(store: &S) -> Vec<u8> {
    store.read_doc(ROOT_DOC).unwrap().unwrap()
}

fn unlock_keyring(bytes: &[u8], user: &str, p: &str) -> Result<EpochKey, Error> {
    let k = Keyring::parse(bytes).ok().unwrap();
    k.unlock(user, &SlotSecret::Passphrase(&pass(p), kdf()))
        .map(|o| o.masters.current)
}

fn is_mac_failure(r: &Result<EpochKey, Error>) -> bool {
    matches!(r, Err(Error::Integrity(e)) if e.location() == "keyring" && e.problem().contains("MAC"))
}

#[test]
fn an_injected_master_opens_a_format_1_slot_and_is_refused_in_format_2() {
    let forged = EpochKey::from_bytes(1, [0x66; 32]);
    // Format 1: the victim's slot yields the host's master.
    let (store, v) = vault(1);
    drop(v);
    let injected = inject(&root(&store), &forged, &[]);
    let got = unlock_keyring(&injected, "admin", ADMIN).unwrap();
    assert_eq!(got.bytes_to_wrap(), forged.bytes_to_wrap());
    // Format 2: refused before any seal is opened, and so by the vault.
    let (store, v) = vault(2);
    drop(v);
    let injected = inject(&root(&store), &forged, &[]);
    assert!(is_mac_failure(&unlock_keyring(&injected, "admin", ADMIN)));
    store.replace_doc(ROOT_DOC, &injected).unwrap();
    match Vault::unlock(Arc::clone(&store), "bob", &pass(BOB)) {
        Err(Error::Integrity(e)) => assert_eq!(e.location(), "keyring", "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_removed_user_can_inject_until_each_remaining_user_unlocks_once() {
    let (store, mut admin) = vault(2);
    // What bob keeps: the keyring key his slot held.
    let bob = Vault::unlock(Arc::clone(&store), "bob", &pass(BOB)).unwrap();
    let kept: Vec<KeyringKey> = bob.keys.keyring_keys_for_tests();
    drop(bob);
    admin.remove_user("bob", &mut |_, _| {}).unwrap();
    let forged = EpochKey::from_bytes(admin.epoch(), [0x66; 32]);
    let honest = root(&store);
    // The administrator's slot holds the new keyring key: closed at once.
    let injected = inject(&honest, &forged, &kept);
    assert!(is_mac_failure(&unlock_keyring(&injected, "admin", ADMIN)));
    // Carol has not unlocked since: her slot still holds the key bob knew (the window).
    let got = unlock_keyring(&injected, "carol", CAROL).unwrap();
    assert_eq!(got.bytes_to_wrap(), forged.bytes_to_wrap());
    let status = admin.key_status().unwrap();
    assert_eq!(status.slots_behind, 1, "key status names the window");
    // Carol unlocks once: her slot adopts the new key, and the window is closed for her.
    drop(Vault::unlock(Arc::clone(&store), "carol", &pass(CAROL)).unwrap());
    let injected = inject(&root(&store), &forged, &kept);
    assert!(is_mac_failure(&unlock_keyring(&injected, "carol", CAROL)));
    assert_eq!(admin_status(&store).slots_behind, 0);
}

fn admin_status(store: &Arc<MemStore>) -> crate::KeyStatus {
    Vault::unlock(Arc::clone(store), "admin", &pass(ADMIN))
        .unwrap()
        .key_status()
        .unwrap()
}

#[test]
fn an_older_users_record_does_not_open_as_current() {
    let (store, mut v) = vault(2);
    let older = store.get(space::META, META_USERS).unwrap().unwrap();
    v.add_user("dave", Role::Admin, &pass("dave's own long passphrase"))
        .unwrap();
    drop(v);
    let mut b = carnet_storage::Batch::new();
    b.put(space::META, META_USERS, older);
    store.commit(b).unwrap();
    match Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)) {
        Err(Error::Integrity(e)) => {
            assert_eq!(e.kind(), ProblemKind::RolledBack, "{e}");
            assert_eq!(e.location(), "users");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_revocation_retires_the_registry_key_the_removed_user_held() {
    let (store, mut admin) = vault(2);
    let before = store.get(space::META, META_USERS).unwrap().unwrap();
    let header_version = |b: &[u8]| u32::from_be_bytes(b[5..9].try_into().unwrap());
    assert_eq!(header_version(&before), 1);
    admin.remove_user("bob", &mut |_, _| {}).unwrap();
    for key in [META_USERS, b"registry".as_slice()] {
        let now = store.get(space::META, key).unwrap().unwrap();
        assert_eq!(
            header_version(&now),
            2,
            "re-sealed under the new registry key"
        );
    }
    // The users record bob could read and re-seal, put back: it no longer opens.
    drop(admin);
    let mut b = carnet_storage::Batch::new();
    b.put(space::META, META_USERS, before);
    store.commit(b).unwrap();
    match Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)) {
        Err(Error::Integrity(e)) => assert!(e.problem().contains("registry key version 1"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_old_keyring_and_key_store_with_the_old_passphrase_open_nothing_written_after_a_change() {
    let (store, mut v) = vault(2);
    let old_root = root(&store);
    let old_keys = store.read_doc(KEYS_DOC).unwrap().unwrap();
    v.change_passphrase_with(&pass("admin's brand new passphrase"), None, &mut |_, _| {})
        .unwrap();
    let id = PatientId::new("p1").unwrap();
    v.add_note(
        &id,
        NewNote::new(NoteBody::new(b"after the change".to_vec()).unwrap()),
    )
    .unwrap();
    drop(v);
    // The attacker: today's records, the key files of a backup taken before, the old
    // passphrase.
    store.replace_doc(ROOT_DOC, &old_root).unwrap();
    store.replace_doc(KEYS_DOC, &old_keys).unwrap();
    // The registry records are sealed under a registry key those old files never held: the
    // old passphrase opens no vault at all.
    match Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)) {
        Err(Error::Integrity(e)) => assert!(e.problem().contains("registry key"), "{e}"),
        Ok(old) => match old.read_notes(&id) {
            Err(Error::Integrity(_)) => {}
            other => panic!("a note written after the change opened: {other:?}"),
        },
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_passphrase_change_can_raise_the_argon2id_settings() {
    let (_store, mut v) = vault(2);
    let raised = KdfParams::new(16, 2, 1).unwrap();
    let r = v
        .change_passphrase_with(
            &pass("admin's brand new passphrase"),
            Some(raised),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(
        r.rotation.to_epoch,
        r.rotation.from_epoch + 1,
        "the master key rotates"
    );
    assert_eq!(v.kdf_params("admin"), Some(raised));
}

#[test]
fn a_format_1_vault_upgrades_and_its_slots_follow_one_by_one() {
    let (store, mut admin) = vault(1);
    let id = PatientId::new("p1").unwrap();
    let before = admin.read_notes(&id).unwrap();
    assert_eq!(admin.format(), 1);
    let up = admin.upgrade(&mut |_, _| {}).unwrap();
    assert_eq!((up.from_format, up.to_format), (1, 2));
    assert_eq!(up.patients, 1);
    assert_eq!(up.legacy_slots, 2, "bob's and carol's slots wait for them");
    assert!(admin.verify(&mut |_, _| {}).unwrap().is_ok());
    assert!(admin.unfinished().unwrap().is_empty());
    // The records written in format 1 read as they did; new ones are format 2.
    let after = admin.read_notes(&id).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(after[0].written_by, None);
    let n = admin
        .add_note(&id, NewNote::new(NoteBody::new(b"after".to_vec()).unwrap()))
        .unwrap();
    assert_eq!(
        admin.note(&id, &n).unwrap().written_by.as_deref(),
        Some("admin")
    );
    // Carol has not unlocked since: still open to injection (format 1's hole), bob has.
    drop(admin);
    let bob = Vault::unlock(Arc::clone(&store), "bob", &pass(BOB)).unwrap();
    assert!(
        bob.unlocked_legacy_slot(),
        "bob's slot was legacy until now"
    );
    drop(bob);
    let bob = Vault::unlock(Arc::clone(&store), "bob", &pass(BOB)).unwrap();
    assert!(!bob.unlocked_legacy_slot());
    drop(bob);
    let forged = EpochKey::from_bytes(1, [0x66; 32]);
    let injected = inject(&root(&store), &forged, &[]);
    assert!(is_mac_failure(&unlock_keyring(&injected, "bob", BOB)));
    assert!(is_mac_failure(&unlock_keyring(&injected, "admin", ADMIN)));
    let got = unlock_keyring(&injected, "carol", CAROL).unwrap();
    assert_eq!(got.bytes_to_wrap(), forged.bytes_to_wrap());
    assert_eq!(admin_status(&store).legacy_slots, 1);
    // Upgrading again changes nothing.
    let mut admin = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
    let again = admin.upgrade(&mut |_, _| {}).unwrap();
    assert_eq!((again.from_format, again.patients), (2, 0));
}

#[test]
fn verify_holds_patients_written_in_format_1_to_the_upgrade_baseline() {
    let (store, mut admin) = vault(1);
    let older = carnet_storage::MemStore::new();
    copy_all(&store, &older);
    let id = PatientId::new("p1").unwrap();
    // An import: format 1's log names no patient for it.
    let mut imp = admin.import();
    imp.add(
        NewPatient::new(id.clone()),
        NewNote::new(NoteBody::new(b"second, format 1".to_vec()).unwrap()),
    )
    .unwrap();
    imp.finish().unwrap();
    admin.upgrade(&mut |_, _| {}).unwrap();
    // p1's manifest and notes put back as the older copy had them (the log left whole): the
    // baseline entry records the state the upgrade saw.
    let mut b = carnet_storage::Batch::new();
    for sp in [space::MANIFESTS, space::NOTES] {
        for r in store.scan_prefix(sp, &[]) {
            b.delete(sp, r.unwrap().0);
        }
    }
    store.commit(b).unwrap();
    let mut b = carnet_storage::Batch::new();
    for sp in [space::MANIFESTS, space::NOTES] {
        for r in older.scan_prefix(sp, &[]) {
            let (k, v) = r.unwrap();
            b.put(sp, k, v);
        }
    }
    store.commit(b).unwrap();
    let report = admin.verify(&mut |_, _| {}).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind() == ProblemKind::RolledBack && p.location().starts_with("manifest")),
        "{:?}",
        report.problems
    );
}

fn copy_all(from: &MemStore, to: &MemStore) {
    let mut b = carnet_storage::Batch::new();
    for sp in [
        space::META,
        space::PATIENTS,
        space::MANIFESTS,
        space::NOTES,
        space::LOG,
    ] {
        for r in from.scan_prefix(sp, &[]) {
            let (k, v) = r.unwrap();
            b.put(sp, k, v);
        }
    }
    to.commit(b).unwrap();
    for d in [ROOT_DOC, KEYS_DOC] {
        to.replace_doc(d, &from.read_doc(d).unwrap().unwrap())
            .unwrap();
    }
}

/// Crash safety of the upgrade: a failure at each of its writes in turn leaves a vault that
/// opens, verifies and reads, and running the upgrade again finishes it.
#[test]
fn an_upgrade_interrupted_at_any_write_opens_verifies_and_resumes() {
    use carnet_storage::FaultyStore;
    let fresh = || {
        let (store, v) = vault(1);
        drop(v);
        store
    };
    let counting = Arc::new(FaultyStore::new(fresh(), u64::MAX));
    let mut v = Vault::unlock(Arc::clone(&counting), "admin", &pass(ADMIN)).unwrap();
    v.upgrade(&mut |_, _| {}).unwrap();
    drop(v);
    let total = counting.writes();
    assert!(total >= 6, "the upgrade makes several writes ({total})");
    let id = PatientId::new("p1").unwrap();
    for n in 1..=total {
        let store = fresh();
        let faulty = Arc::new(FaultyStore::new(Arc::clone(&store), n));
        let mut v = Vault::unlock(Arc::clone(&faulty), "admin", &pass(ADMIN)).unwrap();
        let _ = v.upgrade(&mut |_, _| {});
        drop(v);
        for user in ["admin", "bob"] {
            let p = if user == "admin" { ADMIN } else { BOB };
            let v = Vault::unlock(Arc::clone(&store), user, &pass(p))
                .unwrap_or_else(|e| panic!("after a failure at write {n}, {user}: {e}"));
            let r = v.verify(&mut |_, _| {}).unwrap();
            assert!(r.is_ok(), "after a failure at write {n}: {:?}", r.problems);
            assert_eq!(v.read_notes(&id).unwrap().len(), 1);
        }
        let mut v = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
        v.upgrade(&mut |_, _| {}).unwrap();
        assert_eq!(v.format(), 2);
        assert!(
            v.unfinished().unwrap().is_empty(),
            "after a failure at write {n}"
        );
        assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
    }
}
