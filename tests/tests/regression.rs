//! Regression tests, each named after the bug it pins.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use carnet_tests::TestVault;

/// `carnet` renamed `--user` to the audit filter after *any* argument equal to `audit`, not
/// only after the `audit` command: a note of kind `audit`, or a patient whose id is `audit`,
/// made `--user admin` an unknown option (exit 2).
#[test]
fn user_option_was_taken_for_the_audit_filter_after_any_argument_equal_to_audit() {
    let v = TestVault::init();
    v.run(&["patient", "add", "P1"]).expect(0);
    v.run(&["patient", "add", "audit"]).expect(0);
    let note = v.tmp.path().join("n");
    std::fs::write(&note, b"Seen for an audit of the clinic.").unwrap();
    let n = note.to_str().unwrap();

    let r = v
        .run(&[
            "note", "add", "P1", "--kind", "audit", "--file", n, "--user", "admin",
        ])
        .expect(0);
    assert_eq!(r.stdout_str().trim().len(), 32, "the note's id");
    let r = v
        .run(&["patient", "show", "audit", "--user", "admin", "--json"])
        .expect(0);
    assert_eq!(r.json()["id"], "audit");
    // `--user` before a command still selects the slot: an unknown user is refused.
    v.run(&["--user", "nobody", "patient", "show", "audit"])
        .expect(3);
    v.run(&["patient", "show", "audit", "--user=nobody"])
        .expect(3);

    // After the `audit` command, `--user` still filters (in both spellings), and the slot is
    // chosen before it.
    let by = |args: &[&str]| -> Vec<String> {
        v.run(args)
            .expect(0)
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["user"].as_str().unwrap().to_string())
            .collect()
    };
    let admin = by(&["--user", "admin", "audit", "--user", "admin", "--json"]);
    assert!(!admin.is_empty() && admin.iter().all(|u| u == "admin"));
    assert!(by(&["audit", "--user=nobody", "--json"]).is_empty());
    // A value equal to `audit` before the command does not make it the audit command.
    let r = v.run(&["--vault", "audit", "patient", "list", "--user", "admin"]);
    assert_eq!(r.code, 1, "no vault at ./audit: {}", r.stderr);
    assert!(r.stderr.contains("no vault"), "{}", r.stderr);
}
