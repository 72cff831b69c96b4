//! The command-line contract (docs/cli.md), command by command, exit code by
//! exit code, against the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use carnet_storage::SledStore;
use carnet_tests::{TestVault, INIT, PASS};
use serde_json::json;

#[test]
fn init_creates_once_and_refuses_a_second_time() {
    let v = TestVault::init();
    let before = v.files();
    let r = v.run(&INIT);
    let r = r.expect(1);
    assert!(r.stderr.contains("already holds a vault"), "{}", r.stderr);
    assert_eq!(before.len(), v.files().len(), "nothing was added");
}

#[test]
fn init_warns_below_the_default_kdf_and_refuses_out_of_range_parameters() {
    let v = TestVault::new();
    let r = v.run(&INIT).expect(0);
    assert!(r.stderr.contains("warning"), "{}", r.stderr);
    let v = TestVault::new();
    let r = v.run(&["init", "--kdf-memory-mib", "4"]).expect(2);
    assert!(r.stderr.contains("out of range"), "{}", r.stderr);
    let r = v.run(&["init", "--kdf-memory-mib", "100000"]).expect(2);
    assert!(r.stderr.contains("out of range"), "{}", r.stderr);
    assert!(!v.dir.exists(), "nothing was created");
}

#[test]
fn short_empty_or_missing_passphrases_are_usage_errors() {
    let v = TestVault::new();
    std::fs::write(&v.pass_file, "short\n").unwrap();
    let r = v.run(&["init", "--kdf-memory-mib", "8"]).expect(2);
    assert!(r.stderr.contains("at least 12 characters"), "{}", r.stderr);
    std::fs::write(&v.pass_file, "").unwrap();
    let r = v.run(&["init"]).expect(2);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
    assert!(!v.dir.exists());

    let v = TestVault::init();
    let mut c = v.cmd(&["patient", "list"]);
    c.env_remove("CARNET_PASSPHRASE_FILE");
    let r = carnet_tests::run_cmd(c, None).expect(2);
    assert!(r.stderr.contains("--passphrase-file"), "{}", r.stderr);
}

