//! The findings of the adversarial review of format 2 (the storage host, and a removed user who
//! kept their passphrase, their slot's keyring key and old copies of every file), each made with
//! the crate's own encoders and now refused. See ADR 0015 and docs/threat-model.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use carnet_storage::{
    Batch, DocName, EntryIter, FaultyStore, MemStore, Space, SpacedEntry, Store, StoreError,
};

use super::{Expected, Vault};
use crate::access::Role;
use crate::envelope::{seal_frame, Sealed};
use crate::keyring::{held_version, inject, splice_slot, Keyring, SlotSecret};
use crate::keys::{EpochKey, KeyringKey, WrappedKey};
use crate::keystore::{KeyStore, KEYS_DOC, ROOT_DOC};
use crate::records::{
    space, PatientKeyAt, VaultKeyV1, VaultKeysV1, PURPOSE_BLIND, PURPOSE_KEYRING, PURPOSE_LOG,
    PURPOSE_REGISTRY,
};
use crate::recovery::RecoveryKey;
use crate::sealing::VaultKeysRecord;
use crate::{Error, ProblemKind};

use super::attacks::{kdf, note, pass, pid, root, vault, ADMIN, BOB, CAROL};

const DAVE: &str = "dave's own long passphrase";

fn rolled_back<T>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Integrity(e)) if e.kind() == ProblemKind::RolledBack)
}

/// Records every version of the keyring written.
struct Recording {
    inner: Arc<MemStore>,
    roots: Mutex<Vec<Vec<u8>>>,
}
/// Every value put to META `revoke-job`, by any Recording.
static JOBS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
impl Store for Recording {
    fn get(&self, s: Space, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(s, k)
    }
    fn scan_prefix(&self, s: Space, p: &[u8]) -> EntryIter<'_> {
        self.inner.scan_prefix(s, p)
    }
    fn commit(&self, b: Batch) -> Result<(), StoreError> {
        for op in &b.ops {
            if let carnet_storage::Op::Put {
                space: sp,
                key,
                value,
            } = op
            {
                if *sp == space::META && key == b"revoke-job" {
                    JOBS.lock().unwrap().push(value.clone());
                }
            }
        }
        self.inner.commit(b)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn read_doc(&self, n: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read_doc(n)
    }
    fn replace_doc(&self, n: DocName, b: &[u8]) -> Result<(), StoreError> {
        if n == ROOT_DOC {
            self.roots.lock().unwrap().push(b.to_vec());
        }
        self.inner.replace_doc(n, b)
    }
    fn replace_all(
        &self,
        r: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        self.inner.replace_all(r)
    }
    fn append_doc(&self, n: DocName, b: &[u8]) -> Result<(), StoreError> {
        self.inner.append_doc(n, b)
    }
}

fn with_admin_dave() -> (Arc<MemStore>, RecoveryKey) {
    let (store, mut v) = vault(2);
    v.add_user("dave", Role::Admin, &pass(DAVE)).unwrap();
    let rk = v.rotate_recovery_key().unwrap();
    drop(v);
    (store, rk)
}

fn forged_key_store(vid: &[u8; 16], m: &EpochKey, kk: &KeyringKey) -> Vec<u8> {
    let rec = VaultKeysV1 {
        keys: vec![
            VaultKeyV1 {
                purpose: PURPOSE_BLIND,
                version: 1,
                key: [1; 32],
            },
            VaultKeyV1 {
                purpose: PURPOSE_REGISTRY,
                version: 1,
                key: [2; 32],
            },
            VaultKeyV1 {
                purpose: PURPOSE_LOG,
                version: 1,
                key: [3; 32],
            },
            VaultKeyV1 {
                purpose: PURPOSE_KEYRING,
                version: kk.version(),
                key: *kk.bytes_to_wrap(),
            },
        ],
    };
    let mut ks = KeyStore::new(m.epoch());
    ks.vault_keys = Some(WrappedKey::new(
        seal_frame::<VaultKeysRecord, _>(&m.vault_keys_wrap(), vid, &(), &rec).unwrap(),
    ));
    ks.encode(vid)
}

