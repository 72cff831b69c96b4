//! A storage host that can write (issue 12): what a local user or the host of the vault's
//! directory can no longer do against the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use carnet_tests::{files_under, run_cmd, write_secret, TestVault, INIT};

/// Runs `carnet args` under umask 022, the common default that made the vault world-readable.
fn under_umask_022(v: &TestVault, args: &[&str]) -> carnet_tests::Run {
    run_cmd(
        v.cmd_via(&["sh", "-c", "umask 022; exec \"$0\" \"$@\""], args),
        None,
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every directory under `dir` (and `dir` itself) is 0700 and every file 0600.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
                stack.push(p);
            }
        }
    }
    let files = files_under(dir);
    assert!(!files.is_empty());
    for (p, _) in files {
        assert_eq!(mode(&p), 0o600, "{} is {:o}", p.display(), mode(&p));
    }
}

#[test]
fn everything_carnet_creates_is_private_whatever_the_umask() {
    let v = TestVault::new();
    let rk = v.tmp.path().join("recovery.txt");
    let mut init = INIT.to_vec();
    init.extend(["--recovery-key-out", rk.to_str().unwrap()]);
    under_umask_022(&v, &init).expect(0);
    under_umask_022(&v, &["patient", "add", "P1", "--name", "Camille"]).expect(0);
    let note = v.tmp.path().join("note");
    std::fs::write(&note, vec![b'x'; 200_000]).unwrap();
    under_umask_022(&v, &["note", "add", "P1", "--file", note.to_str().unwrap()]).expect(0);
    under_umask_022(&v, &["key", "rotate-master"]).expect(0);
    under_umask_022(&v, &["key", "rotate-patient", "--all"]).expect(0);
    let backup = v.tmp.path().join("b.carnet");
    under_umask_022(&v, &["backup", backup.to_str().unwrap()]).expect(0);
    let rk2 = v.tmp.path().join("recovery2.txt");
    under_umask_022(
        &v,
        &[
            "key",
            "rotate-recovery",
            "--recovery-key-out",
            rk2.to_str().unwrap(),
        ],
    )
    .expect(0);
    assert_private(&v.dir);
    for f in [&rk, &rk2, &backup] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let restored = v.tmp.path().join("restored");
    let mut c = v.cmd_via(
        &["sh", "-c", "umask 022; exec \"$0\" \"$@\""],
        &["restore", backup.to_str().unwrap()],
    );
    c.env("CARNET_VAULT", &restored);
    run_cmd(c, None).expect(0);
    assert_private(&restored);
    // Nothing of the restore's staging is left beside it.
    let left: Vec<_> = std::fs::read_dir(v.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_vault_made_before_is_made_private_when_opened() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    for (p, _) in files_under(&v.dir) {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&v.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    v.run(&["patient", "list"]).expect(0);
    assert_private(&v.dir);
}

#[test]
fn a_link_planted_as_a_temporary_file_is_never_written_through() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    let victim = v.tmp.path().join("victim");
    std::fs::write(&victim, b"the host's file").unwrap();
    for tmp in ["root.tmp", "keys.tmp"] {
        std::os::unix::fs::symlink(&victim, v.dir.join(tmp)).unwrap();
    }
    v.run(&["key", "rotate-master"]).expect(0);
    v.run(&["key", "rotate-patient", "--all"]).expect(0);
    assert_eq!(std::fs::read(&victim).unwrap(), b"the host's file");
    v.run(&["verify"]).expect(0);
    v.run(&["patient", "show", "P1"]).expect(0);
}

#[test]
fn secret_files_others_can_read_are_refused() {
    let v = TestVault::init();
    let rk = v.tmp.path().join("rk");
    v.run(&[
        "key",
        "rotate-recovery",
        "--recovery-key-out",
        rk.to_str().unwrap(),
    ])
    .expect(0);
    for (file, args) in [
        (v.pass_file.clone(), vec!["patient", "list"]),
        (
            rk.clone(),
            vec![
                "--recovery-key-file",
                rk.to_str().unwrap(),
                "patient",
                "list",
            ],
        ),
    ] {
        for open in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(open)).unwrap();
            let r = v.run(&args).expect(2);
            assert!(
                r.stderr.contains("chmod 600") && r.stderr.contains("other users"),
                "{}",
                r.stderr
            );
            assert!(r.stdout.is_empty());
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        v.run(&args).expect(0);
    }
    // A new passphrase given in a file is a secret too.
    let np = v.tmp.path().join("np");
    write_secret(&np, "another long passphrase\n");
    std::fs::set_permissions(&np, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = v
        .run(&[
            "key",
            "change-passphrase",
            "--new-passphrase-file",
            np.to_str().unwrap(),
        ])
        .expect(2);
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);
}