#[test]
fn wrong_passphrase_and_unknown_user_exit_3_and_change_nothing() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p1"]).expect(0);
    let before = v.files();
    std::fs::write(&v.pass_file, "not the right passphrase\n").unwrap();
    let r = v.run(&["patient", "add", "p2"]).expect(3);
    assert!(r.stderr.contains("wrong passphrase"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    std::fs::write(&v.pass_file, format!("{PASS}\n")).unwrap();
    v.run(&["--user", "mallory", "patient", "list"]).expect(3);
    let after = v.files();
    let root = |f: &Vec<(std::path::PathBuf, Vec<u8>)>| {
        f.iter()
            .find(|(p, _)| p.ends_with("root"))
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(root(&before), root(&after), "the keyring is unchanged");
    assert_eq!(
        v.run(&["patient", "list", "--json"])
            .expect(0)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn patients_add_list_show_with_json_shapes() {
    let v = TestVault::init();
    v.run(&[
        "patient",
        "add",
        "FR-1",
        "--name",
        "Ana Lima",
        "--birth-date",
        "1984-02-29",
    ])
    .expect(0);
    v.run(&["patient", "add", "FR-2"]).expect(0);
    let r = v.run(&["patient", "add", "FR-1"]).expect(1);
    assert!(r.stderr.contains("already exists"));
    v.add_note("FR-1", "x", &[]);
    let list = v.run(&["patient", "list", "--json"]).expect(0).json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], "FR-1");
    assert_eq!(list[0]["name"], "Ana Lima");
    assert_eq!(list[0]["birth_date"], "1984-02-29");
    assert_eq!(list[0]["notes"], 1);
    assert_eq!(list[1]["name"], serde_json::Value::Null);
    let one = v
        .run(&["patient", "show", "FR-2", "--json"])
        .expect(0)
        .json();
    assert_eq!(one["id"], "FR-2");
    assert_eq!(one["notes"], 0);
    let text = v.run(&["patient", "show", "FR-1"]).expect(0).stdout_str();
    assert!(
        text.contains("Ana Lima") && text.contains("1984-02-29"),
        "{text}"
    );
    v.run(&["patient", "show", "FR-9"]).expect(4);
    v.run(&["patient", "add", "FR-3", "--birth-date", "1984-02-30"])
        .expect(2);
}

#[test]
fn bad_patient_ids_are_usage_errors() {
    let v = TestVault::init();
    v.run(&["patient", "add", ""]).expect(2);
    v.run(&["patient", "add", &"x".repeat(257)]).expect(2);
    v.run(&["patient", "add", &"é".repeat(128)]).expect(0);
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut c = v.cmd(&["patient", "add"]);
        c.arg(std::ffi::OsStr::from_bytes(b"bad\xff"));
        carnet_tests::run_cmd(c, None).expect(2);
    }
}

#[test]
fn notes_add_list_show_amend_history() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p"]).expect(0);
    let n1 = v.add_note(
        "p",
        "first body\n",
        &["--author", "Dr A", "--kind", "consultation"],
    );
    let file = v.tmp.path().join("body.bin");
    let binary: Vec<u8> = (0..=255u8).collect();
    std::fs::write(&file, &binary).unwrap();
    let n2 = v
        .run(&["note", "add", "p", "--file", file.to_str().unwrap()])
        .expect(0)
        .stdout_str()
        .trim()
        .to_string();

    // show: byte for byte, nothing added.
    assert_eq!(
        v.run(&["note", "show", "p", &n1]).expect(0).stdout,
        b"first body\n"
    );
    assert_eq!(v.run(&["note", "show", "p", &n2]).expect(0).stdout, binary);
    let j = v
        .run(&["note", "show", "p", &n2, "--json"])
        .expect(0)
        .json();
    assert!(
        j.get("body").is_none() && j["body_base64"].is_string(),
        "{j}"
    );
    let j = v
        .run(&["note", "show", "p", &n1, "--json"])
        .expect(0)
        .json();
    assert_eq!(j["body"], "first body\n");
    assert_eq!(j["author"], "Dr A");
    assert_eq!(j["kind"], "consultation");
    assert_eq!(j["bytes"], 11);
    assert_eq!(j["version"], 1);
    assert!(j["created_at"].as_str().unwrap().ends_with('Z'));

    // amend: a new version; the old one stays readable.
    let r = v
        .run_stdin(
            &["note", "amend", "p", &n1, "--author", "Dr B"],
            b"second body",
        )
        .expect(0);
    assert_eq!(r.stdout_str().trim(), n1);
    assert_eq!(
        v.run(&["note", "show", "p", &n1]).expect(0).stdout,
        b"second body"
    );
    let h = v
        .run(&["note", "history", "p", &n1, "--json"])
        .expect(0)
        .json();
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0]["version"].clone(), h[0]["body"].clone()),
        (json!(1), json!("first body\n"))
    );
    assert_eq!(
        (h[1]["version"].clone(), h[1]["body"].clone()),
        (json!(2), json!("second body"))
    );
    assert_eq!(h[1]["author"], "Dr B");
    assert_eq!(h[1]["kind"], "consultation", "the kind is kept");
    let text = v.run(&["note", "history", "p", &n1]).expect(0).stdout_str();
    assert!(text.contains("first body") && text.contains("second body"));

    // list: order of addition, current versions.
    let l = v.run(&["note", "list", "p", "--json"]).expect(0).json();
    let l = l.as_array().unwrap();
    assert_eq!(
        l.iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![n1.as_str(), n2.as_str()]
    );
    assert_eq!(l[0]["version"], 2);
    assert!(l[0].get("body").is_none());
    for key in ["id", "created_at", "author", "kind", "bytes", "version"] {
        assert!(l[1].get(key).is_some(), "note list has {key}");
    }
}

#[test]
fn unknown_patients_and_notes_exit_4() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p"]).expect(0);
    v.run(&["patient", "add", "q"]).expect(0);
    let n = v.add_note("p", "body", &[]);
    v.run_stdin(&["note", "add", "nobody"], b"x").expect(4);
    v.run(&["note", "list", "nobody"]).expect(4);
    v.run(&["note", "show", "q", &n]).expect(4);
    v.run(&["note", "show", "p", "not-a-note-id"]).expect(4);
    v.run(&["note", "show", "p", &"0".repeat(32)]).expect(4);
    v.run(&["note", "history", "p", &"0".repeat(32)]).expect(4);
    v.run_stdin(&["note", "amend", "p", &"0".repeat(32)], b"x")
        .expect(4);
}

