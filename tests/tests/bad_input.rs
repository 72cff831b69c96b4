//! Bad input on every path, as one table: each case gives the exit code and a piece of the
//! one-line message it must produce, and afterwards the vault must be unchanged and verify.
//! No case may panic or print a backtrace (`run_cmd` asserts it for every run).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use carnet_storage::SledStore;
use carnet_tests::{run_cmd, TestVault};

/// A small vault with one patient and one note; returns the note id.
fn vault() -> (TestVault, String) {
    let v = TestVault::init();
    v.run(&["patient", "add", "p1", "--name", "Ana"]).expect(0);
    let n = v.add_note("p1", "the note", &[]);
    (v, n)
}

/// What must not change: patients, notes and their bodies, and the vault must verify.
fn state(v: &TestVault, n: &str) -> String {
    let list = v.run(&["patient", "list", "--json"]).expect(0).stdout_str();
    let history = v
        .run(&["note", "history", "p1", n, "--json"])
        .expect(0)
        .stdout_str();
    v.run(&["verify"]).expect(0);
    list + &history
}

/// One case: what, arguments, passphrase file (if not the right one), exit code, message.
type Case<'a> = (
    &'a str,
    Vec<&'a str>,
    Option<&'a std::path::Path>,
    i32,
    &'a str,
);

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (v, n) = vault();
    let before = state(&v, &n);
    let big = v.tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; 16 * 1024 * 1024 + 1]).unwrap();
    let empty_pass = v.tmp.path().join("empty-pass");
    carnet_tests::write_secret(&empty_pass, "");
    let wrong_pass = v.tmp.path().join("wrong-pass");
    carnet_tests::write_secret(&wrong_pass, "definitely not it\n");
    let bad_json = v.tmp.path().join("bad.jsonl");
    std::fs::write(&bad_json, "{\"patient_id\":\"p1\",\"body\":\"ok\"}\n{not json}\n{\"patient_id\":\"p1\"}\n{\"patient_id\":1,\"body\":\"x\"}\n{\"patient_id\":\"p1\",\"body\":\"x\",\"birth_date\":\"2001-02-30\"}\n{\"patient_id\":\"p1\",\"body\":\"trunc").unwrap();
    let long_id = "x".repeat(257);
    let blank = v.tmp.path().join("blank");
    std::fs::write(&blank, " \n\t\n").unwrap();
    let empty_import = v.tmp.path().join("empty.jsonl");
    std::fs::write(
        &empty_import,
        "{\"patient_id\":\"p1\",\"body\":\"fine\"}\n{\"patient_id\":\"p1\",\"body\":\"  \"}\n",
    )
    .unwrap();
    let weakest = v.tmp.path().join("weakest");
    carnet_tests::write_secret(&weakest, "aaaaaaaaaaaa\n");
    let common = v.tmp.path().join("common");
    carnet_tests::write_secret(&common, "password1234\n");
    let cases: Vec<Case<'_>> = vec![
        (
            "wrong passphrase",
            vec!["note", "show", "p1", &n],
            Some(&wrong_pass),
            3,
            "wrong passphrase",
        ),
        (
            "empty passphrase file",
            vec!["patient", "list"],
            Some(&empty_pass),
            2,
            "empty",
        ),
        (
            "unknown patient",
            vec!["note", "list", "nobody"],
            None,
            4,
            "no such patient",
        ),
        (
            "unknown note",
            vec!["note", "show", "p1", "00000000000000000000000000000000"],
            None,
            4,
            "no such note",
        ),
        (
            "malformed note id",
            vec!["note", "show", "p1", "zz"],
            None,
            4,
            "no such note",
        ),
        (
            "empty id",
            vec!["patient", "add", ""],
            None,
            2,
            "1 to 256 bytes",
        ),
        (
            "id too long",
            vec!["patient", "add", &long_id],
            None,
            2,
            "1 to 256 bytes",
        ),
        (
            "body over 16 MiB",
            vec!["note", "add", "p1", "--file", big.to_str().unwrap()],
            None,
            1,
            "16 MiB",
        ),
        (
            "malformed import",
            vec!["import", bad_json.to_str().unwrap()],
            None,
            1,
            "nothing was imported",
        ),
        (
            "bad birth date",
            vec!["patient", "add", "p2", "--birth-date", "2001-02-30"],
            None,
            2,
            "real date",
        ),
        // Input a clinic would not mean.
        (
            "an empty note",
            vec!["note", "add", "p1", "--file", "/dev/null"],
            None,
            2,
            "empty",
        ),
        (
            "a note of blanks",
            vec!["note", "add", "p1", "--file", blank.to_str().unwrap()],
            None,
            2,
            "empty",
        ),
        (
            "an amendment of blanks",
            vec!["note", "amend", "p1", &n, "--file", blank.to_str().unwrap()],
            None,
            2,
            "empty",
        ),
        (
            "an import with an empty body",
            vec!["import", empty_import.to_str().unwrap()],
            None,
            1,
            "empty",
        ),
        (
            "a blank patient id",
            vec!["patient", "add", "   "],
            None,
            2,
            "blank",
        ),
        (
            "a birth date in the future",
            vec!["patient", "add", "p2", "--birth-date", "2999-01-01"],
            None,
            2,
            "future",
        ),
        (
            "the weakest new passphrase",
            vec![
                "key",
                "change-passphrase",
                "--new-passphrase-file",
                weakest.to_str().unwrap(),
            ],
            None,
            2,
            "too easy to guess",
        ),
        (
            "a common new passphrase",
            vec![
                "user",
                "add",
                "nurse",
                "--new-passphrase-file",
                common.to_str().unwrap(),
            ],
            None,
            2,
            "too easy to guess",
        ),
        ("unknown command", vec!["frobnicate"], None, 2, ""),
        (
            "bad since",
            vec!["audit", "--since", "tuesday"],
            None,
            2,
            "RFC 3339",
        ),
    ];
    for (what, args, pass, code, message) in cases {
        let mut c = v.cmd(&args);
        if let Some(p) = pass {
            c.env("CARNET_PASSPHRASE_FILE", p);
        }
        let r = run_cmd(c, None);
        assert_eq!(r.code, code, "{what}: {}", r.stderr);
        assert!(r.stderr.contains(message), "{what}: {}", r.stderr);
        if code != 2 || !message.is_empty() {
            assert_eq!(
                r.stderr.trim().lines().count().min(1),
                1,
                "{what}: an error line"
            );
        }
        assert!(r.stdout.is_empty(), "{what}: nothing on stdout");
        assert_eq!(state(&v, &n), before, "{what}: the vault changed");
    }
    // Invalid UTF-8 in an id.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut c = v.cmd(&["patient", "show"]);
        c.arg(std::ffi::OsStr::from_bytes(b"p\xff1"));
        run_cmd(c, None).expect(2);
    }
    // The vault in use by another process.
    {
        let _held = SledStore::open(&v.dir).unwrap();
        let r = v.run(&["--wait", "0", "note", "show", "p1", &n]).expect(6);
        assert!(r.stderr.contains("in use") && r.stdout.is_empty());
    }
    assert_eq!(state(&v, &n), before);
}

