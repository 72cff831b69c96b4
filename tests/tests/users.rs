//! Users and roles through the built binary: every command's role check (exit 7), user
//! add/list/remove, and that a removed user's passphrase opens nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use carnet_tests::{TestVault, INIT};
use serde_json::json;

/// A vault with an admin, a clinician `clin` and an auditor `aud`, one patient with one note.
fn clinic() -> (TestVault, String) {
    let v = TestVault::init();
    for (name, role) in [("clin", "clinician"), ("aud", "auditor")] {
        let f = v.tmp.path().join(format!("{name}.pass"));
        carnet_tests::write_secret(&f, format!("{name} has a long passphrase\n"));
        v.run(&[
            "user",
            "add",
            name,
            "--role",
            role,
            "--new-passphrase-file",
            f.to_str().unwrap(),
        ])
        .expect(0);
    }
    v.run(&["patient", "add", "p1"]).expect(0);
    let n = v.add_note("p1", "a note", &[]);
    (v, n)
}

fn as_user(v: &TestVault, user: &str, args: &[&str]) -> carnet_tests::Run {
    let mut c = v.cmd(args);
    c.env("CARNET_USER", user).env(
        "CARNET_PASSPHRASE_FILE",
        v.tmp.path().join(format!("{user}.pass")),
    );
    carnet_tests::run_cmd(c, Some(b"note body"))
}

#[test]
fn every_command_checks_the_role() {
    let (v, n) = clinic();
    let import = v.tmp.path().join("i.jsonl");
    std::fs::write(&import, "{\"patient_id\":\"p9\",\"body\":\"x\"}\n").unwrap();
    let newpass = v.tmp.path().join("np");
    carnet_tests::write_secret(&newpass, "a new long passphrase\n");
    let (imp, np) = (import.to_str().unwrap(), newpass.to_str().unwrap());
    // (command, clinician's exit, auditor's exit)
    let table: Vec<(Vec<&str>, i32, i32)> = vec![
        (vec!["patient", "add", "p2"], 0, 7),
        (vec!["patient", "list"], 0, 7),
        (vec!["patient", "show", "p1"], 0, 7),
        (vec!["note", "add", "p1"], 0, 7),
        (vec!["note", "list", "p1"], 0, 7),
        (vec!["note", "show", "p1", &n], 0, 7),
        (vec!["note", "amend", "p1", &n], 0, 7),
        (vec!["note", "history", "p1", &n], 0, 7),
        (vec!["import", imp], 0, 7),
        (vec!["search", "note"], 0, 7),
        (vec!["export", "p1"], 0, 7),
        (vec!["verify"], 0, 0),
        (vec!["key", "status"], 7, 7),
        (vec!["key", "rotate-master"], 7, 7),
        (vec!["key", "rotate-master", "--plan"], 7, 7),
        (vec!["key", "rotate-patient", "--all"], 7, 7),
        (vec!["patient", "erase", "p1", "--yes"], 7, 7),
        (
            vec!["user", "add", "eve", "--new-passphrase-file", np],
            7,
            7,
        ),
        (vec!["user", "list"], 7, 0),
        (vec!["audit"], 7, 0),
        (vec!["audit", "checkpoint"], 7, 0),
        (vec!["key", "rotate-recovery"], 7, 7),
        (vec!["user", "remove", "aud"], 7, 7),
    ];
    for (args, clin, aud) in &table {
        let r = as_user(&v, "clin", args);
        assert_eq!(r.code, *clin, "clinician: {args:?}: {}", r.stderr);
        let r = as_user(&v, "aud", args);
        assert_eq!(r.code, *aud, "auditor: {args:?}: {}", r.stderr);
        if r.code == 7 {
            assert!(r.stderr.contains("not permitted"), "{}", r.stderr);
        }
    }
    // Everyone may change their own passphrase.
    as_user(
        &v,
        "clin",
        &["key", "change-passphrase", "--new-passphrase-file", np],
    )
    .expect(0);
}

