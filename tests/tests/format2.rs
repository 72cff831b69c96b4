//! Format 2 against the built binary (issue 13): the format-1 golden vault upgrades, a
//! downgrade is refused on a machine that saw format 2, revoking an administrator replaces the
//! recovery key, a passphrase change may raise Argon2id, and the access log names every
//! patient a search showed and the user an operation concerned.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use carnet_tests::{copy_dir, run_cmd, write_secret, TestVault, INIT};

fn golden_v1() -> TestVault {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/v1");
    let v = TestVault::new();
    copy_dir(&src.join("vault"), &v.dir);
    write_secret(
        &v.pass_file,
        std::fs::read(src.join("passphrase.txt")).unwrap(),
    );
    v
}

fn expected_v1(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/v1/expected")
        .join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn secret(v: &TestVault, name: &str, text: &str) -> String {
    let p = v.tmp.path().join(name);
    write_secret(&p, text);
    p.to_str().unwrap().to_string()
}

#[test]
fn the_format_1_golden_vault_upgrades_and_reads_the_same() {
    let v = golden_v1();
    assert_eq!(
        v.run(&["key", "status", "--json"]).expect(0).json()["format"],
        1
    );
    let up = v.run(&["key", "upgrade", "--json"]).expect(0).json();
    assert_eq!(up["from_format"], 1);
    assert_eq!(up["to_format"], 2);
    assert_eq!(up["patients"], 3);
    // The nurse's slot and the recovery key's wait for their next use.
    assert_eq!(up["legacy_slots"], 2);
    let s = v.run(&["key", "status", "--json"]).expect(0).json();
    assert_eq!(s["format"], 2);
    assert_eq!(s["legacy_slots"], 2);
    assert_eq!(
        v.run(&["patient", "list", "--json"]).expect(0).json(),
        expected_v1("patient-list.json")
    );
    for p in ["G-001", "G-002", "G-003"] {
        assert_eq!(
            v.run(&["note", "list", p, "--json"]).expect(0).json(),
            expected_v1(&format!("notes-{p}.json")),
        );
    }
    v.run(&["verify"]).expect(0);
    // The nurse unlocks: her slot is upgraded.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/v1");
    let nurse = secret(
        &v,
        "nurse",
        &String::from_utf8(std::fs::read(src.join("nurse-passphrase.txt")).unwrap()).unwrap(),
    );
    let mut c = v.cmd(&["--user", "nurse", "patient", "list"]);
    c.env("CARNET_PASSPHRASE_FILE", &nurse);
    run_cmd(c, None).expect(0);
    assert_eq!(
        v.run(&["key", "status", "--json"]).expect(0).json()["legacy_slots"],
        1
    );
    // A new version written now says who wrote it.
    let id = v.add_note("G-002", "written in format 2", &[]);
    let n = v
        .run(&["note", "show", "G-002", &id, "--json"])
        .expect(0)
        .json();
    assert_eq!(n["written_by"], "admin");
    // Upgrading again is harmless.
    v.run(&["key", "upgrade"]).expect(0);
    v.run(&["verify"]).expect(0);
}

#[test]
fn a_format_1_keyring_put_back_is_refused_by_a_machine_that_saw_format_2() {
    let v = golden_v1();
    v.run(&["patient", "list"]).expect(0);
    let old_root = std::fs::read(v.dir.join("root")).unwrap();
    let old_keys = std::fs::read(v.dir.join("keys")).unwrap();
    v.run(&["key", "upgrade"]).expect(0);
    v.run(&["patient", "list"]).expect(0);
    std::fs::write(v.dir.join("root"), &old_root).unwrap();
    std::fs::write(v.dir.join("keys"), &old_keys).unwrap();
    let r = v.run(&["patient", "list"]).expect(5);
    assert!(r.stderr.contains("downgrade"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| !l.starts_with("carnet: warning"))
            .count(),
        1,
        "one line: {}",
        r.stderr
    );
}

#[test]
fn an_older_carnet_meeting_a_newer_keyring_says_so_in_one_line() {
    let v = TestVault::init();
    let root = v.dir.join("root");
    let mut bytes = std::fs::read(&root).unwrap();
    assert_eq!(&bytes[8..10], &[0, 2], "new vaults are format 2");
    bytes[9] = 3;
    std::fs::write(&root, &bytes).unwrap();
    let r = v.run(&["patient", "list"]).expect(1);
    assert!(r.stderr.contains("newer"), "{}", r.stderr);
}

#[test]
fn removing_an_administrator_replaces_the_recovery_key() {
    let v = TestVault::new();
    let rk = v.tmp.path().join("rk.txt");
    let mut init = INIT.to_vec();
    init.extend(["--recovery-key-out", rk.to_str().unwrap()]);
    v.run(&init).expect(0);
    let np = secret(&v, "np", "a second administrator's passphrase\n");
    v.run(&[
        "user",
        "add",
        "second",
        "--role",
        "admin",
        "--new-passphrase-file",
        &np,
    ])
    .expect(0);
    let rk2 = v.tmp.path().join("rk2.txt");
    let out = v
        .run(&[
            "user",
            "remove",
            "second",
            "--recovery-key-out",
            rk2.to_str().unwrap(),
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(out["recovery_key_replaced"], true);
    let with = |key: &Path| {
        v.run(&[
            "--recovery-key-file",
            key.to_str().unwrap(),
            "patient",
            "list",
        ])
    };
    with(&rk).expect(3);
    with(&rk2).expect(0);
    // A clinician's removal leaves the recovery key alone.
    let cp = secret(&v, "cp", "a clinician's own passphrase\n");
    v.run(&[
        "user",
        "add",
        "clin",
        "--role",
        "clinician",
        "--new-passphrase-file",
        &cp,
    ])
    .expect(0);
    let out = v
        .run(&["user", "remove", "clin", "--json"])
        .expect(0)
        .json();
    assert_eq!(out["recovery_key_replaced"], false);
    with(&rk2).expect(0);
}

#[test]
fn a_passphrase_change_rotates_the_keys_and_can_raise_argon2id() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    let before = v.run(&["key", "status", "--json"]).expect(0).json();
    let np = secret(&v, "np", "my brand new passphrase here\n");
    v.run(&[
        "key",
        "change-passphrase",
        "--new-passphrase-file",
        &np,
        "--kdf-memory-mib",
        "16",
        "--kdf-iterations",
        "2",
    ])
    .expect(0);
    v.run(&["patient", "list"]).expect(3);
    let mut c = v.cmd(&["key", "status", "--json"]);
    c.env("CARNET_PASSPHRASE_FILE", &np);
    let after = run_cmd(c, None).expect(0).json();
    assert_eq!(after["epoch"], before["epoch"].as_u64().unwrap() + 1);
    assert_eq!(after["kdf"]["memory_mib"], 16);
    assert_eq!(after["kdf"]["iterations"], 2);
    let versions: Vec<u64> = after["records_per_patient_key_version"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![2], "every patient has a new key version");
}

#[test]
fn the_audit_names_every_patient_a_search_showed_and_the_user_concerned() {
    let v = TestVault::init();
    for (p, body) in [
        ("P1", "sérologie VIH positive"),
        ("P2", "grippe"),
        ("P3", "VIH négatif"),
    ] {
        v.run(&["patient", "add", p]).expect(0);
        v.add_note(p, body, &[]);
    }
    v.run(&["search", "vih"]).expect(0);
    let np = secret(&v, "np", "a nurse's own passphrase\n");
    v.run(&[
        "user",
        "add",
        "nurse",
        "--role",
        "clinician",
        "--new-passphrase-file",
        &np,
    ])
    .expect(0);
    let log = v.run(&["audit", "--json"]).expect(0).json();
    let entries = log.as_array().unwrap();
    let search = entries.iter().rfind(|e| e["action"] == "search").unwrap();
    assert_eq!(search["patients"], serde_json::json!(["P1", "P3"]));
    let add = entries.iter().rfind(|e| e["action"] == "user add").unwrap();
    assert_eq!(add["subject_user"], "nurse");
    let p3 = v
        .run(&["audit", "--patient", "P3", "--json"])
        .expect(0)
        .json();
    assert!(p3
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "search"));
    let p2 = v
        .run(&["audit", "--patient", "P2", "--json"])
        .expect(0)
        .json();
    assert!(!p2
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "search"));
}
