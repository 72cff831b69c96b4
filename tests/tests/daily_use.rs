//! Fit for daily use (issue 6): every command's `--help` teaches with an example, every
//! command and option is in the reference (docs/cli.md), and every command that prints data
//! prints JSON with `--json`.

use carnet_tests::{carnet_bin, run_cmd, TestVault};
use std::process::Command;

/// The subcommands `carnet <path> --help` lists (under "Commands:"), except `help`.
fn subcommands(path: &[String]) -> Vec<String> {
    let mut c = Command::new(carnet_bin());
    c.args(path).arg("--help");
    let help = run_cmd(c, None).expect(0).stdout_str();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line starts with two spaces; wrapped descriptions with more.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Every command path the binary has (the top level is `[]`), with its `--help` text.
fn every_command() -> Vec<(Vec<String>, String)> {
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut out = Vec::new();
    while let Some(path) = todo.pop() {
        let mut c = Command::new(carnet_bin());
        c.args(&path).arg("--help");
        let help = run_cmd(c, None).expect(0).stdout_str();
        for sub in subcommands(&path) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
        out.push((path, help));
    }
    // The contract's commands and groups, and the top level: a broken walk finds few.
    assert!(out.len() >= 30, "only {} commands found", out.len());
    out
}

#[test]
fn every_command_help_has_an_example() {
    for (path, help) in every_command() {
        assert!(
            help.contains("Example"),
            "`carnet {} --help` has no example:\n{help}",
            path.join(" ")
        );
    }
}

#[test]
fn every_command_and_option_is_in_the_reference() {
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md"),
    )
    .unwrap();
    let top_help = run_cmd(
        {
            let mut c = Command::new(carnet_bin());
            c.arg("--help");
            c
        },
        None,
    )
    .expect(0)
    .stdout_str();
    assert!(
        top_help.contains("docs/cli.md"),
        "`carnet --help` points to the reference"
    );
    for (path, help) in every_command() {
        if !path.is_empty() {
            // A heading per command: "### `carnet note add ID …`"; a group is the start of
            // its commands' headings.
            let heading = format!("### `carnet {}", path.join(" "));
            let listed = reference.match_indices(&heading).any(|(i, _)| {
                matches!(
                    reference[i + heading.len()..].chars().next(),
                    Some(' ' | '`')
                )
            });
            assert!(
                listed,
                "docs/cli.md has no section for `carnet {}`",
                path.join(" ")
            );
        }
        // Every long option its help lists.
        let options = help
            .lines()
            .skip_while(|l| !l.starts_with("Options:"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with(' '))
            .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ','))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.split(['=', '[', '<']).next().unwrap_or(w).to_string());
        for option in options {
            assert!(
                ['`', ' ', '[', '(']
                    .iter()
                    .any(|before| reference.contains(&format!("{before}{option}"))),
                "docs/cli.md never mentions {option} (of `carnet {}`)",
                path.join(" ")
            );
        }
    }
}

#[test]
fn every_data_printing_command_speaks_json() {
    let v = TestVault::init();
    let np = v.tmp.path().join("np");
    carnet_tests::write_secret(&np, "another long passphrase\n");
    let np = np.to_str().unwrap();
    let import = v.tmp.path().join("in.jsonl");
    std::fs::write(&import, "{\"patient_id\":\"P2\",\"body\":\"imported\"}\n").unwrap();
    let archive = v.tmp.path().join("b.carnet");
    let restored = v.tmp.path().join("restored");
    let rk = v.tmp.path().join("rk");

    let json = |args: &[&str]| {
        let mut a = args.to_vec();
        a.push("--json");
        let r = v.run(&a).expect(0);
        let text = r.stdout_str();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("`carnet {}` printed no JSON ({e}): {text}", a.join(" ")))
    };

    json(&["patient", "add", "P1", "--name", "Camille"]);
    let mut add = v.cmd(&["note", "add", "P1", "--json"]);
    add.stdin(std::process::Stdio::piped());
    let r = run_cmd(add, Some(b"first words")).expect(0).json();
    let note = r["id"]
        .as_str()
        .expect("note add --json names the note")
        .to_string();
    for args in [
        vec!["patient", "list"],
        vec!["patient", "show", "P1"],
        vec!["note", "list", "P1"],
        vec!["note", "show", "P1", &note],
        vec!["note", "history", "P1", &note],
        vec!["import", import.to_str().unwrap()],
        vec!["export", "P1"],
        vec!["search", "words"],
        vec!["verify"],
        vec!["audit"],
        vec!["audit", "checkpoint"],
        vec!["key", "status"],
        vec!["key", "rotate-master"],
        vec!["key", "rotate-patient", "P1"],
        vec![
            "key",
            "rotate-recovery",
            "--recovery-key-out",
            rk.to_str().unwrap(),
        ],
        vec![
            "user",
            "add",
            "nurse",
            "--role",
            "clinician",
            "--new-passphrase-file",
            np,
        ],
        vec!["user", "list"],
        vec!["user", "remove", "nurse"],
        vec!["backup", archive.to_str().unwrap()],
        vec!["patient", "erase", "P2", "--yes"],
    ] {
        json(&args);
    }
    let mut c = v.cmd(&["restore", archive.to_str().unwrap(), "--json"]);
    c.env("CARNET_VAULT", &restored);
    let r = run_cmd(c, None).expect(0).json();
    assert!(r.is_object(), "{r}");
    let r = json(&["key", "change-passphrase", "--new-passphrase-file", np]);
    assert!(r.is_object(), "{r}");
}