#[test]
fn an_unfinished_revocation_stops_writes_and_warns_on_every_command() {
    use carnet_core::{Passphrase, Vault};
    use carnet_storage::{FaultyStore, SledStore};
    let v = TestVault::init();
    let bob = v.tmp.path().join("bob.pass");
    write_secret(&bob, "bob's long passphrase\n");
    v.run(&[
        "user",
        "add",
        "bob",
        "--new-passphrase-file",
        bob.to_str().unwrap(),
    ])
    .expect(0);
    v.run(&["patient", "add", "P1"]).expect(0);
    v.add_note("P1", "before the revocation", &[]);
    // `user remove bob` interrupted after its first durable step (the role gone, the job
    // record written), as a kill there would leave it (writes 1 and 2 take the fence of key
    // operations).
    {
        let store = FaultyStore::new(SledStore::open(&v.dir).unwrap(), 5);
        let mut vault =
            Vault::unlock(store, "admin", &Passphrase::new(carnet_tests::PASS.into())).unwrap();
        assert!(vault.remove_user("bob", &mut |_, _| {}).is_err());
    }
    let r = v.run(&["key", "status", "--json"]).expect(0);
    assert!(
        !r.json()["unfinished"].as_array().unwrap().is_empty(),
        "the revocation is unfinished"
    );
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("revocation"),
        "{}",
        r.stderr
    );

    // Writes are refused with a reason that names the command that finishes it.
    let r = v
        .run_stdin(&["note", "add", "P1"], b"under a retired key?")
        .expect(1);
    assert!(
        r.stderr.contains("revocation") && r.stderr.contains("carnet user remove NAME"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    v.run(&["patient", "add", "P2"]).expect(1);
    let import = v.tmp.path().join("in.jsonl");
    std::fs::write(&import, "{\"patient_id\":\"P1\",\"body\":\"imported\"}\n").unwrap();
    v.run(&["import", import.to_str().unwrap()]).expect(1);
    v.run(&["key", "rotate-patient", "--all"]).expect(1);
    // Reads go on, with the warning; verify reports it.
    let r = v.run(&["note", "list", "P1", "--json"]).expect(0);
    assert_eq!(r.json().as_array().unwrap().len(), 1, "nothing was added");
    assert!(r.stderr.contains("warning"), "{}", r.stderr);
    let r = v.run(&["verify", "--json"]).expect(0);
    assert!(!r.json()["unfinished"].as_array().unwrap().is_empty());
    let r = v.run(&["verify"]).expect(0);
    assert!(r.stdout_str().contains("UNFINISHED"), "{}", r.stdout_str());

    // Finishing it lets writes through again, without a warning.
    v.run(&["user", "remove", "bob"]).expect(0);
    let r = v
        .run_stdin(&["note", "add", "P1"], b"after the revocation")
        .expect(0);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    let r = v.run(&["verify", "--json"]).expect(0);
    assert!(r.json()["unfinished"].as_array().unwrap().is_empty());
}

/// `carnet` run on a machine whose memory is `state` (another machine's state directory).
fn on_machine(v: &TestVault, state: &Path, args: &[&str]) -> carnet_tests::Run {
    let mut c = v.cmd(args);
    c.env("CARNET_STATE_DIR", state);
    run_cmd(c, None)
}

#[test]
fn an_older_copy_put_back_is_refused_by_a_machine_that_saw_a_newer_state() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    let allergy = v.add_note("P1", "Allergic to penicillin.", &[]);
    let old = v.tmp.path().join("old-copy");
    carnet_tests::copy_dir(&v.dir, &old);
    let correction = v.add_note("P1", "Dosage corrected to 5 mg.", &[]);
    v.run(&["note", "show", "P1", &correction]).expect(0);

    // The storage host puts the older copy back: this machine refuses it, whatever the command.
    std::fs::remove_dir_all(&v.dir).unwrap();
    carnet_tests::copy_dir(&old, &v.dir);
    for args in [
        vec!["patient", "list"],
        vec!["note", "show", "P1", allergy.as_str()],
        vec!["note", "list", "P1"],
        vec!["verify"],
    ] {
        let r = v.run(&args).expect(5);
        assert!(r.stdout.is_empty(), "{args:?} showed nothing");
        assert!(
            r.stderr.contains("this machine saw") && r.stderr.contains("accept-rewind"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // A machine that never saw the vault here accepts it (trust on first use).
    let elsewhere = v.tmp.path().join("other-machine");
    on_machine(&v, &elsewhere, &["patient", "list"]).expect(0);
    // A deliberate rewind is accepted with one command, then everything works again.
    let r = v.run(&["audit", "accept-rewind", "--json"]).expect(0);
    assert!(r.json()["seen"]
        .as_str()
        .unwrap()
        .starts_with("carnet-log-checkpoint v1 "));
    v.run(&["note", "list", "P1"]).expect(0);
    v.run(&["verify"]).expect(0);
}

#[test]
fn a_log_truncated_behind_the_machine_is_refused() {
    use carnet_storage::{Batch, SledStore, Space, Store};
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    let old = v.tmp.path().join("old-copy");
    carnet_tests::copy_dir(&v.dir, &old);
    v.add_note("P1", "a note the host wants gone from the log", &[]);
    v.run(&["patient", "list"]).expect(0);
    // The log and its head put back as they were in the older copy (the rest left newer).
    fn records(s: &SledStore, sp: Space) -> Vec<(Vec<u8>, Vec<u8>)> {
        s.scan_prefix(sp, &[]).map(|r| r.unwrap()).collect()
    }
    let (log, meta) = (Space::new("log"), Space::new("meta"));
    let (old_log, old_head) = {
        let s = SledStore::open(&old).unwrap();
        let head = records(&s, meta)
            .into_iter()
            .find(|(k, _)| k == b"log-head")
            .unwrap()
            .1;
        (records(&s, log), head)
    };
    {
        let s = SledStore::open(&v.dir).unwrap();
        let mut b = Batch::new();
        for (k, _) in records(&s, log) {
            if !old_log.iter().any(|(o, _)| *o == k) {
                b.delete(log, k);
            }
        }
        b.put(meta, b"log-head".to_vec(), old_head);
        s.commit(b).unwrap();
        s.flush().unwrap();
    }
    let r = v.run(&["patient", "list"]).expect(5);
    assert!(r.stderr.contains("this machine saw"), "{}", r.stderr);
    v.run(&["verify"]).expect(5);
}

#[test]
fn a_restore_is_accepted_where_it_was_restored() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    let backup = v.tmp.path().join("b.carnet");
    v.run(&["backup", backup.to_str().unwrap()]).expect(0);
    v.add_note("P1", "after the backup", &[]);
    v.run(&["patient", "list"]).expect(0);
    std::fs::remove_dir_all(&v.dir).unwrap();
    v.run(&["restore", backup.to_str().unwrap()]).expect(0);
    let r = v.run(&["patient", "list", "--json"]).expect(0);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    v.run(&["verify"]).expect(0);
}

#[test]
fn a_damaged_or_unwritable_state_directory_is_only_a_warning() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    // Damaged: every file in it replaced by garbage.
    for e in std::fs::read_dir(v.state_dir()).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(".lock") {
            std::fs::write(&p, b"garbage").unwrap();
        }
    }
    let r = v.run(&["patient", "list"]).expect(0);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("damaged"),
        "{}",
        r.stderr
    );
    // And replaced by the state seen now.
    let r = v.run(&["patient", "list"]).expect(0);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    // Unwritable: a file where the directory should be.
    let blocked = v.tmp.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let r = on_machine(&v, &blocked, &["patient", "list"]).expect(0);
    assert!(r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn a_document_replaced_by_a_link_is_never_archived_nor_read() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    // The host replaces the key store by a link to the passphrase file of whoever runs the
    // nightly backup, hoping to find it in the archive.
    let keys = v.dir.join("keys");
    std::fs::rename(&keys, v.tmp.path().join("keys.real")).unwrap();
    std::os::unix::fs::symlink(&v.pass_file, &keys).unwrap();
    let archive = v.tmp.path().join("nightly.carnet");
    let r = v.run(&["backup", archive.to_str().unwrap()]).expect(5);
    assert!(r.stderr.contains("link"), "{}", r.stderr);
    assert!(!archive.exists(), "no archive");
    let partial: Vec<_> = std::fs::read_dir(v.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
    v.run(&["patient", "list"]).expect(5);
    // Also through a link planted among sled's files.
    std::fs::remove_file(&keys).unwrap();
    std::fs::rename(v.tmp.path().join("keys.real"), &keys).unwrap();
    v.run(&["patient", "list"]).expect(0);
    let conf = v.dir.join("store/conf");
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(v.tmp.path().join("created-through-a-link"), &conf).unwrap();
    v.run(&["patient", "list"]).expect(5);
    assert!(!v.tmp.path().join("created-through-a-link").exists());
}

#[test]
fn a_link_swapped_in_place_of_the_vault_is_still_the_same_location() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    let old = v.tmp.path().join("vault.old");
    carnet_tests::copy_dir(&v.dir, &old);
    v.add_note("P1", "written after the copy", &[]);
    // The host moves the vault aside and puts a link to the older copy at its path.
    std::fs::rename(&v.dir, v.tmp.path().join("vault.real")).unwrap();
    std::os::unix::fs::symlink(&old, &v.dir).unwrap();
    let r = v.run(&["note", "list", "P1"]).expect(5);
    assert!(r.stderr.contains("this machine saw"), "{}", r.stderr);
    // A refused rollback is still refused the next time (it was not remembered).
    v.run(&["note", "list", "P1"]).expect(5);
    v.run(&["patient", "list"]).expect(5);
}

