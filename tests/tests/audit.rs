//! The access log through the built binary: what it records, filters, that it is itself
//! logged, tampering with entries, rollback behind a checkpoint, and fail-closed reads.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use carnet_storage::{Batch, SledStore, Space, Store};
use carnet_tests::{copy_dir, TestVault};
use serde_json::json;

const LOG: Space = Space::new("log");

fn entries(dir: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let s = SledStore::open(dir).unwrap_or_else(|e| panic!("opening the store: {e:?}"));
    s.scan_prefix(LOG, &[]).map(|r| r.unwrap()).collect()
}

fn put(dir: &std::path::Path, k: &[u8], v: Option<&[u8]>) {
    let s = SledStore::open(dir).unwrap_or_else(|e| panic!("opening the store: {e:?}"));
    let mut b = Batch::new();
    match v {
        Some(v) => b.put(LOG, k.to_vec(), v.to_vec()),
        None => b.delete(LOG, k.to_vec()),
    }
    s.commit(b).unwrap();
    s.flush().unwrap();
}

#[test]
fn the_log_records_who_did_what_to_whom_and_filters() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p1"]).expect(0);
    v.run(&["patient", "add", "p2"]).expect(0);
    let n = v.add_note("p1", "body", &[]);
    v.run(&["note", "show", "p1", &n]).expect(0);
    v.run(&["note", "show", "p2", &n]).expect(4);
    let all = v.run(&["audit", "--json"]).expect(0).json();
    let actions: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            // init's recovery key: the vault's first key operation makes the fence (ADR 0019)
            "key fence",
            "key rotate-recovery",
            "patient add",
            "patient add",
            "note add",
            "note show",
            "note show"
        ]
    );
    let all = &all.as_array().unwrap()[1..];
    let show = &all[4];
    assert_eq!(show["user"], "admin");
    assert_eq!(show["patient_id"], "p1");
    assert_eq!(show["note_id"], n.as_str());
    assert_eq!(show["outcome"], "ok");
    assert_eq!(all[5]["outcome"], "no such note");
    assert_eq!(all[0]["patient_id"], serde_json::Value::Null);
    for key in [
        "seq",
        "at",
        "user",
        "action",
        "patient_id",
        "note_id",
        "outcome",
    ] {
        assert!(show.get(key).is_some(), "entries have {key}");
    }

    // "Who read my record": by patient. The audit itself was logged.
    let p1 = v
        .run(&["audit", "--patient", "p1", "--json"])
        .expect(0)
        .json();
    assert_eq!(p1.as_array().unwrap().len(), 3);
    let again = v.run(&["audit", "--json"]).expect(0).json();
    assert_eq!(again.as_array().unwrap().last().unwrap()["action"], "audit");
    // By user (after `audit`, --user filters) and by time.
    assert_eq!(
        v.run(&["audit", "--user", "nobody", "--json"])
            .expect(0)
            .json(),
        json!([])
    );
    assert!(
        v.run(&["audit", "--user", "admin", "--json"])
            .expect(0)
            .json()
            .as_array()
            .unwrap()
            .len()
            >= 6
    );
    assert_eq!(
        v.run(&["audit", "--since", "2999-01-01T00:00:00Z", "--json"])
            .expect(0)
            .json(),
        json!([])
    );
    v.run(&["audit", "--since", "yesterday"]).expect(2);
}

#[test]
fn edited_removed_reordered_or_truncated_entries_are_detected() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p1"]).expect(0);
    v.add_note("p1", "x", &[]);
    v.add_note("p1", "y", &[]);
    let pristine = v.tmp.path().join("pristine");
    copy_dir(&v.dir, &pristine);
    let log = entries(&v.dir);
    assert!(log.len() >= 4);
    // Each case starts from the intact copy, on a machine that never saw the vault (which
    // would refuse the copy as a rollback): the log's own checks are what is proved here.
    let reset = || {
        std::fs::remove_dir_all(&v.dir).unwrap();
        copy_dir(&pristine, &v.dir);
        v.forget_state();
    };
    let detected = |what: &str| {
        let r = v.run(&["verify", "--json"]);
        assert_eq!(r.code, 5, "{what}: {}", r.stderr);
        v.run(&["audit"]).expect(5);
    };
    let mut edited = log[1].1.clone();
    let mid = edited.len() / 2;
    edited[mid] ^= 1;
    put(&v.dir, &log[1].0, Some(&edited));
    detected("an edited entry");
    reset();
    put(&v.dir, &log[1].0, None);
    detected("a removed entry");
    reset();
    put(&v.dir, &log[1].0, Some(&log[2].1));
    put(&v.dir, &log[2].0, Some(&log[1].1));
    detected("reordered entries");
    reset();
    put(&v.dir, &log[log.len() - 1].0, None);
    detected("a truncated log");
    reset();
    v.run(&["verify"]).expect(0);
}

#[test]
fn a_rollback_behind_a_checkpoint_is_detected() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p1"]).expect(0);
    let old = v.tmp.path().join("old-copy");
    copy_dir(&v.dir, &old);
    v.add_note("p1", "written after the copy", &[]);
    let line = v.run(&["audit", "checkpoint"]).expect(0).stdout_str();
    assert!(line.starts_with("carnet-log-checkpoint v1 "), "{line}");
    let cp = v.tmp.path().join("checkpoint.txt");
    std::fs::write(&cp, &line).unwrap();
    let cp = cp.to_str().unwrap();
    v.run(&["verify", "--checkpoint", cp]).expect(0);
    // Later entries do not matter; an older copy put back does.
    v.run(&["patient", "list"]).expect(0);
    v.run(&["verify", "--checkpoint", cp]).expect(0);
    std::fs::remove_dir_all(&v.dir).unwrap();
    copy_dir(&old, &v.dir);
    // This machine remembers the newer state and refuses the old copy at once...
    let r = v.run(&["verify"]).expect(5);
    assert!(r.stderr.contains("this machine saw"), "{}", r.stderr);
    // ...and a machine that never saw the vault learns of the rollback from the checkpoint.
    v.forget_state();
    v.run(&["verify"]).expect(0);
    v.forget_state();
    let r = v.run(&["verify", "--checkpoint", cp, "--json"]).expect(5);
    assert!(r.stdout_str().contains("rolled back"), "{}", r.stdout_str());
    std::fs::write(v.tmp.path().join("bad.txt"), "not a checkpoint").unwrap();
    v.run(&[
        "verify",
        "--checkpoint",
        v.tmp.path().join("bad.txt").to_str().unwrap(),
    ])
    .expect(2);
}

#[test]
fn a_read_whose_entry_cannot_be_written_shows_nothing() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p1"]).expect(0);
    let n = v.add_note("p1", "SECRET-BODY-TEXT", &[]);
    // Occupy the next log position, so the entry for the read cannot be appended.
    let next = entries(&v.dir).len() as u64;
    put(&v.dir, &next.to_be_bytes(), Some(b"blocker"));
    let r = v.run(&["note", "show", "p1", &n]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.is_empty(),
        "no plaintext when the log cannot be written"
    );
    assert!(!r.stderr.contains("SECRET"));
}