/// Finding 1: after a revocation, one patient's record and manifest put back under the key
/// version the removed user kept (and the newer key dropped from the key store): refused by
/// every read, write and `verify`, since the keyring holds the patient-key floor.
#[test]
fn a_patient_put_back_under_a_revoked_key_version_is_refused() {
    let (store, mut admin) = vault(2);
    let blind = admin.keys.blind(&pid());
    let old_record = store.get(space::PATIENTS, &blind.0).unwrap().unwrap();
    let old_manifest = store.get(space::MANIFESTS, &blind.0).unwrap().unwrap();
    admin.remove_user("bob", &mut |_, _| {}).unwrap();
    drop(admin);
    let mut b = Batch::new();
    b.put(space::PATIENTS, blind.0.to_vec(), old_record);
    b.put(space::MANIFESTS, blind.0.to_vec(), old_manifest);
    store.commit(b).unwrap();
    let keys = store.read_doc(KEYS_DOC).unwrap().unwrap();
    let vid = Keyring::parse(&root(&*store)).ok().unwrap().vault_id;
    let mut ks = KeyStore::parse(&keys, &vid).unwrap();
    ks.patient.remove(&PatientKeyAt { blind, version: 2 });
    store.replace_doc(KEYS_DOC, &ks.encode(&vid)).unwrap();
    let admin = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
    let report = admin.verify(&mut |_, _| {}).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind() == ProblemKind::RolledBack),
        "{:?}",
        report.problems
    );
    assert!(rolled_back(
        admin.add_note(&pid(), note("written after bob left"))
    ));
    assert!(rolled_back(admin.read_notes(&pid())));
}

/// Finding 2: the job record of a finished revocation put back while the next one is
/// interrupted does not cancel the next one's key renewal.
#[test]
fn an_old_revoke_job_put_back_cannot_cancel_a_revocation() {
    let (mem, admin) = vault(2);
    drop(admin);
    let rec = Arc::new(Recording {
        inner: Arc::clone(&mem),
        roots: Mutex::new(Vec::new()),
    });
    let mut admin = Vault::unlock(Arc::clone(&rec), "admin", &pass(ADMIN)).unwrap();
    JOBS.lock().unwrap().clear();
    admin.remove_user("carol", &mut |_, _| {}).unwrap();
    drop(admin);
    let old_job = JOBS.lock().unwrap().last().unwrap().clone();
    let blind = {
        let v = Vault::unlock(Arc::clone(&mem), "admin", &pass(ADMIN)).unwrap();
        v.keys.blind(&pid())
    };
    let version = |m: &MemStore| {
        Sealed::parse(&m.get(space::PATIENTS, &blind.0).unwrap().unwrap())
            .unwrap()
            .key_version
    };
    let before = version(&mem);
    // Bob's removal, stopped after step 2; then the old job record put back.
    let faulty = Arc::new(FaultyStore::new(Arc::clone(&mem), 4));
    let mut admin = Vault::unlock(Arc::clone(&faulty), "admin", &pass(ADMIN)).unwrap();
    assert!(admin.remove_user("bob", &mut |_, _| {}).is_err());
    drop(admin);
    let mut b = Batch::new();
    b.put(space::META, b"revoke-job".to_vec(), old_job);
    mem.commit(b).unwrap();
    let mut admin = Vault::unlock(Arc::clone(&mem), "admin", &pass(ADMIN)).unwrap();
    match admin.remove_user("bob", &mut |_, _| {}) {
        // Refused: the job record contradicts the keyring (or is behind its floor).
        Err(e) => assert!(matches!(e, Error::Integrity(_)), "{e}"),
        // Or finished properly: every patient at a new key version.
        Ok(_) => assert!(version(&mem) > before, "the renewal was skipped"),
    }
}