#[test]
fn users_are_added_listed_and_removed() {
    let (v, n) = clinic();
    let list = v.run(&["user", "list", "--json"]).expect(0).json();
    assert_eq!(
        list,
        json!([{"name": "admin", "role": "admin"}, {"name": "clin", "role": "clinician"}, {"name": "aud", "role": "auditor"}])
    );
    let f = v.tmp.path().join("x.pass");
    carnet_tests::write_secret(&f, "short\n");
    v.run(&[
        "user",
        "add",
        "x",
        "--new-passphrase-file",
        f.to_str().unwrap(),
    ])
    .expect(2);
    v.run(&[
        "user",
        "add",
        "clin",
        "--new-passphrase-file",
        v.tmp.path().join("clin.pass").to_str().unwrap(),
    ])
    .expect(2);
    v.run(&["user", "remove", "admin"]).expect(2);
    v.run(&["user", "remove", "nobody"]).expect(2);
    v.run(&["user", "remove", "clin"]).expect(0);
    as_user(&v, "clin", &["patient", "list"]).expect(3);
    assert_eq!(
        v.run(&["user", "list", "--json"])
            .expect(0)
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The remaining users read everything, old and new.
    assert_eq!(
        v.run(&["note", "show", "p1", &n]).expect(0).stdout,
        b"a note"
    );
    let later = v.add_note("p1", "after the removal", &[]);
    assert_eq!(
        v.run(&["note", "show", "p1", &later]).expect(0).stdout,
        b"after the removal"
    );
    let status = v.run(&["key", "status", "--json"]).expect(0).json();
    assert_eq!(status["epoch"], 2);
    assert_eq!(status["unfinished"], json!([]));
    v.run(&["verify"]).expect(0);
}

#[test]
fn recovery_drill_lose_every_passphrase_recover_set_a_new_one() {
    let v = carnet_tests::TestVault::new();
    let key_file = v.tmp.path().join("recovery.txt");
    v.run(
        &[
            &INIT[..],
            &["--recovery-key-out", key_file.to_str().unwrap()],
        ]
        .concat(),
    )
    .expect(0);
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(
        text.trim().split('-').count(),
        11,
        "11 groups a person can copy: {text}"
    );
    v.run(&["patient", "add", "p1"]).expect(0);
    let n = v.add_note("p1", "kept safe", &[]);

    // Every passphrase is lost.
    std::fs::write(&v.pass_file, "nobody remembers this one\n").unwrap();
    v.run(&["patient", "list"]).expect(3);

    // Recover with the key (no passphrase is read), and set a new passphrase.
    let key = key_file.to_str().unwrap();
    let new = v.tmp.path().join("new");
    carnet_tests::write_secret(&new, "the new admin passphrase\n");
    assert_eq!(
        v.run(&["--recovery-key-file", key, "note", "show", "p1", &n])
            .expect(0)
            .stdout,
        b"kept safe"
    );
    v.run(&[
        "--recovery-key-file",
        key,
        "key",
        "change-passphrase",
        "--new-passphrase-file",
        new.to_str().unwrap(),
    ])
    .expect(0);
    std::fs::copy(&new, &v.pass_file).unwrap();
    assert_eq!(
        v.run(&["note", "show", "p1", &n]).expect(0).stdout,
        b"kept safe"
    );

    // A typo is caught before any key derivation; a key of another vault does not open this one.
    let mut typo: Vec<char> = text.trim().chars().collect();
    typo[3] = if typo[3] == 'Z' { 'Y' } else { 'Z' };
    let typo_file = v.tmp.path().join("typo.txt");
    carnet_tests::write_secret(&typo_file, typo.into_iter().collect::<String>());
    let r = v
        .run(&[
            "--recovery-key-file",
            typo_file.to_str().unwrap(),
            "patient",
            "list",
        ])
        .expect(2);
    assert!(r.stderr.contains("mistyped"), "{}", r.stderr);

    // Rotating the recovery key voids the old one.
    let new_key = v.tmp.path().join("recovery2.txt");
    v.run(&[
        "key",
        "rotate-recovery",
        "--recovery-key-out",
        new_key.to_str().unwrap(),
    ])
    .expect(0);
    v.run(&["--recovery-key-file", key, "patient", "list"])
        .expect(3);
    v.run(&[
        "--recovery-key-file",
        new_key.to_str().unwrap(),
        "patient",
        "list",
    ])
    .expect(0);
    let printed = v.run(&["key", "rotate-recovery"]).expect(0).stdout_str();
    assert!(printed.contains("RECOVERY KEY"), "{printed}");
    v.run(&[
        "--recovery-key-file",
        new_key.to_str().unwrap(),
        "patient",
        "list",
    ])
    .expect(3);
    v.run(&["verify"]).expect(0);
}
