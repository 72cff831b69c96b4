//! Key lifecycle through the built binary: the `key` commands and `patient erase`, residue
//! scans of the raw files, and crash tests that kill the process at random points.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use carnet_storage::{SledStore, Space, Store};
use carnet_tests::{check, contents, files_under, populated, PASS};
use serde_json::json;

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that none of `needles` appears in any file under `dir`.
fn assert_no_residue(dir: &Path, needles: &[Vec<u8>], what: &str) {
    assert!(!needles.is_empty(), "{what}: nothing to look for");
    for (path, data) in files_under(dir) {
        for n in needles {
            assert!(
                !find(&data, n),
                "{what}: old bytes found in {}",
                path.display()
            );
        }
    }
}

/// The ciphertext tails (last 32 bytes) of every entry of a key store file.
fn key_store_ciphertexts(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = &bytes[30..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let entry = &rest[4..4 + len];
        out.push(entry[entry.len() - 32..].to_vec());
        rest = &rest[4 + len..];
    }
    out
}

#[test]
fn key_commands_work_and_plans_change_nothing() {
    let v = populated(5, 3);
    let before = contents(&v.dir, PASS);
    let status = v.run(&["key", "status", "--json"]).expect(0).json();
    assert_eq!(status["epoch"], 1);
    assert_eq!(status["kdf"]["memory_mib"], 8);
    assert_eq!(status["unfinished"], json!([]));

    let files_before = files_under(&v.dir);
    let plan = v
        .run(&["key", "rotate-master", "--plan", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        (plan["from_epoch"].clone(), plan["to_epoch"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(plan["keys_rewrapped"], 6);
    let plan = v
        .run(&["key", "rotate-patient", "--all", "--plan", "--json"])
        .expect(0)
        .json();
    assert_eq!(plan["patients"], 5);
    let root = |f: &Vec<(std::path::PathBuf, Vec<u8>)>, name: &str| {
        f.iter().find(|(p, _)| p.ends_with(name)).unwrap().1.clone()
    };
    let files_after = files_under(&v.dir);
    assert_eq!(
        root(&files_before, "root"),
        root(&files_after, "root"),
        "--plan changed nothing"
    );
    assert_eq!(
        root(&files_before, "keys"),
        root(&files_after, "keys"),
        "--plan changed nothing"
    );

    let r = v.run(&["key", "rotate-master", "--json"]).expect(0).json();
    assert_eq!(
        (r["to_epoch"].clone(), r["notes_rewritten"].clone()),
        (json!(2), json!(0))
    );
    let r = v
        .run(&["key", "rotate-patient", "P002", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        (r["patients"].clone(), r["records_rewritten"].clone()),
        (json!(1), json!(5))
    );
    v.run(&["key", "rotate-patient", "--all"]).expect(0);
    v.run(&["key", "rotate-patient", "NOBODY"]).expect(4);
    v.run(&["key", "rotate-patient"]).expect(2);
    assert_eq!(contents(&v.dir, PASS), before);
    let status = v.run(&["key", "status", "--json"]).expect(0).json();
    assert_eq!(status["epoch"], 2);
    assert_eq!(
        status["records_per_patient_key_version"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Passphrase change: the old one stops working.
    let new = v.tmp.path().join("new-pass");
    carnet_tests::write_secret(&new, "another long passphrase\n");
    std::fs::write(v.tmp.path().join("short"), "short\n").unwrap();
    v.run(&[
        "key",
        "change-passphrase",
        "--new-passphrase-file",
        v.tmp.path().join("short").to_str().unwrap(),
    ])
    .expect(2);
    v.run(&[
        "key",
        "change-passphrase",
        "--new-passphrase-file",
        new.to_str().unwrap(),
    ])
    .expect(0);
    v.run(&["patient", "list"]).expect(3);
    std::fs::copy(&new, &v.pass_file).unwrap();
    assert_eq!(contents(&v.dir, "another long passphrase"), before);
}

#[test]
fn erase_needs_confirmation_and_destroys_the_patient() {
    let v = populated(4, 2);
    v.run(&["patient", "erase", "P001"]).expect(2);
    v.run(&["patient", "erase", "NOBODY", "--yes"]).expect(4);
    v.run(&["patient", "show", "P001"]).expect(0);
    v.run(&["patient", "erase", "P001", "--yes"]).expect(0);
    v.run(&["patient", "show", "P001"]).expect(4);
    v.run(&["patient", "erase", "P001", "--yes"]).expect(4);
    let list = v.run(&["patient", "list", "--json"]).expect(0).json();
    assert_eq!(list.as_array().unwrap().len(), 3);
    v.run(&["verify"]).expect(0);
    v.run(&["patient", "add", "P001"]).expect(0);
    v.run(&["verify"]).expect(0);
}

#[test]
fn rotate_master_leaves_no_old_wrapped_key_or_seal() {
    let v = populated(6, 2);
    let old_keys = std::fs::read(v.dir.join("keys")).unwrap();
    let old_root = std::fs::read(v.dir.join("root")).unwrap();
    let mut needles = key_store_ciphertexts(&old_keys);
    // The only slot's only seal: the last 48 bytes (master ciphertext and tag) before the MAC.
    needles.push(old_root[old_root.len() - 32 - 48..old_root.len() - 32].to_vec());
    v.run(&["key", "rotate-master"]).expect(0);
    assert_no_residue(&v.dir, &needles, "rotate-master");
    v.run(&["verify"]).expect(0);
}

#[test]
fn change_passphrase_leaves_no_old_slot() {
    let v = populated(2, 1);
    let old_root = std::fs::read(v.dir.join("root")).unwrap();
    // The first slot's fields (docs/format.md, 2b): after the keyring header (version 2: 49
    // bytes with the slot count) and the slot's length, name tag and KDF fields come its salt
    // (16), public key (32), commitment (32), protection and version held (5), nonce (24) and
    // sealed protected part (84, keyed).
    assert_eq!(&old_root[8..10], &[0, 2], "a format-2 keyring");
    let slot = 49 + 2 + 32 + 2 + 12;
    let needles = vec![
        old_root[slot..slot + 16].to_vec(),
        old_root[slot + 16..slot + 48].to_vec(),
        old_root[slot + 48..slot + 80].to_vec(),
        old_root[slot + 85..slot + 109].to_vec(),
        old_root[slot + 109..slot + 193].to_vec(),
    ];
    let new = v.tmp.path().join("new-pass");
    carnet_tests::write_secret(&new, "another long passphrase\n");
    v.run(&[
        "key",
        "change-passphrase",
        "--new-passphrase-file",
        new.to_str().unwrap(),
    ])
    .expect(0);
    assert_no_residue(&v.dir, &needles, "change-passphrase");
}

#[test]
fn erase_leaves_no_byte_of_the_patients_keys_or_records() {
    let v = populated(5, 3);
    let snapshot = |dir: &Path| {
        let s = SledStore::open(dir).unwrap();
        let mut all = Vec::new();
        for sp in ["patients", "manifests", "notes"] {
            for r in s.scan_prefix(Space::new(sp), &[]) {
                all.push(r.unwrap().1);
            }
        }
        all
    };
    let before = snapshot(&v.dir);
    let keys_before = key_store_ciphertexts(&std::fs::read(v.dir.join("keys")).unwrap());
    v.run(&["patient", "erase", "P003", "--yes"]).expect(0);
    let after = snapshot(&v.dir);
    let keys_after = key_store_ciphertexts(&std::fs::read(v.dir.join("keys")).unwrap());
    // What disappeared: the patient's records and key (renumbered patient records too).
    let mut needles: Vec<Vec<u8>> = before
        .iter()
        .filter(|r| !after.contains(r))
        .map(|r| r[r.len() - 32..].to_vec())
        .collect();
    assert!(
        needles.len() >= 1 + 1 + 3,
        "the patient's record, manifest and notes are gone"
    );
    needles.extend(keys_before.into_iter().filter(|k| !keys_after.contains(k)));
    assert_no_residue(&v.dir, &needles, "erase");
    v.run(&["verify"]).expect(0);
}

/// A small deterministic generator, so a failing trial can be replayed.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn killed_at_random_points_rotations_and_imports_lose_nothing_and_resume() {
    let v = populated(40, 3);
    let expected = contents(&v.dir, PASS);
    let import = v.tmp.path().join("more.jsonl");
    let mut lines = String::new();
    // Two import batches (1,000 notes each at most), so kills land between batches too.
    for i in 0..1100 {
        lines += &json!({"patient_id": format!("IMP{}", i % 25), "body": format!("imported {i}")})
            .to_string();
        lines.push('\n');
    }
    std::fs::write(&import, lines).unwrap();
    let seed = 0x5eed_2026;
    let mut rng = Lcg(seed);
    let started = Instant::now();
    let commands: [Vec<&str>; 3] = [
        vec!["key", "rotate-master"],
        vec!["key", "rotate-patient", "--all"],
        vec!["import", "--again", import.to_str().unwrap()],
    ];
    let mut killed_mid_run = 0;
    let mut imports = 0u64;
    for trial in 0..33 {
        let args = &commands[trial % 3];
        let mut child = v
            .cmd(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = rng.below(250);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().ok(); // SIGKILL, unless it already exited
                           // Exit code 0: the command finished before the kill landed.
        let finished_before_kill = child.wait().unwrap().code() == Some(0);
        if !finished_before_kill {
            killed_mid_run += 1;
        }
        // Every note written before still reads back identical, and verify is clean.
        let context = format!("trial {trial} (seed {seed:#x}, {args:?} killed after {delay} ms)");
        check(&v.dir, &expected, &context);
        let imported = || -> u64 {
            let patients = v.run(&["patient", "list", "--json"]).expect(0).json();
            patients
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["id"].as_str().unwrap().starts_with("IMP"))
                .map(|p| p["notes"].as_u64().unwrap())
                .sum()
        };
        let after_kill = if trial % 3 == 2 { imported() } else { 0 };
        // Running the same command again finishes the job.
        v.run(args).expect(0);
        if trial % 3 == 2 {
            // The killed import either had finished (then the same command, with --again,
            // imports the file once more) or resumed to the end: never a partial duplicate.
            let finished = after_kill == 1100 * (imports + 1);
            assert!(
                finished || after_kill < 1100 * (imports + 1),
                "{context}: {after_kill} notes after the kill"
            );
            imports += if finished { 2 } else { 1 };
            assert_eq!(imported(), 1100 * imports, "{context}: notes imported");
        } else {
            let status = v.run(&["key", "status", "--json"]).expect(0).json();
            assert_eq!(
                status["unfinished"],
                json!([]),
                "{context}: rotation finished"
            );
        }
    }
    assert!(
        killed_mid_run >= 10,
        "most kills land mid-run ({killed_mid_run} did)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "trials took {:?}",
        started.elapsed()
    );
    let all = contents(&v.dir, PASS);
    for (k, body) in &expected {
        assert_eq!(all.get(k), Some(body));
    }
}
