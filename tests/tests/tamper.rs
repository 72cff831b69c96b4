//! The tamper test: every record of a vault on disk, flipped, deleted or swapped with another,
//! makes `verify` exit 5, and `note show` refuses rather than return altered data.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use carnet_storage::{Batch, SledStore, Space, Store};
use carnet_tests::TestVault;

const SPACES: [&str; 5] = ["meta", "patients", "manifests", "notes", "log"];

struct Fixture {
    v: TestVault,
    notes: Vec<(String, String, Vec<u8>)>,
}

fn fixture() -> Fixture {
    let v = TestVault::init();
    let mut notes = Vec::new();
    for p in ["alice", "bob"] {
        v.run(&["patient", "add", p, "--name", &format!("{p} n")])
            .expect(0);
    }
    for (p, body) in [("alice", "a1"), ("alice", "a2"), ("bob", "b1")] {
        let id = v.add_note(p, body, &[]);
        notes.push((p.to_string(), id, body.as_bytes().to_vec()));
    }
    v.run_stdin(&["note", "amend", "alice", &notes[0].1], b"a1 v2")
        .expect(0);
    notes[0].2 = b"a1 v2".to_vec();
    Fixture { v, notes }
}

fn records(dir: &std::path::Path) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
    let s = SledStore::open(dir).unwrap();
    let mut out = Vec::new();
    for name in SPACES {
        let sp = Space::new(name);
        for r in s.scan_prefix(sp, &[]) {
            let (k, v) = r.unwrap();
            out.push((sp, k, v));
        }
    }
    out
}

fn write(dir: &std::path::Path, sp: Space, key: &[u8], value: Option<&[u8]>) {
    let s = SledStore::open(dir).unwrap();
    let mut b = Batch::new();
    match value {
        Some(v) => b.put(sp, key.to_vec(), v.to_vec()),
        None => b.delete(sp, key.to_vec()),
    }
    s.commit(b).unwrap();
    s.flush().unwrap();
}

fn assert_detected(f: &Fixture, what: &str) {
    let r = f.v.run(&["verify", "--json"]);
    assert!(
        r.code == 5 || r.code == 3,
        "{what}: verify exited {} (stderr: {})",
        r.code,
        r.stderr
    );
    if r.code == 5 && !r.stdout.is_empty() {
        let j = r.json();
        assert_eq!(j["ok"], false, "{what}");
        assert!(!j["problems"].as_array().unwrap().is_empty(), "{what}");
    }
    for (p, id, body) in &f.notes {
        let r = f.v.run(&["note", "show", p, id]);
        match r.code {
            0 => assert_eq!(&r.stdout, body, "{what}: note show returned altered data"),
            3 | 5 => assert!(r.stdout.is_empty(), "{what}: output despite a refusal"),
            c => panic!("{what}: note show exited {c}: {}", r.stderr),
        }
    }
}

#[test]
fn every_record_flipped_deleted_or_swapped_is_detected() {
    let f = fixture();
    let dir = f.v.dir.clone();
    let all = records(&dir);
    // meta: registry, users, log head, the fence of key operations; patients; manifests;
    // notes; the log's 8 entries (the fence made and the recovery key by init, 2 patient add,
    // 3 note add, 1 note amend)
    assert_eq!(all.len(), 4 + 2 + 2 + 4 + 8, "the fixture's records");
    // Each case starts from a copy of the intact vault: the checks append to the access log,
    // so putting one record back afterwards would roll the log back.
    let pristine = f.v.tmp.path().join("pristine");
    carnet_tests::copy_dir(&dir, &pristine);
    // On a machine that never saw the vault, each time: this machine would refuse the copy
    // as a rollback, and what is proved here is that each record's damage is detected.
    let case = |what: &str, sp: Space, k: &[u8], value: Option<&[u8]>| {
        std::fs::remove_dir_all(&dir).unwrap();
        carnet_tests::copy_dir(&pristine, &dir);
        f.v.forget_state();
        write(&dir, sp, k, value);
        assert_detected(&f, what);
    };
    for (i, (sp, k, val)) in all.iter().enumerate() {
        let name = format!("{}#{i}", sp.name());
        let mut flipped = val.clone();
        let at = val.len() / 2;
        flipped[at] ^= 0x20;
        case(
            &format!("flip of byte {at} of {name}"),
            *sp,
            k,
            Some(&flipped),
        );
        case(&format!("deletion of {name}"), *sp, k, None);
        if let Some((_, _, other)) = all
            .iter()
            .find(|(s2, k2, v2)| s2 == sp && k2 != k && v2 != val)
        {
            case(
                &format!("swap of {name} with another {} record", sp.name()),
                *sp,
                k,
                Some(other),
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    carnet_tests::copy_dir(&pristine, &dir);
    f.v.forget_state();
    f.v.run(&["verify"]).expect(0);
}

#[test]
fn a_damaged_key_store_is_detected() {
    let f = fixture();
    let keys = f.v.dir.join("keys");
    let good = std::fs::read(&keys).unwrap();
    for at in (0..good.len()).step_by(good.len() / 12) {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        std::fs::write(&keys, &bad).unwrap();
        assert_detected(&f, &format!("flip of byte {at} of the key store"));
    }
    std::fs::write(&keys, &good[..good.len() - 10]).unwrap();
    assert_detected(&f, "a truncated key store");
    std::fs::remove_file(&keys).unwrap();
    assert_detected(&f, "a deleted key store");
    std::fs::write(&keys, &good).unwrap();
    f.v.run(&["verify"]).expect(0);
}

#[test]
fn a_damaged_keyring_is_refused_without_a_panic() {
    let f = fixture();
    let root = f.v.dir.join("root");
    let good = std::fs::read(&root).unwrap();
    for at in [0, 9, 12, 30, 60, 100, 200, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        std::fs::write(&root, &bad).unwrap();
        let r = f.v.run(&["note", "show", "alice", &f.notes[0].1]);
        assert!(
            [1, 3, 5].contains(&r.code),
            "byte {at}: exit {} {}",
            r.code,
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
    std::fs::write(&root, &good[..good.len() / 2]).unwrap();
    f.v.run(&["verify"]).expect(5);
    let mut future = good.clone();
    future[9] = 9; // format version 9
    std::fs::write(&root, &future).unwrap();
    let r = f.v.run(&["verify"]).expect(1);
    assert!(r.stderr.contains("newer"), "{}", r.stderr);
    std::fs::write(&root, &good).unwrap();
    f.v.run(&["verify"]).expect(0);
}

#[test]
fn damaged_engine_files_are_an_integrity_failure_with_one_line() {
    let f = fixture();
    let store = f.v.dir.join("store");
    f.v.run(&["verify"]).expect(0);
    let snap = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .expect("sled keeps a snapshot");
    let good = std::fs::read(&snap).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x10;
    std::fs::write(&snap, &bad).unwrap();
    for args in [&["verify"][..], &["patient", "list"]] {
        let r = f.v.run(args).expect(5);
        assert!(r.stdout.is_empty(), "{args:?}");
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    }
    std::fs::write(&snap, &good).unwrap();
    f.v.run(&["verify"]).expect(0);
}