#[test]
fn an_older_copy_found_at_a_new_path_is_warned_about() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    let old = v.tmp.path().join("old-copy");
    carnet_tests::copy_dir(&v.dir, &old);
    v.add_note("P1", "written after the copy", &[]);
    let mut c = v.cmd(&["patient", "list"]);
    c.env("CARNET_VAULT", &old);
    let r = run_cmd(c, None).expect(0);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("newer state"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_command_whose_output_pipe_closes_is_still_remembered() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    v.add_note("P1", "first", &[]);
    let old = v.tmp.path().join("old-copy");
    carnet_tests::copy_dir(&v.dir, &old);
    let note = v.tmp.path().join("note");
    std::fs::write(&note, b"written while the reader went away").unwrap();
    for _ in 0..2 {
        // Standard output is a pipe whose reader is already gone: printing the id fails
        // (EPIPE), and carnet stops quietly.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = v
            .cmd(&["note", "add", "P1", "--file", note.to_str().unwrap()])
            .stdout(writer)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
    // No other command ran since: only the two quiet ones can have remembered the notes.
    let newer = v.tmp.path().join("newer-copy");
    carnet_tests::copy_dir(&v.dir, &newer);
    std::fs::remove_dir_all(&v.dir).unwrap();
    carnet_tests::copy_dir(&old, &v.dir);
    v.run(&["note", "list", "P1"]).expect(5);
    std::fs::remove_dir_all(&v.dir).unwrap();
    carnet_tests::copy_dir(&newer, &v.dir);
    let r = v.run(&["note", "list", "P1", "--json"]).expect(0);
    assert_eq!(
        r.json().as_array().unwrap().len(),
        3,
        "both notes were written"
    );
}

#[test]
fn a_state_directory_others_can_change_is_not_trusted() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    std::fs::set_permissions(v.state_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = v.run(&["patient", "list"]).expect(0);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("other users"),
        "{}",
        r.stderr
    );
}

