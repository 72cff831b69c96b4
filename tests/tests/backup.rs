//! Backups and restores through the built binary, and the format-1 golden archive.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use carnet_tests::TestVault;

fn populated() -> (TestVault, Vec<(String, String)>) {
    let v = TestVault::init();
    let mut notes = Vec::new();
    for p in ["a", "b"] {
        v.run(&["patient", "add", p, "--name", &format!("Name {p}")])
            .expect(0);
        for i in 0..3 {
            notes.push((p.to_string(), v.add_note(p, &format!("{p} note {i}"), &[])));
        }
    }
    v.run_stdin(&["note", "amend", "a", &notes[0].1], b"amended")
        .expect(0);
    (v, notes)
}

#[test]
fn a_backup_restores_into_an_empty_directory_identically() {
    let (v, notes) = populated();
    let archive = v.tmp.path().join("vault.carnet");
    let r = v
        .run(&["backup", archive.to_str().unwrap(), "--json"])
        .expect(0)
        .json();
    assert!(r["records"].as_u64().unwrap() > 10);
    assert_eq!(r["documents"], 2);
    v.run(&["backup", archive.to_str().unwrap()]).expect(1); // never overwrites
    let restored = v.tmp.path().join("restored");
    let mut c = v.cmd(&["restore", archive.to_str().unwrap()]);
    c.env("CARNET_VAULT", &restored);
    carnet_tests::run_cmd(c, None).expect(0);
    let run_restored = |args: &[&str]| {
        let mut c = v.cmd(args);
        c.env("CARNET_VAULT", &restored);
        carnet_tests::run_cmd(c, None)
    };
    run_restored(&["verify"]).expect(0);
    for (p, n) in &notes {
        assert_eq!(
            run_restored(&["note", "history", p, n, "--json"])
                .expect(0)
                .json(),
            v.run(&["note", "history", p, n, "--json"]).expect(0).json()
        );
    }
    // Restoring over an existing vault is refused, and changes nothing.
    let before = carnet_tests::files_under(&v.dir);
    v.run(&["restore", archive.to_str().unwrap()]).expect(1);
    assert_eq!(carnet_tests::files_under(&v.dir).len(), before.len());
}

#[test]
fn a_damaged_archive_is_refused_before_anything_is_restored() {
    let (v, _) = populated();
    let archive = v.tmp.path().join("vault.carnet");
    v.run(&["backup", archive.to_str().unwrap()]).expect(0);
    let good = std::fs::read(&archive).unwrap();
    let target = v.tmp.path().join("target");
    for (what, bytes) in [
        ("a flipped byte", {
            let mut b = good.clone();
            let mid = b.len() / 2;
            b[mid] ^= 1;
            b
        }),
        ("a truncated archive", good[..good.len() - 7].to_vec()),
        ("a foreign file", b"PK\x03\x04 not a Carnet backup".to_vec()),
    ] {
        let bad = v.tmp.path().join("bad.carnet");
        std::fs::write(&bad, &bytes).unwrap();
        let mut c = v.cmd(&["restore", bad.to_str().unwrap()]);
        c.env("CARNET_VAULT", &target);
        let r = carnet_tests::run_cmd(c, None);
        assert!(
            r.code == 5 || r.code == 1,
            "{what}: exit {} {}",
            r.code,
            r.stderr
        );
        assert!(!target.exists(), "{what}: nothing was created");
    }
}

#[test]
fn the_archive_holds_no_plaintext() {
    let v = TestVault::init();
    let canary = "CanaryInABackupQz7Xw";
    v.run(&["patient", "add", canary, "--name", canary])
        .expect(0);
    v.add_note(canary, canary, &[]);
    let archive = v.tmp.path().join("vault.carnet");
    v.run(&["backup", archive.to_str().unwrap()]).expect(0);
    let data = std::fs::read(&archive).unwrap();
    assert!(!data.windows(canary.len()).any(|w| w == canary.as_bytes()));
    assert!(data.len() > 1000);
}

#[test]
fn the_format_1_golden_archive_restores_and_reads_exactly() {
    golden_archive_restores_and_reads_exactly("v1");
}

#[test]
fn the_format_2_golden_archive_restores_and_reads_exactly() {
    golden_archive_restores_and_reads_exactly("v2");
}

fn golden_archive_restores_and_reads_exactly(version: &str) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(version);
    let v = TestVault::new();
    carnet_tests::write_secret(
        &v.pass_file,
        std::fs::read(golden.join("passphrase.txt")).unwrap(),
    );
    v.run(&["restore", golden.join("backup.carnet").to_str().unwrap()])
        .expect(0);
    v.run(&["verify"]).expect(0);
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("expected/patient-list.json")).unwrap())
            .unwrap();
    assert_eq!(v.run(&["patient", "list", "--json"]).expect(0).json(), want);
}