/// Finding 3 (a): the new master is never sealed to the old recovery key while an
/// administrator is removed: no keyring of the revocation opens with it at the new epoch.
#[test]
fn the_old_recovery_key_never_opens_the_new_master_of_an_administrators_removal() {
    let (mem, old_rk) = with_admin_dave();
    let rec = Arc::new(Recording {
        inner: Arc::clone(&mem),
        roots: Mutex::new(Vec::new()),
    });
    let mut admin = Vault::unlock(Arc::clone(&rec), "admin", &pass(ADMIN)).unwrap();
    let from = admin.epoch();
    let r = admin.remove_user("dave", &mut |_, _| {}).unwrap();
    assert!(r.recovery_key.is_some(), "a new recovery key was made");
    drop(admin);
    assert!(Vault::unlock_with_recovery_key(Arc::clone(&mem), "admin", &old_rk).is_err());
    let roots = rec.roots.lock().unwrap();
    for b in roots.iter() {
        let k = Keyring::parse(b).ok().unwrap();
        if let Ok(o) = k.unlock("admin", &SlotSecret::Recovery(&old_rk)) {
            assert_eq!(
                o.masters.current.epoch(),
                from,
                "only the old epoch's master"
            );
            assert!(o.masters.pending.is_none(), "not the next epoch's");
        }
    }
    let new = r.recovery_key.unwrap();
    assert!(Vault::unlock_with_recovery_key(Arc::clone(&mem), "admin", &new).is_ok());
}

/// Finding 3 (b): a failure at any write of an administrator's removal leaves either an
/// unfinished revocation (which running it again finishes) or an old recovery key that opens
/// nothing.
#[test]
fn a_failed_administrators_removal_never_leaves_the_old_recovery_key_working() {
    let (mem, _) = with_admin_dave();
    let counting = Arc::new(FaultyStore::new(Arc::clone(&mem), u64::MAX));
    let mut v = Vault::unlock(Arc::clone(&counting), "admin", &pass(ADMIN)).unwrap();
    let start = counting.writes();
    v.remove_user("dave", &mut |_, _| {}).unwrap();
    let total = counting.writes() - start;
    drop(v);
    for n in 1..=total {
        let (mem, old_rk) = with_admin_dave();
        let faulty = Arc::new(FaultyStore::new(Arc::clone(&mem), u64::MAX));
        let v = Vault::unlock(Arc::clone(&faulty), "admin", &pass(ADMIN)).unwrap();
        let start = faulty.writes();
        drop(v);
        let faulty = Arc::new(FaultyStore::new(Arc::clone(&mem), start + n));
        let mut v = Vault::unlock(Arc::clone(&faulty), "admin", &pass(ADMIN)).unwrap();
        let _ = v.remove_user("dave", &mut |_, _| {});
        drop(v);
        let mut admin = Vault::unlock(Arc::clone(&mem), "admin", &pass(ADMIN)).unwrap();
        let unfinished = !admin.unfinished().unwrap().is_empty();
        let old_opens = Vault::unlock_with_recovery_key(Arc::clone(&mem), "admin", &old_rk).is_ok();
        let untouched = admin.users().unwrap().iter().any(|u| u.name == "dave");
        assert!(
            unfinished || !old_opens || untouched,
            "write {n}: nothing unfinished and the old recovery key opens the vault"
        );
        if unfinished {
            admin.remove_user("dave", &mut |_, _| {}).unwrap();
            assert!(
                admin.unfinished().unwrap().is_empty(),
                "write {n}: finished"
            );
            assert!(
                Vault::unlock_with_recovery_key(Arc::clone(&mem), "admin", &old_rk).is_err(),
                "write {n}: the old recovery key, after the revocation was finished"
            );
        }
    }
}