#[test]
fn bodies_over_16_mib_are_refused_and_nothing_is_written() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p"]).expect(0);
    let big = vec![b'a'; 16 * 1024 * 1024 + 1];
    let r = v.run_stdin(&["note", "add", "p"], &big).expect(1);
    assert!(r.stderr.contains("16 MiB"), "{}", r.stderr);
    assert_eq!(
        v.run(&["patient", "show", "p", "--json"]).expect(0).json()["notes"],
        0
    );
    let exact = vec![b'a'; 16 * 1024 * 1024];
    let id = v
        .run_stdin(&["note", "add", "p"], &exact)
        .expect(0)
        .stdout_str();
    assert_eq!(
        v.run(&["note", "show", "p", id.trim()])
            .expect(0)
            .stdout
            .len(),
        exact.len()
    );
}

#[test]
fn a_vault_in_use_is_waited_for_then_exits_6() {
    let v = TestVault::init();
    let held = SledStore::open(&v.dir).unwrap();
    // `--wait 0`: the one second every open allows, then exit 6 without a word of waiting.
    let r = v.run(&["--wait", "0", "patient", "list"]).expect(6);
    assert!(r.stderr.contains("in use"), "{}", r.stderr);
    assert!(!r.stderr.contains("waiting"), "{}", r.stderr);
    // Waiting says what for, then gives up with exit 6.
    let r = v.run(&["--wait", "1", "patient", "list"]).expect(6);
    assert!(
        r.stderr.contains("waiting for another carnet command") && r.stderr.contains("in use"),
        "{}",
        r.stderr
    );
    // Released while it waits: the command goes on.
    let child = v.cmd(&["--wait", "20", "patient", "list", "--json"]);
    let waiter = std::thread::spawn(move || carnet_tests::run_cmd(child, None));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(held);
    let r = waiter.join().unwrap().expect(0);
    assert!(
        r.stderr.contains("waiting for another carnet command"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json(), serde_json::json!([]));
}

/// Eight desks reading the same chart at once (issue 14): each takes the vault's lock only once
/// its passphrase is read and waits for the others, so none fails.
#[test]
fn eight_desks_at_once_all_get_their_chart() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p1"]).expect(0);
    let n = v.add_note("p1", "allergie: pénicilline", &[]);
    let desks: Vec<_> = (0..8)
        .map(|_| {
            let c = v.cmd(&["note", "show", "p1", &n]);
            std::thread::spawn(move || carnet_tests::run_cmd(c, None))
        })
        .collect();
    for d in desks {
        let r = d.join().unwrap().expect(0);
        assert!(r.stdout_str().contains("pénicilline"));
    }
}

#[test]
fn a_missing_vault_or_a_foreign_directory_is_a_clear_failure() {
    let v = TestVault::new();
    let r = v.run(&["patient", "list"]).expect(1);
    assert!(r.stderr.contains("no vault"), "{}", r.stderr);
    std::fs::create_dir_all(&v.dir).unwrap();
    std::fs::write(v.dir.join("notes.txt"), "unrelated").unwrap();
    v.run(&["verify"]).expect(1);
    let r = v.run(&["init", "--kdf-memory-mib", "8"]).expect(1);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_dir(&v.dir).unwrap().count(),
        1,
        "the directory is untouched"
    );
}

#[test]
fn import_reports_bad_lines_and_writes_nothing_then_imports_good_files() {
    let v = TestVault::init();
    let bad = v.tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            "{\"patient_id\":\"p1\",\"body\":\"ok\"}\n",
            "{\"patient_id\":\"p1\"}\n",
            "\n",
            "{\"patient_id\":\"p1\",\"body\":\"x\",\"created_at\":\"yesterday\"}\n",
            "{\"patient_id\":7,\"body\":\"x\"}\n",
            "{\"patient_id\":\"p2\",\"body\":\"x\",\"birth_date\":\"1999-02-29\"}\n",
            "{\"patient_id\":\"p2\",\"body\":\"CANARY-IN-A-TRUNCATED-LINE"
        ),
    )
    .unwrap();
    let r = v.run(&["import", bad.to_str().unwrap()]).expect(1);
    for n in [2, 4, 5, 6, 7] {
        assert!(
            r.stderr.contains(&format!("line {n}:")),
            "line {n} reported: {}",
            r.stderr
        );
    }
    assert!(
        !r.stderr.contains("line 1:") && !r.stderr.contains("line 3:"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("CANARY"),
        "no note text in errors: {}",
        r.stderr
    );
    assert_eq!(
        v.run(&["patient", "list", "--json"]).expect(0).json(),
        json!([])
    );

    let good = v.tmp.path().join("good.jsonl");
    let mut lines = String::new();
    for i in 0..2500 {
        lines += &serde_json::to_string(&json!({
            "patient_id": format!("P{}", i % 10),
            "name": format!("Name {}", i % 10),
            "author": "Dr Who",
            "kind": "import",
            "created_at": "2020-05-01T10:00:00+02:00",
            "body": format!("imported note {i}"),
        }))
        .unwrap();
        lines.push('\n');
    }
    std::fs::write(&good, lines).unwrap();
    let r = v
        .run(&["import", good.to_str().unwrap(), "--json"])
        .expect(0);
    assert_eq!(
        r.json(),
        json!({"patients_created": 10, "notes_imported": 2500})
    );
    let notes = v.run(&["note", "list", "P3", "--json"]).expect(0).json();
    assert_eq!(notes.as_array().unwrap().len(), 250);
    assert_eq!(notes[0]["created_at"], "2020-05-01T08:00:00Z");
    assert_eq!(
        v.run(&["patient", "show", "P3", "--json"]).expect(0).json()["name"],
        "Name 3"
    );
    v.run(&["verify"]).expect(0);
}

