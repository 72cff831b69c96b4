//! Crash points, enumerated: `carnet` is killed (SIGKILL) on entering its 1st, 2nd, 3rd...
//! write, positional write, sync, rename or removal, one point per run, through strace's
//! syscall injection (`-e inject=SYSCALL:signal=KILL:when=N`), until the command runs to its
//! end. Each run starts from a copy of the same vault. After every kill, the vault opens and
//! verifies and every note version written before reads back identical; a second kill at the
//! same point of the run that resumes changes nothing of that; and running the command once
//! more finishes it.
//!
//! The random-delay kills of `lifecycle.rs` sample time; this enumerates the points where the
//! files change, which is where a kill can tear something. It found that sled 0.34.7 could
//! not reopen a store after a kill while it was writing its snapshot (`SledStore::open` now
//! removes such a file).
//!
//! Needs `strace` on the `PATH`. Without it the test says so and passes, unless
//! `CARNET_REQUIRE_STRACE` is set, as `.ci/run` does (which also installs strace).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use carnet_tests::{copy_dir, populated, read_all, Contents, TestVault, PASS};
use serde_json::json;

/// Every system call by which `carnet` (std, sled, our store) changes or syncs a file.
const CHANGES: [&str; 11] = [
    "write",
    "pwrite64",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "rename",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "ftruncate",
];

fn strace() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("strace"))
        .find(|p| p.is_file())
}

/// One command to kill at each of its crash points.
struct Case {
    args: Vec<String>,
    stdin: Option<&'static [u8]>,
    /// May a note version that was not there before appear (with this body)?
    new_body: fn(&[u8]) -> bool,
    /// Patients the command may remove whole.
    removes: Option<&'static str>,
    /// The exit code of a run after the command completed, when that is not 0 (a second
    /// erase finds no such patient).
    done_code: Option<i32>,
    /// Checks that the command's work is complete (after its final, unkilled run).
    finished: fn(&TestVault, &Contents),
}

enum Outcome {
    Killed,
    Finished,
}

fn run_killed(
    v: &TestVault,
    strace: &Path,
    case: &Case,
    syscall: &str,
    n: u32,
    context: &str,
) -> Outcome {
    let inject = format!("inject=?{syscall}:signal=KILL:when={n}");
    let trace = format!("trace=?{syscall}");
    let wrapper = [
        strace.to_str().unwrap(),
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        &trace,
        "-e",
        &inject,
    ];
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let mut cmd = v.cmd_via(&wrapper, &args);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.stdin(if case.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().unwrap();
    if let (Some(body), Some(mut input)) = (case.stdin, child.stdin.take()) {
        use std::io::Write;
        // A kill before carnet reads its input is a broken pipe here: that is fine.
        let _ = input.write_all(body);
    }
    let out = child.wait_with_output().unwrap();
    match (out.status.code(), out.status.signal()) {
        (Some(0), _) => Outcome::Finished,
        (Some(c), _) if case.done_code == Some(c) => Outcome::Finished,
        // strace ends itself with the signal that killed its tracee.
        (_, Some(9)) | (Some(137), _) => Outcome::Killed,
        _ => panic!(
            "{context}: unexpected end {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The vault verifies, keeps every version of `before` (but a removed patient's), and holds
/// nothing new but what the command may add.
fn check_after_kill(v: &TestVault, before: &Contents, case: &Case, context: &str) {
    let pass = std::fs::read_to_string(&v.pass_file).unwrap();
    let now = read_all(&v.dir, pass.trim_end_matches('\n'), context);
    let removed = |p: &str| case.removes == Some(p) && !now.keys().any(|k| k.0 == p);
    for (k, body) in before {
        if !removed(&k.0) {
            assert_eq!(now.get(k), Some(body), "{context}: note {k:?}");
        }
    }
    for (k, body) in &now {
        if !before.contains_key(k) {
            assert!((case.new_body)(body), "{context}: unexpected note {k:?}");
        }
    }
}

fn no_new_note(_: &[u8]) -> bool {
    false
}

/// A key rotation: it adds and removes nothing, and `key status` shows nothing unfinished
/// after it.
fn rotation(args: &[&str]) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        stdin: None,
        new_body: no_new_note,
        removes: None,
        done_code: None,
        finished: rotation_finished,
    }
}

fn rotation_finished(v: &TestVault, _: &Contents) {
    let status = v.run(&["key", "status", "--json"]).expect(0).json();
    assert_eq!(status["unfinished"], json!([]), "a rotation is unfinished");
}

const NOTE: &[u8] = b"crash point note";

#[test]
fn a_kill_at_any_write_rename_or_sync_loses_nothing_and_resumes() {
    let Some(strace) = strace() else {
        assert!(
            std::env::var_os("CARNET_REQUIRE_STRACE").is_none(),
            "CARNET_REQUIRE_STRACE is set but strace is not on the PATH"
        );
        eprintln!("strace not found: crash points not enumerated");
        return;
    };
    let base = populated(4, 3);
    let import = base.tmp.path().join("more.jsonl");
    let lines: String = (0..30)
        .map(|i| json!({"patient_id": format!("IMP{}", i % 3), "body": format!("imported {i}")}))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&import, lines).unwrap();
    // A user to revoke.
    base.run(&[
        "user",
        "add",
        "dr.gone",
        "--new-passphrase-file",
        base.pass_file.to_str().unwrap(),
    ])
    .expect(0);
    let before = read_all(&base.dir, PASS, "the vault before");
    let cases = [
        Case {
            args: vec!["note".into(), "add".into(), "P001".into()],
            stdin: Some(NOTE),
            new_body: |b| b == NOTE,
            removes: None,
            done_code: None,
            finished: |v, before| {
                let now = read_all(&v.dir, PASS, "after note add");
                assert!(now.len() > before.len(), "the note was added");
            },
        },
        rotation(&["key", "rotate-patient", "P002"]),
        rotation(&["key", "rotate-patient", "--all"]),
        rotation(&["key", "rotate-master"]),
        Case {
            args: vec!["import".into(), import.to_str().unwrap().into()],
            stdin: None,
            new_body: |b| b.starts_with(b"imported "),
            removes: None,
            done_code: None,
            finished: |v, _| {
                let n: u64 = v
                    .run(&["patient", "list", "--json"])
                    .expect(0)
                    .json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["id"].as_str().unwrap().starts_with("IMP"))
                    .map(|p| p["notes"].as_u64().unwrap())
                    .sum();
                assert_eq!(n, 30, "the file was imported once, whole");
            },
        },
        Case {
            args: vec![
                "patient".into(),
                "erase".into(),
                "P003".into(),
                "--yes".into(),
            ],
            stdin: None,
            new_body: no_new_note,
            removes: Some("P003"),
            done_code: Some(4),
            finished: |v, _| {
                v.run(&["patient", "show", "P003"]).expect(4);
            },
        },
        Case {
            // A passphrase change is a revocation of the old passphrase (the same passphrase
            // again, so that the vault opens with it whichever step a kill stops at).
            args: vec![
                "key".into(),
                "change-passphrase".into(),
                "--new-passphrase-file".into(),
                base.pass_file.to_str().unwrap().into(),
            ],
            stdin: None,
            new_body: no_new_note,
            removes: None,
            done_code: None,
            finished: rotation_finished,
        },
        Case {
            args: vec!["user".into(), "remove".into(), "dr.gone".into()],
            stdin: None,
            new_body: no_new_note,
            removes: None,
            // A second removal finds no user of that name.
            done_code: Some(2),
            finished: |v, before| {
                rotation_finished(v, before);
                let users = v.run(&["user", "list", "--json"]).expect(0).json();
                assert_eq!(users.as_array().unwrap().len(), 1, "only admin is left");
            },
        },
    ];
    let points = kill_everywhere(&base, &before, &strace, &cases);
    eprintln!("{points} crash points tried");
    assert!(points >= 100, "only {points} crash points were tried");
}