/// Finding 5: an older copy of a remaining user's slot (holding the keyring key the removed
/// user knew) put back into today's keyring opens with the same passphrase; a process that
/// remembers the version it saw refuses it before writing anything.
#[test]
fn an_older_copy_of_a_keyed_slot_is_refused_by_a_process_that_saw_newer() {
    let (store, mut admin) = vault(2);
    let bob = Vault::unlock(Arc::clone(&store), "bob", &pass(BOB)).unwrap();
    let kept: Vec<KeyringKey> = bob.keys.keyring_keys_for_tests();
    drop(bob);
    let before_removal = root(&*store);
    admin.remove_user("bob", &mut |_, _| {}).unwrap();
    drop(admin);
    let carol = Vault::unlock(Arc::clone(&store), "carol", &pass(CAROL)).unwrap();
    let seen = Expected::new(carol.format(), carol.keyring_key_version());
    assert_eq!(seen.keyring_key_version, 2);
    drop(carol);
    let now = root(&*store);
    let forged = EpochKey::from_bytes(99, [0x66; 32]);
    let injected = inject(&splice_slot(&now, &before_removal, "carol"), &forged, &kept);
    store.replace_doc(ROOT_DOC, &injected).unwrap();
    let r = Vault::unlock_expecting(Arc::clone(&store), "carol", &pass(CAROL), &seen);
    assert!(rolled_back(r));
    assert_eq!(
        root(&*store),
        injected,
        "refused before anything was written"
    );
}

/// Finding 4: after an upgrade, the user's format-1 slot spliced into today's keyring with a
/// forged master and key store: a process that saw the slot re-protected refuses it before
/// the unlock writes anything (the unlock would otherwise re-protect it under the host's key).
#[test]
fn a_legacy_slot_put_back_is_refused_before_anything_is_written() {
    let (store, mut admin) = vault(1);
    let format1_root = root(&*store);
    admin.upgrade(&mut |_, _| {}).unwrap();
    let seen = Expected::new(admin.format(), admin.keyring_key_version());
    drop(admin);
    let now = root(&*store);
    let vid = Keyring::parse(&now).ok().unwrap().vault_id;
    let spliced = splice_slot(&now, &format1_root, "admin");
    assert_eq!(held_version(&spliced, "admin"), None, "legacy");
    let forged = EpochKey::from_bytes(1, [0x66; 32]);
    let host_k = KeyringKey::from_bytes(50, [0x77; 32]);
    let injected = inject(&spliced, &forged, &[]);
    store.replace_doc(ROOT_DOC, &injected).unwrap();
    store
        .replace_doc(KEYS_DOC, &forged_key_store(&vid, &forged, &host_k))
        .unwrap();
    let r = Vault::unlock_expecting(Arc::clone(&store), "admin", &pass(ADMIN), &seen);
    assert!(rolled_back(r));
    assert_eq!(root(&*store), injected, "nothing written");
    // A whole format-1 keyring put back is refused the same way.
    store.replace_doc(ROOT_DOC, &format1_root).unwrap();
    let r = Vault::unlock_expecting(Arc::clone(&store), "admin", &pass(ADMIN), &seen);
    assert!(rolled_back(r));
}

/// Finding 6: an upgrade interrupted after its first writes, then a slot written: the keyring
/// stays readable, the upgrade is reported unfinished, and running it again finishes it.
#[test]
fn a_slot_written_after_an_interrupted_upgrade_keeps_the_keyring_readable() {
    // Writes 1 and 2 take the fence of key operations (a commit, a flush); the upgrade's own
    // first writes follow.
    for fail_at in 4..=6u64 {
        let (store, v) = vault(1);
        drop(v);
        let faulty = Arc::new(FaultyStore::new(Arc::clone(&store), fail_at));
        let mut v = Vault::unlock(Arc::clone(&faulty), "admin", &pass(ADMIN)).unwrap();
        assert!(v.upgrade(&mut |_, _| {}).is_err());
        drop(v);
        let mut v = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
        if v.format() < 2 {
            assert!(
                !v.unfinished().unwrap().is_empty(),
                "fail_at {fail_at}: the upgrade is said unfinished"
            );
        }
        v.add_user("dave", Role::Clinician, &pass(DAVE)).unwrap();
        drop(v);
        let mut v = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN))
            .unwrap_or_else(|e| panic!("fail_at {fail_at}: {e}"));
        assert!(Vault::unlock(Arc::clone(&store), "dave", &pass(DAVE)).is_ok());
        v.upgrade(&mut |_, _| {}).unwrap();
        assert!(v.unfinished().unwrap().is_empty());
        assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
    }
}