#[test]
fn older_records_behind_the_whole_log_fail_verify_with_a_checkpoint() {
    use carnet_storage::{Batch, SledStore, Space, Store};
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    let dose = v.add_note("P1", "Dosage: 10 mg.", &[]);
    let old = v.tmp.path().join("old-copy");
    carnet_tests::copy_dir(&v.dir, &old);
    let fix = v.tmp.path().join("fix");
    std::fs::write(&fix, b"Dosage corrected: 5 mg.").unwrap();
    v.run(&[
        "note",
        "amend",
        "P1",
        &dose,
        "--file",
        fix.to_str().unwrap(),
    ])
    .expect(0);
    v.add_note("P1", "Allergic to penicillin.", &[]);
    let cp = v.tmp.path().join("cp.txt");
    let line = v.run(&["audit", "checkpoint"]).expect(0).stdout_str();
    std::fs::write(&cp, line).unwrap();
    // The host puts the older patients, manifests and notes back, and leaves the log whole.
    fn records(s: &SledStore, sp: Space) -> Vec<(Vec<u8>, Vec<u8>)> {
        s.scan_prefix(sp, &[]).map(|r| r.unwrap()).collect()
    }
    let spaces = [
        Space::new("patients"),
        Space::new("manifests"),
        Space::new("notes"),
    ];
    let older: Vec<_> = {
        let s = SledStore::open(&old).unwrap();
        spaces.iter().map(|sp| (*sp, records(&s, *sp))).collect()
    };
    {
        let s = SledStore::open(&v.dir).unwrap();
        let mut b = Batch::new();
        for sp in spaces {
            for (k, _) in records(&s, sp) {
                b.delete(sp, k);
            }
        }
        s.commit(b).unwrap();
        let mut b = Batch::new();
        for (sp, rs) in older {
            for (k, val) in rs {
                b.put(sp, k, val);
            }
        }
        s.commit(b).unwrap();
        s.flush().unwrap();
    }
    // The chart reads as before the correction...
    let r = v.run(&["note", "show", "P1", &dose]).expect(0);
    assert_eq!(r.stdout, b"Dosage: 10 mg.");
    // ...but verify, holding the log against the records, says what was lost.
    let r = v
        .run(&["verify", "--checkpoint", cp.to_str().unwrap(), "--json"])
        .expect(5);
    let problems = r.json()["problems"].as_array().unwrap().clone();
    assert_eq!(
        problems
            .iter()
            .filter(|p| p["kind"] == "rolled_back")
            .count(),
        2,
        "{problems:?}"
    );
}