/// The upgrade of the golden format-1 vault, killed at each of its crash points.
#[test]
fn a_kill_at_any_point_of_an_upgrade_loses_nothing_and_resumes() {
    let Some(strace) = strace() else {
        assert!(
            std::env::var_os("CARNET_REQUIRE_STRACE").is_none(),
            "CARNET_REQUIRE_STRACE is set but strace is not on the PATH"
        );
        eprintln!("strace not found: crash points not enumerated");
        return;
    };
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/v1");
    let base = TestVault::new();
    copy_dir(&golden.join("vault"), &base.dir);
    carnet_tests::write_secret(
        &base.pass_file,
        std::fs::read(golden.join("passphrase.txt")).unwrap(),
    );
    let pass = std::fs::read_to_string(&base.pass_file).unwrap();
    let before = read_all(&base.dir, pass.trim_end_matches('\n'), "the golden vault");
    let cases = [Case {
        args: vec!["key".into(), "upgrade".into()],
        stdin: None,
        new_body: no_new_note,
        removes: None,
        done_code: None,
        finished: |v, before| {
            rotation_finished(v, before);
            let status = v.run(&["key", "status", "--json"]).expect(0).json();
            assert_eq!(status["format"], 2, "the vault is in format 2");
        },
    }];
    let points = kill_everywhere(&base, &before, &strace, &cases);
    eprintln!("{points} crash points of the upgrade tried");
    assert!(points >= 10, "only {points} crash points were tried");
}

/// Kills each case at each of its crash points in turn, from a copy of `base`; returns how
/// many points were tried.
fn kill_everywhere(base: &TestVault, before: &Contents, strace: &Path, cases: &[Case]) -> u32 {
    let mut points = 0;
    for case in cases {
        for syscall in CHANGES {
            for n in 1.. {
                let context = format!("{:?} killed at {syscall} #{n}", case.args);
                let v = TestVault::new();
                copy_dir(&base.dir, &v.dir);
                std::fs::copy(&base.pass_file, &v.pass_file).unwrap();
                if let Outcome::Finished = run_killed(&v, strace, case, syscall, n, &context) {
                    break;
                }
                assert!(n < 500, "{context}: the command never finishes");
                points += 1;
                check_after_kill(&v, before, case, &context);
                // The run that resumes, killed at the same point.
                let again = format!("{context}, then again");
                run_killed(&v, strace, case, syscall, n, &again);
                check_after_kill(&v, before, case, &again);
                // And once more to its end.
                let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
                let last = match case.stdin {
                    Some(body) => v.run_stdin(&args, body),
                    None => v.run(&args),
                };
                let ok = last.code == 0 || case.done_code == Some(last.code);
                assert!(ok, "{context}: final run: {}", last.stderr);
                check_after_kill(&v, before, case, &format!("{context}, finished"));
                (case.finished)(&v, before);
            }
        }
    }
    points
}
