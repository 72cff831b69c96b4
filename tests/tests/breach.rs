//! The breach test: canary strings planted in every field a clinic can fill must not appear
//! anywhere under the vault directory, in any common encoding, nor in error messages.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use base64::Engine;
use carnet_tests::TestVault;
use serde_json::json;

/// The forms a leaked string could take on disk.
fn encodings(canary: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw".to_string(), canary.as_bytes().to_vec()),
        ("upper".to_string(), canary.to_uppercase().into_bytes()),
        ("lower".to_string(), canary.to_lowercase().into_bytes()),
        (
            "utf16le".to_string(),
            canary.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        ),
        (
            "utf16be".to_string(),
            canary.encode_utf16().flat_map(u16::to_be_bytes).collect(),
        ),
        ("hex".to_string(), hex(canary.as_bytes()).into_bytes()),
        (
            "HEX".to_string(),
            hex(canary.as_bytes()).to_uppercase().into_bytes(),
        ),
    ];
    // Base64 of the canary at each of the three alignments it can have inside a larger buffer:
    // keep only the characters that do not depend on the neighbouring bytes.
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ] {
        for offset in 0..3usize {
            let mut buf = vec![0u8; offset];
            buf.extend_from_slice(canary.as_bytes());
            let enc = engine.encode(&buf);
            let start = if offset == 0 { 0 } else { 4 };
            let stable_end = (buf.len() / 3) * 4;
            if stable_end > start + 8 {
                out.push((
                    format!("base64@{offset}"),
                    enc.as_bytes()[start..stable_end].to_vec(),
                ));
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_canary_reaches_the_disk_or_an_error_message() {
    let v = TestVault::init();
    let c = |field: &str| format!("Canary{field}Qz7Xw");
    let mut canaries = Vec::new();

    // Patient fields, through `patient add`.
    let (pid, name, birth) = (c("PatientId"), c("PatientName"), "1913-07-23".to_string());
    v.run(&[
        "patient",
        "add",
        &pid,
        "--name",
        &name,
        "--birth-date",
        &birth,
    ])
    .expect(0);
    canaries.extend([pid.clone(), name, birth]);

    // Note fields, through `note add` (stdin and file) and `note amend`.
    let (author, kind, body) = (c("Author"), c("Kind"), c("NoteBody"));
    let nid = v.add_note(
        &pid,
        &format!("Le patient dit: {body}."),
        &["--author", &author, "--kind", &kind],
    );
    let file = v.tmp.path().join("long.txt");
    let long_body = c("LongBody");
    // A large body, so that the store's large-value files are scanned too.
    std::fs::write(
        &file,
        format!("{}{long_body}{}", "x".repeat(300_000), "y".repeat(300_000)),
    )
    .unwrap();
    v.run(&["note", "add", &pid, "--file", file.to_str().unwrap()])
        .expect(0);
    std::fs::remove_file(&file).unwrap();
    let (amended, amend_author) = (c("AmendedBody"), c("AmendAuthor"));
    v.run_stdin(
        &["note", "amend", &pid, &nid, "--author", &amend_author],
        amended.as_bytes(),
    )
    .expect(0);
    canaries.extend([author, kind, body, long_body, amended, amend_author]);

    // Every field of an import line.
    let imp = [
        c("ImpPatient"),
        c("ImpName"),
        c("ImpAuthor"),
        c("ImpKind"),
        c("ImpBody"),
    ];
    let line = json!({"patient_id": imp[0], "name": imp[1], "birth_date": "1921-03-14",
                      "author": imp[2], "kind": imp[3], "created_at": "2019-04-05T06:07:08Z",
                      "body": imp[4]});
    let import_file = v.tmp.path().join("import.jsonl");
    std::fs::write(&import_file, format!("{line}\n")).unwrap();
    v.run(&["import", import_file.to_str().unwrap()]).expect(0);
    std::fs::remove_file(&import_file).unwrap();
    canaries.extend(imp);
    canaries.push("1921-03-14".into());

    // A user with a canary name, whose reads land in the access log with the patient's id.
    let user = c("UserName");
    let user_pass = v.tmp.path().join("user.pass");
    carnet_tests::write_secret(&user_pass, "the canary user's passphrase\n");
    v.run(&[
        "user",
        "add",
        &user,
        "--role",
        "clinician",
        "--new-passphrase-file",
        user_pass.to_str().unwrap(),
    ])
    .expect(0);
    let mut as_user = v.cmd(&["--user", &user, "note", "show", &pid, &nid]);
    as_user.env("CARNET_PASSPHRASE_FILE", &user_pass);
    carnet_tests::run_cmd(as_user, None).expect(0);
    v.run(&["audit", "--patient", &pid]).expect(0);
    std::fs::remove_file(&user_pass).unwrap();
    canaries.push(user);

    // Reads, searches and failures must not leave anything behind or leak into errors.
    v.run(&["note", "list", &pid]).expect(0);
    v.run(&["search", "canary"]).expect(0);
    v.run(&["verify"]).expect(0);
    for args in [
        vec!["patient", "show", "CanaryUnknownQz7Xw"],
        vec!["patient", "add", &pid],
        vec!["note", "show", &pid, "CanaryNoteIdQz7Xw"],
        vec![
            "search",
            "CanarySearchQz7Xw",
            "--patient",
            "CanaryOtherQz7Xw",
        ],
    ] {
        let r = v.run(&args);
        assert_ne!(r.code, 0);
        assert!(
            !r.stderr.to_lowercase().contains("canary"),
            "an error echoed a secret: {}",
            r.stderr
        );
    }

    // Everything Carnet wrote: the vault, and what this machine remembers of it.
    let mut files = v.files();
    assert!(files.len() >= 3, "the vault has files to scan");
    let state = carnet_tests::files_under(&v.state_dir());
    assert!(
        !state.is_empty(),
        "the machine's memory of the vault is scanned too"
    );
    files.extend(state);
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    assert!(
        total > 600_000,
        "the large note is on disk (as ciphertext): {total} bytes"
    );
    let mut leaks = Vec::new();
    for canary in &canaries {
        for (how, needle) in encodings(canary) {
            for (path, data) in &files {
                if find(data, &needle) {
                    leaks.push(format!("{canary} ({how}) in {}", path.display()));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "plaintext on disk:\n{}", leaks.join("\n"));
}

#[test]
fn the_scanner_finds_what_it_looks_for() {
    // Guards the test above against a scanner that can never fire.
    let canary = "CanaryProbeQz7Xw";
    let mut disk = b"prefix ".to_vec();
    disk.extend(
        base64::engine::general_purpose::STANDARD
            .encode(format!("ab{canary}cd"))
            .bytes(),
    );
    assert!(
        encodings(canary).iter().any(|(_, n)| find(&disk, n)),
        "base64 at offset 2"
    );
    let utf16: Vec<u8> = canary.encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert!(encodings(canary).iter().any(|(_, n)| find(&utf16, n)));
    assert!(encodings(canary)
        .iter()
        .any(|(_, n)| find(hex(canary.as_bytes()).to_uppercase().as_bytes(), n)));
}
