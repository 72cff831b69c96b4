//! Frozen test vectors: vaults written by earlier versions must open and read exactly.
//! `golden/v2/` (format 2) is described at its tests below.
//!
//! - `golden/v1/`: format 1 (keyring version 1, record format 1), made by
//!   `golden/make-v1.sh` with Carnet 0.1.0: three patients (one imported), a binary note, a
//!   UTF-8 note, an amended note, then a master-key rotation (epoch 2) and a patient-key
//!   rotation (G-001 at key version 2); a recovery key (`recovery-key.txt`) and a second user,
//!   `nurse`, a clinician (`nurse-passphrase.txt`). `expected/` holds what each read printed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use carnet_tests::{copy_dir, TestVault};

fn golden(version: &str) -> TestVault {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(version);
    let v = TestVault::new();
    // sled writes on open, so the checked-in files are never opened in place.
    copy_dir(&src.join("vault"), &v.dir);
    // The checked-in secrets are copied to files of their own, private as carnet requires.
    carnet_tests::write_secret(
        &v.pass_file,
        std::fs::read(src.join("passphrase.txt")).unwrap(),
    );
    v
}

fn expected(version: &str, name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(version)
        .join("expected")
        .join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

#[test]
fn format_1_vault_opens_and_reads_exactly() {
    let v = golden("v1");
    assert_eq!(
        v.run(&["patient", "list", "--json"]).expect(0).json(),
        expected("v1", "patient-list.json")
    );
    for p in ["G-001", "G-002", "G-003"] {
        assert_eq!(
            v.run(&["note", "list", p, "--json"]).expect(0).json(),
            expected("v1", &format!("notes-{p}.json")),
            "notes of {p}"
        );
    }
    assert_eq!(histories(&v, "v1"), 3);
    // Every read above was logged: the log holds the generator's own `verify` entry and the
    // 7 reads of this test on top of what the generator's verify counted.
    let mut want = expected("v1", "verify.json");
    want["records_checked"] = (want["records_checked"].as_u64().unwrap() + 1 + 7).into();
    let mut got = v.run(&["verify", "--json"]).expect(0).json();
    // Fields added since the golden vault was made (the output is only ever extended).
    assert_eq!(
        got["unfinished"],
        serde_json::json!([]),
        "no operation left unfinished"
    );
    got.as_object_mut().unwrap().remove("unfinished");
    assert_eq!(got, want);
}

#[test]
fn format_1_vault_accepts_new_writes() {
    let v = golden("v1");
    let id = v.add_note("G-002", "written by a later version", &[]);
    assert_eq!(
        v.run(&["note", "show", "G-002", &id]).expect(0).stdout,
        b"written by a later version"
    );
    v.run(&["verify"]).expect(0);
}

#[test]
fn format_1_vault_keys_are_as_written() {
    let v = golden("v1");
    let s = v.run(&["key", "status", "--json"]).expect(0).json();
    assert_eq!(s["epoch"], 2);
    assert_eq!(s["unfinished"], serde_json::json!([]));
    let versions: Vec<u64> = s["records_per_patient_key_version"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2]);
}

#[test]
fn format_1_vault_opens_with_its_recovery_key_and_second_user() {
    let v = golden("v1");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/v1");
    let private = |name: &str| {
        let copy = v.tmp.path().join(name);
        carnet_tests::write_secret(&copy, std::fs::read(dir.join(name)).unwrap());
        copy
    };
    let key = private("recovery-key.txt");
    assert_eq!(
        v.run(&[
            "--recovery-key-file",
            key.to_str().unwrap(),
            "patient",
            "list",
            "--json"
        ])
        .expect(0)
        .json(),
        expected("v1", "patient-list.json")
    );
    let mut c = v.cmd(&["--user", "nurse", "patient", "list", "--json"]);
    c.env("CARNET_PASSPHRASE_FILE", private("nurse-passphrase.txt"));
    assert_eq!(
        carnet_tests::run_cmd(c, None).expect(0).json(),
        expected("v1", "patient-list.json")
    );
    let users = v.run(&["user", "list", "--json"]).expect(0).json();
    assert_eq!(
        users,
        serde_json::json!([{"name": "admin", "role": "admin"}, {"name": "nurse", "role": "clinician"}])
    );
}