#[test]
fn search_finds_case_insensitive_matches_in_current_versions() {
    let v = TestVault::init();
    v.run(&["patient", "add", "a"]).expect(0);
    v.run(&["patient", "add", "b"]).expect(0);
    let n1 = v.add_note("a", "Allergic to PENICILLIN since 2001.", &[]);
    v.add_note("b", "penicillin tolerated", &[]);
    v.add_note("b", "nothing relevant", &[]);
    let hits = v.run(&["search", "penicillin", "--json"]).expect(0).json();
    assert_eq!(hits.as_array().unwrap().len(), 2);
    assert_eq!(hits[0]["patient_id"], "a");
    assert_eq!(hits[0]["note_id"], n1.as_str());
    assert!(hits[0]["snippet"].as_str().unwrap().contains("PENICILLIN"));
    let one = v
        .run(&["search", "penicillin", "--patient", "b"])
        .expect(0)
        .stdout_str();
    assert_eq!(one.lines().count(), 1);
    assert!(one.starts_with("b\t"), "{one}");
    v.run_stdin(&["note", "amend", "a", &n1], b"no allergy after all")
        .expect(0);
    assert_eq!(
        v.run(&["search", "penicillin", "--json"])
            .expect(0)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    v.run(&["search", "x", "--patient", "nobody"]).expect(4);
    v.run(&["search", ""]).expect(2);
}

#[test]
fn verify_reports_json_and_exits_0_on_a_clean_vault() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p"]).expect(0);
    v.add_note("p", "x", &[]);
    let r = v.run(&["verify", "--json"]).expect(0).json();
    assert_eq!(r["ok"], true);
    assert_eq!(r["problems"], json!([]));
    // keyring, vault keys, registry, users; patient, key, manifest; the note; the log's head
    // and 4 entries (the fence made and the recovery key by init, patient add, note add); the
    // fence of key operations
    assert_eq!(r["records_checked"], 4 + 3 + 1 + (1 + 4) + 1);
}

#[test]
fn global_options_work_before_and_after_the_subcommand() {
    let v = TestVault::init();
    let mut c = v.cmd(&[]);
    c.env_remove("CARNET_VAULT")
        .env_remove("CARNET_PASSPHRASE_FILE");
    c.args([
        "--json",
        "--vault",
        v.dir.to_str().unwrap(),
        "patient",
        "list",
    ]);
    c.args(["--passphrase-file", v.pass_file.to_str().unwrap()]);
    let r = carnet_tests::run_cmd(c, None).expect(0);
    assert_eq!(r.json(), json!([]));
}

#[test]
fn usage_errors_exit_2_and_help_teaches() {
    let v = TestVault::init();
    v.run(&["patient", "frobnicate"]).expect(2);
    v.run(&["note", "add"]).expect(2);
    let help = v.run(&["note", "add", "--help"]).expect(0).stdout_str();
    assert!(help.contains("Example"), "{help}");
    let help = v.run(&["import", "--help"]).expect(0).stdout_str();
    assert!(
        help.contains("nothing is imported"),
        "import --help says what happens to bad lines: {help}"
    );
}

#[test]
fn the_demo_runs_and_finds_no_plaintext() {
    let v = TestVault::new();
    let dir = v.tmp.path().join("demo");
    let r = v
        .run(&["demo", "--dir", dir.to_str().unwrap(), "--json"])
        .expect(0)
        .json();
    assert_eq!(r["problems"], 0);
    assert_eq!(r["plaintext_found"], 0);
    assert!(r["files_scanned"].as_u64().unwrap() > 0);
}