/// Finding 7: many users changing their passphrase in turn, none unlocking again in between
/// (one keyring-key version held per slot): the keyring stays readable.
#[test]
fn many_keyring_key_versions_held_at_once_keep_the_keyring_readable() {
    let store = Arc::new(MemStore::new());
    let mut v = Vault::create(Arc::clone(&store), "admin", &pass(ADMIN), kdf()).unwrap();
    let names: Vec<String> = (1..=20).map(|i| format!("user{i:02}")).collect();
    let p = |n: &str, generation: u32| format!("{n}'s long passphrase number {generation}");
    for n in &names {
        v.add_user(n, Role::Clinician, &pass(&p(n, 0))).unwrap();
    }
    drop(v);
    for n in &names {
        let mut u = Vault::unlock(Arc::clone(&store), n, &pass(&p(n, 0)))
            .unwrap_or_else(|e| panic!("{n}: {e}"));
        u.change_passphrase(&pass(&p(n, 1))).unwrap();
    }
    let admin = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
    // Every user but the last changed before a newer version was made.
    assert_eq!(admin.key_status().unwrap().slots_behind, 19);
}

/// Finding 8: two interruptions in a row between a users record and its keyring are no false
/// alarm.
#[test]
fn two_interruptions_between_the_users_record_and_the_keyring_are_no_false_alarm() {
    let (store, v) = vault(2);
    drop(v);
    for name in ["dave", "erin"] {
        let counting = Arc::new(FaultyStore::new(Arc::clone(&store), u64::MAX));
        let v = Vault::unlock(Arc::clone(&counting), "admin", &pass(ADMIN)).unwrap();
        let start = counting.writes();
        drop(v);
        // The users record's commit and flush, then the keyring: fail the keyring.
        let faulty = Arc::new(FaultyStore::new(Arc::clone(&store), start + 3));
        let mut v = Vault::unlock(Arc::clone(&faulty), "admin", &pass(ADMIN)).unwrap();
        assert!(v.add_user(name, Role::Clinician, &pass(DAVE)).is_err());
        drop(v);
    }
    let mut v = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
    v.add_user("dave", Role::Clinician, &pass(DAVE)).unwrap();
    assert!(v.verify(&mut |_, _| {}).unwrap().is_ok());
    drop(v);
    assert!(Vault::unlock(Arc::clone(&store), "dave", &pass(DAVE)).is_ok());
}

/// Finding 9: the upgrade's job record deleted after the keyring switched: the keyring says
/// the baseline is still to write, and the upgrade writes it.
#[test]
fn deleting_the_upgrade_job_cannot_skip_the_baseline() {
    let (store, admin) = vault(1);
    drop(admin);
    let counting = Arc::new(FaultyStore::new(Arc::clone(&store), u64::MAX));
    let mut v = Vault::unlock(Arc::clone(&counting), "admin", &pass(ADMIN)).unwrap();
    let start = counting.writes();
    drop(v);
    // Fail the first write after the keyring switched: find it by trying each.
    for n in 1..20 {
        let (store, admin) = vault(1);
        drop(admin);
        let faulty = Arc::new(FaultyStore::new(Arc::clone(&store), start + n));
        v = Vault::unlock(Arc::clone(&faulty), "admin", &pass(ADMIN)).unwrap();
        let done = v.upgrade(&mut |_, _| {}).is_ok();
        drop(v);
        if done {
            break;
        }
        let mut b = Batch::new();
        b.delete(space::META, b"upgrade-job".to_vec());
        store.commit(b).unwrap();
        let mut admin = Vault::unlock(Arc::clone(&store), "admin", &pass(ADMIN)).unwrap();
        if admin.format() < 2 || !admin.keys.baseline_pending() {
            // Not switched yet, or the baseline already written: nothing to skip.
            continue;
        }
        assert!(
            !admin.unfinished().unwrap().is_empty(),
            "write {n}: unfinished"
        );
        let up = admin.upgrade(&mut |_, _| {}).unwrap();
        assert_eq!(up.patients, 1, "write {n}: the baseline was written");
        assert!(admin.unfinished().unwrap().is_empty());
    }
}