#[test]
fn format_1_vault_refuses_a_wrong_passphrase() {
    let v = golden("v1");
    std::fs::write(&v.pass_file, "not the golden passphrase\n").unwrap();
    v.run(&["patient", "list"]).expect(3);
}

// ----- format 2 -----
//
// `golden/v2/`: format 2 (keyring version 2, record format 2 for notes, users and log
// entries), made by `golden/make-v2.sh`: the patients and notes of v1, the doctor's note amended
// by the nurse (`written_by`), a search, a second administrator added and revoked (registry and
// keyring keys version 2, a new recovery key), the admin's passphrase changed (a revocation of
// the old one), a master and a patient-key rotation; two slots (the nurse's and the recovery
// key's) behind the newest keyring key.

fn histories(v: &TestVault, version: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(version)
        .join("expected");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let Some(rest) = name
            .strip_prefix("history-")
            .and_then(|r| r.strip_suffix(".json"))
        else {
            continue;
        };
        let (patient, note) = rest.rsplit_once('-').unwrap();
        assert_eq!(
            v.run(&["note", "history", patient, note, "--json"])
                .expect(0)
                .json(),
            expected(version, &name),
            "history of {rest}"
        );
        n += 1;
    }
    n
}

#[test]
fn format_2_vault_opens_and_reads_exactly() {
    let v = golden("v2");
    assert_eq!(
        v.run(&["patient", "list", "--json"]).expect(0).json(),
        expected("v2", "patient-list.json")
    );
    for p in ["G-001", "G-002", "G-003"] {
        assert_eq!(
            v.run(&["note", "list", p, "--json"]).expect(0).json(),
            expected("v2", &format!("notes-{p}.json")),
            "notes of {p}"
        );
    }
    assert_eq!(histories(&v, "v2"), 3);
    assert_eq!(
        v.run(&["key", "status", "--json"]).expect(0).json(),
        expected("v2", "key-status.json")
    );
    let got = v.run(&["verify", "--json"]).expect(0).json();
    let want = expected("v2", "verify.json");
    assert_eq!(got["ok"], true);
    assert_eq!(got["problems"], serde_json::json!([]));
    // The reads of this test are logged on top of what the generator's verify counted.
    assert!(got["records_checked"].as_u64() > want["records_checked"].as_u64());
}

#[test]
fn format_2_vault_opens_with_its_recovery_key_and_second_user() {
    let v = golden("v2");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/v2");
    let private = |name: &str| {
        let copy = v.tmp.path().join(name);
        carnet_tests::write_secret(&copy, std::fs::read(dir.join(name)).unwrap());
        copy
    };
    let behind = |v: &TestVault| {
        v.run(&["key", "status", "--json"]).expect(0).json()["slots_behind"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(behind(&v), 2);
    let mut c = v.cmd(&["--user", "nurse", "patient", "list", "--json"]);
    c.env("CARNET_PASSPHRASE_FILE", private("nurse-passphrase.txt"));
    assert_eq!(
        carnet_tests::run_cmd(c, None).expect(0).json(),
        expected("v2", "patient-list.json")
    );
    assert_eq!(
        behind(&v),
        1,
        "the nurse's slot took the newest keyring key"
    );
    let key = private("recovery-key.txt");
    let r = v.run(&[
        "--recovery-key-file",
        key.to_str().unwrap(),
        "patient",
        "list",
        "--json",
    ]);
    assert_eq!(r.expect(0).json(), expected("v2", "patient-list.json"));
    assert_eq!(behind(&v), 0);
    let users = v.run(&["user", "list", "--json"]).expect(0).json();
    assert_eq!(
        users,
        serde_json::json!([{"name": "admin", "role": "admin"}, {"name": "nurse", "role": "clinician"}])
    );
}

#[test]
fn format_2_vault_accepts_new_writes_and_refuses_a_wrong_passphrase() {
    let v = golden("v2");
    let id = v.add_note("G-002", "written by a later version", &[]);
    let n = v
        .run(&["note", "show", "G-002", &id, "--json"])
        .expect(0)
        .json();
    assert_eq!(n["body"], "written by a later version");
    assert_eq!(n["written_by"], "admin");
    v.run(&["verify"]).expect(0);
    std::fs::write(&v.pass_file, "not the golden passphrase\n").unwrap();
    v.run(&["patient", "list"]).expect(3);
}