#[test]
fn broken_or_foreign_vault_directories_get_clear_errors() {
    // An empty directory, and one of unrelated files.
    let v = TestVault::new();
    std::fs::create_dir_all(&v.dir).unwrap();
    let r = v.run(&["patient", "list"]).expect(1);
    assert!(r.stderr.contains("no vault"), "{}", r.stderr);
    std::fs::write(v.dir.join("photo.jpg"), b"\xff\xd8\xff").unwrap();
    let r = v.run(&["verify"]).expect(1);
    assert!(r.stderr.contains("no vault"), "{}", r.stderr);

    // A keyring that is not one, truncated, or from a future format.
    let (v, n) = vault();
    let root = v.dir.join("root");
    let good = std::fs::read(&root).unwrap();
    for (what, bytes, codes) in [
        // Beside the vault's key store and records: a damaged keyring (exit 5), not "no vault".
        ("a foreign keyring", b"SQLite format 3\0".to_vec(), &[5][..]),
        (
            "a truncated keyring",
            good[..good.len() / 2].to_vec(),
            &[5][..],
        ),
        (
            "a damaged slot",
            {
                let mut b = good.clone();
                b[100] ^= 1;
                b
            },
            &[3, 5][..],
        ),
    ] {
        std::fs::write(&root, &bytes).unwrap();
        let r = v.run(&["note", "show", "p1", &n]);
        assert!(codes.contains(&r.code), "{what}: {} {}", r.code, r.stderr);
        assert!(r.stdout.is_empty(), "{what}");
    }
    let mut future = good.clone();
    future[9] = 7;
    std::fs::write(&root, &future).unwrap();
    let r = v.run(&["patient", "list"]).expect(1);
    assert!(r.stderr.contains("newer"), "{}", r.stderr);
    std::fs::write(&root, &good).unwrap();

    // The record store truncated mid-file: a clear error or a detected integrity problem.
    let db = v.dir.join("store/db");
    let data = std::fs::read(&db).unwrap();
    std::fs::write(&db, &data[..data.len() / 3]).unwrap();
    let r = v.run(&["note", "show", "p1", &n]);
    assert!(
        r.code == 0 || r.code == 1 || r.code == 5,
        "{} {}",
        r.code,
        r.stderr
    );
    if r.code == 0 {
        assert_eq!(r.stdout, b"the note", "never altered data");
    }
}

#[test]
fn a_read_only_vault_directory_is_refused_clearly() {
    let (v, _) = vault();
    use std::os::unix::fs::PermissionsExt;
    let original = std::fs::metadata(&v.dir).unwrap().permissions();
    std::fs::set_permissions(&v.dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = v.dir.join("probe");
    if std::fs::write(&probe, b"x").is_ok() {
        // Running as root: permissions do not apply, so there is nothing to test here.
        std::fs::remove_file(&probe).unwrap();
        eprintln!("skipped: the file system lets this user write a read-only directory (root)");
    } else {
        let r = v.run(&["patient", "list"]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("writable"), "{}", r.stderr);
    }
    std::fs::set_permissions(&v.dir, original).unwrap();
}