#[test]
fn export_gives_every_version_of_every_note_and_is_logged() {
    let v = TestVault::init();
    v.run(&["patient", "add", "p", "--name", "Ana"]).expect(0);
    let n1 = v.add_note("p", "one", &["--author", "Dr A"]);
    let n2 = v.add_note("p", "two", &[]);
    v.run_stdin(&["note", "amend", "p", &n1], b"one, amended")
        .expect(0);
    let e = v.run(&["export", "p"]).expect(0).json();
    assert_eq!(e["format"], "carnet-export-v1");
    assert_eq!(e["id"], "p");
    assert_eq!(e["name"], "Ana");
    let notes = e["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0]["id"], n1.as_str());
    assert_eq!(notes[1]["id"], n2.as_str());
    let versions = notes[0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["body"], "one");
    assert_eq!(versions[1]["body"], "one, amended");
    assert_eq!(versions[0]["author"], "Dr A");
    v.run(&["export", "nobody"]).expect(4);
    let log = v
        .run(&["audit", "--patient", "p", "--json"])
        .expect(0)
        .json();
    assert!(log
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "export" && e["outcome"] == "ok"));
}

#[test]
fn completions_and_man_page_are_generated() {
    let v = TestVault::new();
    let bash = v.run(&["completions", "bash"]).expect(0).stdout_str();
    assert!(
        bash.contains("carnet") && bash.contains("rotate-master"),
        "bash completion"
    );
    let man = v.run(&["man"]).expect(0).stdout_str();
    assert!(
        man.contains(".TH carnet") || man.contains(".TH CARNET"),
        "{}",
        &man[..man.len().min(200)]
    );
    v.run(&["completions", "cobol"]).expect(2);
}

#[test]
fn importing_the_same_file_twice_adds_nothing_unless_asked() {
    let v = TestVault::init();
    let f = v.tmp.path().join("n.jsonl");
    std::fs::write(
        &f,
        "{\"patient_id\":\"p\",\"body\":\"one\"}\n{\"patient_id\":\"p\",\"body\":\"two\"}\n",
    )
    .unwrap();
    let file = f.to_str().unwrap();
    let r = v.run(&["import", file, "--json"]).expect(0).json();
    assert_eq!(r["notes_imported"], 2);
    let r = v.run(&["import", file, "--json"]).expect(0);
    assert_eq!(r.json()["notes_imported"], 0);
    assert!(r.stderr.contains("already imported"), "{}", r.stderr);
    assert_eq!(
        v.run(&["import", "--again", file, "--json"])
            .expect(0)
            .json()["notes_imported"],
        2
    );
    assert_eq!(
        v.run(&["patient", "show", "p", "--json"]).expect(0).json()["notes"],
        4
    );
}

#[test]
fn a_guessable_new_passphrase_is_accepted_with_a_warning() {
    let v = carnet_tests::TestVault::new();
    // Thirteen letters of one word: zxcvbn's "somewhat guessable" (under 10^8 guesses).
    carnet_tests::write_secret(&v.pass_file, "monmotdepasse\n");
    let r = v.run(&carnet_tests::INIT).expect(0);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("guessed"),
        "{}",
        r.stderr
    );
    v.run(&["patient", "list"]).expect(0);
}

#[test]
fn a_new_patient_shows_a_random_reference_found_nowhere_in_the_vault_files() {
    let v = TestVault::init();
    v.run(&["patient", "add", "FR-REF-1"]).expect(0);
    v.run(&["patient", "add", "FR-REF-2"]).expect(0);
    let shown = v
        .run(&["--json", "patient", "show", "FR-REF-1"])
        .expect(0)
        .json();
    let r = shown["ref"].as_str().unwrap().to_string();
    assert_eq!(r.len(), 32);
    assert!(r
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let listed = v.run(&["--json", "patient", "list"]).expect(0).json();
    assert_eq!(listed[0]["ref"], r.as_str(), "stable");
    assert_ne!(listed[1]["ref"], r.as_str(), "one per patient");
    // Only inside the patient's encrypted record: neither its hex nor its bytes are stored.
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&r[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for (path, contents) in v.files() {
        for needle in [r.as_bytes(), &bytes[..]] {
            assert!(
                !contents.windows(needle.len()).any(|w| w == needle),
                "{path:?}"
            );
        }
    }
}
