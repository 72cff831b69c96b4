//! The `carnet` binary on a PostgreSQL vault (issue 14): a clinic's desks at once, moving a
//! vault between engines, a backup while others write, and every problem with the server as
//! one line and the right exit code. Each test starts its own throwaway server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use carnet_storage::pg_cluster::{TestCluster, PASSWORD_ROLE};
use carnet_tests::{write_secret, TestVault, INIT};

/// A test vault whose `--vault` is `uri` (its temporary directory holds only the passphrase
/// file and this machine's state).
fn at(uri: &str) -> TestVault {
    let mut v = TestVault::new();
    v.dir = PathBuf::from(uri);
    v
}

/// Every regular file under `dir` (a server's directory also holds its socket), with its
/// contents.
fn files_under_regular(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

/// Each patient's notes, as `note list --json` shows them (ids and versions).
fn chart(v: &TestVault, patient: &str) -> serde_json::Value {
    v.run(&["--json", "note", "list", patient]).expect(0).json()
}

const PATIENTS: [(&str, &str); 2] = [
    ("CANARY-PAT-1", "Zéphyrine Canarinom"),
    ("CANARY-PAT-2", "Anatole Canariprénom"),
];

#[test]
fn desks_share_a_postgres_vault_and_the_server_holds_only_ciphertext() {
    let Some(pg) = TestCluster::start_or_skip("desks_share_a_postgres_vault") else {
        return;
    };
    let v = at(&pg.uri("rue-des-lilas"));
    let r = v.run(&INIT).expect(0);
    assert!(
        r.stdout_str().contains("vault=rue-des-lilas"),
        "{}",
        r.stdout_str()
    );
    for (id, name) in PATIENTS {
        v.run(&["patient", "add", id, "--name", name]).expect(0);
    }
    // Four desks at once, two on each patient, three notes each, while a fifth reads.
    let ids: Vec<String> = std::thread::scope(|s| {
        let desks: Vec<_> = (0..4)
            .map(|d| {
                let v = &v;
                s.spawn(move || {
                    (0..3)
                        .map(|n| {
                            v.add_note(
                                PATIENTS[d % 2].0,
                                &format!("CANARY-NOTE sérologie desk {d} note {n}"),
                                &["--author", "Dr Canari"],
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let reader = s.spawn(|| {
            for _ in 0..3 {
                v.run(&["note", "list", PATIENTS[0].0]).expect(0);
                v.run(&["verify"]).expect(0);
            }
        });
        reader.join().unwrap();
        desks.into_iter().flat_map(|d| d.join().unwrap()).collect()
    });
    assert_eq!(ids.len(), 12);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 12, "no note twice");
    for (patient, _) in PATIENTS {
        let listed = chart(&v, patient);
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 6, "{patient}: {listed:?}");
    }
    let r = v.run(&["--json", "verify"]).expect(0);
    assert_eq!(r.json()["problems"].as_array().map(Vec::len), Some(0));
    // What the server keeps (tables, WAL, logs) holds none of it in clear.
    pg.execute("postgres", "CHECKPOINT").unwrap();
    let Some(dir) = pg.dir() else { return };
    let files: Vec<_> = files_under_regular(dir);
    assert!(files.len() > 100, "the server's files were read");
    for canary in ["CANARY", "Canari", "Zéphyrine", "sérologie", "Dr Canari"] {
        for (path, bytes) in &files {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary} in {}",
                path.display()
            );
        }
    }
}

#[test]
fn a_vault_moves_from_sled_to_postgres_and_back_unchanged() {
    let Some(pg) = TestCluster::start_or_skip("a_vault_moves_between_engines") else {
        return;
    };
    let sled = TestVault::init();
    for (id, name) in PATIENTS {
        sled.run(&["patient", "add", id, "--name", name]).expect(0);
        sled.add_note(id, "first visit", &[]);
        sled.add_note(id, "second visit", &[]);
    }
    let archive = sled.tmp.path().join("clinic.carnet");
    sled.run(&["backup", archive.to_str().unwrap()]).expect(0);

    let on_pg = at(&pg.uri("moved"));
    std::fs::copy(&sled.pass_file, &on_pg.pass_file).unwrap();
    on_pg.run(&["restore", archive.to_str().unwrap()]).expect(0);
    on_pg.run(&["verify"]).expect(0);
    for (id, _) in PATIENTS {
        assert_eq!(chart(&on_pg, id), chart(&sled, id), "{id} on PostgreSQL");
    }
    // A second restore into the same vault name changes nothing.
    let r = on_pg.run(&["restore", archive.to_str().unwrap()]).expect(1);
    assert!(r.stderr.contains("already holds a vault"), "{}", r.stderr);
    // It keeps working there, then comes back to a directory.
    on_pg.add_note(PATIENTS[0].0, "written on PostgreSQL", &[]);
    let back_archive = on_pg.tmp.path().join("back.carnet");
    on_pg
        .run(&["backup", back_archive.to_str().unwrap()])
        .expect(0);
    let back = TestVault::new();
    std::fs::copy(&sled.pass_file, &back.pass_file).unwrap();
    back.run(&["restore", back_archive.to_str().unwrap()])
        .expect(0);
    back.run(&["verify"]).expect(0);
    for (id, _) in PATIENTS {
        assert_eq!(chart(&back, id), chart(&on_pg, id), "{id} back on sled");
    }
    assert_eq!(chart(&back, PATIENTS[0].0).as_array().unwrap().len(), 3);
}

#[test]
fn a_backup_of_a_postgres_vault_that_others_write_is_one_moment() {
    let Some(pg) = TestCluster::start_or_skip("a_backup_while_others_write") else {
        return;
    };
    let v = at(&pg.uri("busy"));
    v.run(&INIT).expect(0);
    for (id, name) in PATIENTS {
        v.run(&["patient", "add", id, "--name", name]).expect(0);
    }
    let archives: Vec<PathBuf> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..2)
            .map(|d| {
                let v = &v;
                s.spawn(move || {
                    for n in 0..6 {
                        v.add_note(PATIENTS[d].0, &format!("note {n}"), &[]);
                    }
                })
            })
            .collect();
        let archives = (0..4)
            .map(|i| {
                let a = v.tmp.path().join(format!("b{i}.carnet"));
                v.run(&["backup", a.to_str().unwrap()]).expect(0);
                a
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        archives
    });
    // Each archive, restored, is a healthy vault: no note without its manifest, no manifest
    // ahead of its notes, a log that ends where the records do.
    for a in archives {
        let restored = TestVault::new();
        std::fs::copy(&v.pass_file, &restored.pass_file).unwrap();
        restored.run(&["restore", a.to_str().unwrap()]).expect(0);
        restored.run(&["verify"]).expect(0);
    }
}

#[test]
fn problems_with_the_server_are_one_line_errors_with_their_exit_code() {
    let Some(pg) = TestCluster::start_or_skip("problems_with_the_server") else {
        return;
    };
    let one_line = |r: &carnet_tests::Run, code: i32, says: &str| {
        assert_eq!(r.code, code, "{says}: {}", r.stderr);
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(says), "{says}: {}", r.stderr);
    };
    // A URI that is not one, or carries a password: a usage error, the password not repeated.
    let r = at("postgresql://carnet@%2Ftmp/postgres").run(&["patient", "list"]);
    one_line(&r, 2, "names no vault");
    let r =
        at("postgresql://carnet:hunter2-secret@%2Ftmp/postgres?vault=v").run(&["patient", "list"]);
    one_line(&r, 2, "a password never goes in the URI");
    assert!(!r.stderr.contains("hunter2"));
    // No server there.
    let r = at("postgresql://carnet@%2Fnonexistent-dir/postgres?vault=v").run(&["patient", "list"]);
    one_line(
        &r,
        1,
        "cannot connect to PostgreSQL at postgresql://carnet@",
    );
    // A database without Carnet's tables, and a vault name that is not there.
    let r = at(&pg.uri("nobody")).run(&["patient", "list"]);
    one_line(&r, 1, "no vault at postgresql://");
    at(&pg.uri("somebody")).run(&INIT).expect(0);
    let r = at(&pg.uri("nobody")).run(&["patient", "list"]);
    one_line(&r, 1, "no vault at postgresql://");
    // init twice.
    let r = at(&pg.uri("somebody")).run(&INIT);
    one_line(&r, 1, "already holds a vault");
    // Another program's table of the same name, in another database.
    pg.execute("postgres", "CREATE DATABASE other").unwrap();
    pg.execute("other", "CREATE TABLE carnet_records (id int)")
        .unwrap();
    let r = at(&pg.uri_as("carnet", "other", "v")).run(&INIT);
    one_line(&r, 1, "Carnet did not make");
    // Tables a newer Carnet wrote.
    pg.execute("postgres", "UPDATE carnet_schema SET version = 99")
        .unwrap();
    let r = at(&pg.uri("somebody")).run(&["patient", "list"]);
    one_line(&r, 1, "newer than this Carnet reads");
    pg.execute("postgres", "UPDATE carnet_schema SET version = 1")
        .unwrap();

    // Credentials: a role that signs in with a password (only on a server of the test's own).
    if pg.dir().is_none() {
        return;
    }
    pg.execute(
        "postgres",
        &format!("CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'right-db-password'"),
    )
    .unwrap();
    // (CREATE DATABASE runs alone, outside any transaction.)
    pg.execute(
        "postgres",
        &format!("CREATE DATABASE clinic OWNER {PASSWORD_ROLE}"),
    )
    .unwrap();
    let v = at(&pg.uri_as(PASSWORD_ROLE, "clinic", "pw"));
    let r = v.run(&["patient", "list"]);
    one_line(&r, 3, "asks for a password");
    let wrong = v.tmp.path().join("db-password");
    write_secret(&wrong, "wrong-db-password\n");
    let r = v.run(&[
        "--db-password-file",
        wrong.to_str().unwrap(),
        "patient",
        "list",
    ]);
    one_line(&r, 3, "refused the credentials");
    assert!(!r.stderr.contains("wrong-db-password"));
    // ~/.pgpass, as libpq reads it: private, or refused.
    let pgpass = v.tmp.path().join(".pgpass");
    write_secret(
        &pgpass,
        format!("*:*:clinic:{PASSWORD_ROLE}:right-db-password\n"),
    );
    v.run(&INIT).expect(0);
    v.run(&["patient", "add", "P1", "--name", "Camille Martin"])
        .expect(0);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let r = v.run(&["patient", "list"]);
    one_line(&r, 2, "can be read or changed by other users");
}

#[test]
fn tls_to_the_server_is_checked_as_sslmode_says() {
    let pg = match TestCluster::start_tls() {
        Ok(pg) => pg,
        Err(carnet_storage::pg_cluster::Unavailable::NotInstalled)
            if std::env::var_os("CARNET_REQUIRE_POSTGRES").is_none() =>
        {
            eprintln!("tls_to_the_server: skipped, PostgreSQL is not installed");
            return;
        }
        Err(e) => panic!("no TLS server: {e:?}"),
    };
    let ca = pg.tls_file("ca.pem").unwrap();
    let other = pg.tls_file("other-ca.pem").unwrap();
    let uri = |host: &str, params: String| pg.tls_uri(host, &params, "tls").unwrap();
    let with_root = |mode: &str, root: &std::path::Path| {
        format!("sslmode={mode}&sslrootcert={}", root.display())
    };
    // The certificate is signed by the root and names the host: verify-full connects.
    let good = at(&uri("localhost", with_root("verify-full", &ca)));
    good.run(&INIT).expect(0);
    good.run(&["patient", "add", "P1", "--name", "Camille Martin"])
        .expect(0);
    let state = good.state_dir();
    let pass = good.pass_file.clone();
    let run = |vault: String| {
        let v = at(&vault);
        std::fs::copy(&pass, &v.pass_file).unwrap();
        // The same machine: what it remembers of the vault goes along.
        let mut c = v.cmd(&["patient", "list"]);
        c.env("CARNET_STATE_DIR", &state);
        carnet_tests::run_cmd(c, None)
    };
    // A root that did not sign it: refused, in one line.
    let r = run(uri("localhost", with_root("verify-full", &other)));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot connect to PostgreSQL"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
    let r = run(uri("localhost", with_root("verify-ca", &other)));
    assert_eq!(r.code, 1, "{}", r.stderr);
    // A host the certificate does not name: verify-full refuses, verify-ca accepts.
    let r = run(uri("127.0.0.1", with_root("verify-full", &ca)));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot connect to PostgreSQL"),
        "{}",
        r.stderr
    );
    run(uri("127.0.0.1", with_root("verify-ca", &ca))).expect(0);
    // require checks nothing without a root certificate (as libpq), and the root when given.
    run(uri("localhost", "sslmode=require".into())).expect(0);
    let r = run(uri("localhost", with_root("require", &other)));
    assert_eq!(r.code, 1, "{}", r.stderr);
    // verify-full without any root certificate: said before connecting.
    let r = run(uri("localhost", "sslmode=verify-full".into()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("need a root certificate"), "{}", r.stderr);
    // Without TLS the server admits nobody on TCP (hostssl only).
    let r = run(uri("localhost", "sslmode=disable".into()));
    assert_eq!(r.code, 3, "{}", r.stderr);
    let r = run(uri("localhost", "sslmode=prefer".into())).expect(0);
    assert!(r.stdout_str().contains("P1"), "{}", r.stdout_str());
}

#[test]
fn a_rotation_at_one_desk_runs_alone_while_other_desks_keep_writing() {
    let Some(pg) = TestCluster::start_or_skip("a_rotation_runs_alone") else {
        return;
    };
    let v = at(&pg.uri("rotating"));
    v.run(&INIT).expect(0);
    let lines: String = (0..300)
        .map(|i| format!("{{\"patient_id\": \"P{i:03}\", \"body\": \"note {i}\"}}\n"))
        .collect();
    let file = v.tmp.path().join("import.jsonl");
    std::fs::write(&file, lines).unwrap();
    v.run(&["import", file.to_str().unwrap()]).expect(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (written, refused) = std::thread::scope(|s| {
        let desk = s.spawn(|| {
            let (mut written, mut refused) = (Vec::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || written.len() < 3 {
                let r = v.run_stdin(
                    &["--wait", "0", "note", "add", "P001"],
                    b"written meanwhile",
                );
                match r.code {
                    0 => written.push(r.stdout_str().trim().to_string()),
                    6 => {
                        assert!(r.stderr.contains("administrator"), "{}", r.stderr);
                        assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
                        refused += 1;
                    }
                    c => panic!("note add exited {c}: {}", r.stderr),
                }
            }
            (written, refused)
        });
        for _ in 0..2 {
            v.run(&["key", "rotate-patient", "--all"]).expect(0);
            v.run(&["key", "rotate-master"]).expect(0);
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        desk.join().unwrap()
    });
    eprintln!(
        "{} notes written, {refused} refused during the rotations",
        written.len()
    );
    // Every note acknowledged is there and readable under the keys in use now.
    for id in &written {
        v.run(&["note", "show", "P001", id]).expect(0);
    }
    let listed = chart(&v, "P001");
    assert_eq!(listed.as_array().unwrap().len(), 1 + written.len());
    v.run(&["verify"]).expect(0);
    // A desk that finds a rotation under way waits for it, saying so.
    let waiting = std::thread::scope(|s| {
        let rotation = s.spawn(|| v.run(&["key", "rotate-patient", "--all"]).expect(0));
        let mut saw = false;
        for _ in 0..40 {
            // It waits (well within --wait), then lists, under the keys the rotation left.
            let r = v.run(&["--wait", "30", "note", "list", "P002"]).expect(0);
            if r.stderr.contains("waiting for another administrator's") {
                saw = true;
                break;
            }
        }
        rotation.join().unwrap();
        saw
    });
    assert!(waiting, "a desk waits for the rotation, saying so");
}

#[test]
fn a_server_restart_in_the_middle_of_an_import_loses_nothing_and_the_import_resumes() {
    let Some(pg) = TestCluster::start_or_skip("a_server_restart_mid_import") else {
        return;
    };
    if pg.dir().is_none() {
        return; // an external server is not restarted by a test
    }
    let v = at(&pg.uri("restarted"));
    v.run(&INIT).expect(0);
    const NOTES: usize = 3000;
    let lines: String = (0..NOTES)
        .map(|i| {
            format!(
                "{{\"patient_id\": \"P{:03}\", \"body\": \"note {i} {}\"}}\n",
                i % 200,
                "x".repeat(200)
            )
        })
        .collect();
    let file = v.tmp.path().join("import.jsonl");
    std::fs::write(&file, lines).unwrap();
    let first = std::thread::scope(|s| {
        let import = s.spawn(|| v.run(&["import", file.to_str().unwrap()]));
        // Once the first batches are in, the server crashes and comes back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let n = pg
                .query_i64(
                    "postgres",
                    "SELECT count(*) FROM carnet_records WHERE space = 'notes'",
                )
                .unwrap();
            if n > 200 || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        pg.restart().unwrap();
        import.join().unwrap()
    });
    eprintln!("the interrupted import: {} {}", first.code, first.stderr);
    if first.code == 0 {
        // It finished before the restart reached it: nothing to resume (rare on this machine).
        return;
    }
    assert_eq!(first.code, 1, "{}", first.stderr);
    assert_eq!(
        first.stderr.trim_end().lines().count(),
        1,
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("PostgreSQL") || first.stderr.contains("server"),
        "{}",
        first.stderr
    );
    // Run again: it resumes, and every note is there exactly once.
    let again = v
        .run(&["--json", "import", file.to_str().unwrap()])
        .expect(0);
    eprintln!("resumed: {}", again.stdout_str());
    v.run(&["verify"]).expect(0);
    let listed = v.run(&["--json", "patient", "list"]).expect(0).json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 200);
    let total: u64 = listed.iter().map(|p| p["notes"].as_u64().unwrap()).sum();
    assert_eq!(total, NOTES as u64, "every note once");
}

#[test]
fn an_import_killed_in_the_middle_of_a_batch_leaves_nothing_half_written() {
    let Some(pg) = TestCluster::start_or_skip("an_import_killed_mid_batch") else {
        return;
    };
    let v = at(&pg.uri("killed"));
    v.run(&INIT).expect(0);
    const NOTES: usize = 3000;
    let lines: String = (0..NOTES)
        .map(|i| {
            format!(
                "{{\"patient_id\": \"P{:02}\", \"body\": \"note {i}\"}}\n",
                i % 50
            )
        })
        .collect();
    let file = v.tmp.path().join("import.jsonl");
    std::fs::write(&file, lines).unwrap();
    let mut child = v
        .cmd(&["import", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while pg
        .query_i64(
            "postgres",
            "SELECT count(*) FROM carnet_records WHERE space = 'notes'",
        )
        .unwrap()
        < 100
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What the killed client committed is whole: the vault verifies, and the import resumes.
    v.run(&["verify"]).expect(0);
    v.run(&["import", file.to_str().unwrap()]).expect(0);
    v.run(&["verify"]).expect(0);
    let listed = v.run(&["--json", "patient", "list"]).expect(0).json();
    let total: u64 = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["notes"].as_u64().unwrap())
        .sum();
    assert_eq!(total, NOTES as u64, "every note once");
}

#[test]
fn clinics_with_roles_of_their_own_reach_only_their_vault_under_row_level_security() {
    let Some(pg) = TestCluster::start_or_skip("clinics_with_roles_of_their_own") else {
        return;
    };
    if pg.dir().is_none() {
        return; // roles are not made on an external server by a test
    }
    // The vendor's owner role makes the tables; the recipe grants the clinics their rows.
    for sql in [
        "CREATE ROLE carnet_owner LOGIN",
        "CREATE DATABASE hosting OWNER carnet_owner",
        "CREATE ROLE clinic_a LOGIN",
        "CREATE ROLE clinic_b LOGIN",
    ] {
        pg.execute("postgres", sql).unwrap();
    }
    let owner = at(&pg.uri_as("carnet_owner", "hosting", "unused"));
    let r = owner.run(&["init", "--tables-only"]).expect(0);
    assert!(r.stdout_str().contains("no vault"), "{}", r.stdout_str());
    pg.execute_as(
        "carnet_owner",
        "hosting",
        "CREATE ROLE carnet_clinics NOLOGIN",
    )
    .unwrap_err(); // the owner needs CREATEROLE for the recipe's role: a superuser runs it
    pg.execute("hosting", include_str!("../../docs/postgresql-rls.sql"))
        .unwrap();
    // Run again (after an upgrade, say): the same result.
    pg.execute("hosting", include_str!("../../docs/postgresql-rls.sql"))
        .unwrap();
    pg.execute(
        "hosting",
        "GRANT carnet_clinics TO clinic_a; GRANT carnet_clinics TO clinic_b",
    )
    .unwrap();
    assert_eq!(
        pg.query_i64("hosting", "SELECT count(*) FROM carnet_vaults")
            .unwrap(),
        0,
        "--tables-only made no vault"
    );

    let a = at(&pg.uri_as("clinic_a", "hosting", "clinic_a"));
    let b = at(&pg.uri_as("clinic_b", "hosting", "clinic_b"));
    for (v, who) in [(&a, "A"), (&b, "B")] {
        v.run(&INIT).expect(0);
        v.run(&["patient", "add", &format!("CANARY-{who}")])
            .expect(0);
        v.run_stdin(&["note", "add", &format!("CANARY-{who}")], b"note")
            .expect(0);
        v.run(&["patient", "add", "SHARED-ID"]).expect(0);
    }
    // A key operation and an erasure (its vacuum is the owner's, and skipped) as a clinic.
    a.run(&["key", "rotate-master"]).expect(0);
    a.run(&["patient", "erase", "SHARED-ID", "--yes"]).expect(0);
    a.run(&["verify"]).expect(0);

    // Through Carnet: another clinic's vault is not there, and none is made in its name.
    let a_at_b = at(&pg.uri_as("clinic_a", "hosting", "clinic_b"));
    // (Every test vault has the same passphrase: only the role differs from b's.)
    let r = a_at_b.run(&["patient", "list"]);
    assert_ne!(r.code, 0, "{}", r.stdout_str());
    assert!(r.stderr.contains("no vault"), "{}", r.stderr);
    // Nor does it learn whether another's name is taken: refused the same way either way.
    assert_eq!(a_at_b.run(&INIT).code, 3);
    let a_elsewhere = at(&pg.uri_as("clinic_a", "hosting", "clinic_c"));
    let r = a_elsewhere.run(&INIT);
    assert_eq!(r.code, 3, "a clinic makes no vault under another name");
    let said: Vec<_> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("carnet: warning"))
        .collect();
    assert_eq!(said.len(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("row-level security"), "{}", r.stderr);

    // A clinic holding the lock that makes the tables holds up nobody's commands (only a
    // missing schema takes it).
    let mut holder = pg.connect_as("clinic_a", "hosting").unwrap();
    holder
        .batch_execute("SELECT pg_advisory_lock(4242424242)")
        .unwrap();
    b.run(&["patient", "list"]).expect(0);
    drop(holder);

    // In SQL: a clinic's role sees and changes its own rows only.
    let total = pg
        .query_i64("hosting", "SELECT count(*) FROM carnet_records")
        .unwrap();
    let seen_by_a = pg
        .query_i64_as("clinic_a", "hosting", "SELECT count(*) FROM carnet_records")
        .unwrap();
    let seen_by_b = pg
        .query_i64_as("clinic_b", "hosting", "SELECT count(*) FROM carnet_records")
        .unwrap();
    assert!(seen_by_a > 0 && seen_by_b > 0);
    assert_eq!(seen_by_a + seen_by_b, total);
    assert_eq!(
        pg.query_i64_as("clinic_a", "hosting", "SELECT count(*) FROM carnet_vaults")
            .unwrap(),
        1
    );
    // Clinic A destroys everything it can reach: clinic B's vault is untouched.
    pg.execute_as(
        "clinic_a",
        "hosting",
        "DELETE FROM carnet_records; DELETE FROM carnet_documents; \
         UPDATE carnet_records SET value = ''::bytea",
    )
    .unwrap();
    let err = pg
        .execute_as("clinic_a", "hosting", "DROP TABLE carnet_records")
        .unwrap_err();
    assert!(err.contains("owner"), "{err}");
    // The clinics' group role, reached by SET ROLE, owns no vault to share between clinics.
    let err = pg
        .execute_as(
            "clinic_a",
            "hosting",
            "SET ROLE carnet_clinics; INSERT INTO carnet_vaults (name) VALUES ('carnet_clinics')",
        )
        .unwrap_err();
    assert!(err.contains("row-level security"), "{err}");
    // Nor may a clinic plant a function where another's statements would find it.
    let err = pg
        .execute_as(
            "clinic_a",
            "hosting",
            "CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        )
        .unwrap_err();
    assert!(err.contains("permission denied"), "{err}");
    b.run(&["verify"]).expect(0);
    let listed = chart(&b, "CANARY-B");
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Every row left is clinic B's.
    assert_eq!(
        pg.query_i64("hosting", "SELECT count(*) FROM carnet_records")
            .unwrap(),
        pg.query_i64_as("clinic_b", "hosting", "SELECT count(*) FROM carnet_records")
            .unwrap()
    );
}

#[test]
fn two_desks_import_different_files_at_once_and_every_note_lands_once() {
    let Some(pg) = TestCluster::start_or_skip("two_desks_import_at_once") else {
        return;
    };
    let v = at(&pg.uri("imports"));
    v.run(&INIT).expect(0);
    // Two files, the same 20 patients in both, in batches (of 1,000) that race each other.
    const PER_FILE: usize = 1500;
    let files: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|which| {
            let lines: String = (0..PER_FILE)
                .map(|i| {
                    format!(
                        "{{\"patient_id\": \"P{:02}\", \"body\": \"{which} {i}\"}}\n",
                        i % 20
                    )
                })
                .collect();
            let file = v.tmp.path().join(format!("{which}.jsonl"));
            std::fs::write(&file, lines).unwrap();
            file
        })
        .collect();
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| s.spawn(|| v.run(&["--json", "import", f.to_str().unwrap()])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &runs {
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.json()["notes_imported"], PER_FILE, "{}", r.stdout_str());
    }
    // Each patient holds exactly its notes of both files: none lost, none doubled.
    for p in 0..20 {
        let listed = chart(&v, &format!("P{p:02}"));
        assert_eq!(listed.as_array().unwrap().len(), 2 * PER_FILE / 20);
    }
    v.run(&["verify"]).expect(0);
}

#[test]
fn a_user_removed_at_a_desk_loses_their_server_session_at_once_and_others_keep_theirs() {
    let Some(pg) = TestCluster::start_or_skip("removed_user_session") else {
        return;
    };
    let v = at(&pg.uri("served"));
    v.run(&INIT).expect(0);
    for user in ["bob", "carol"] {
        let f = v.tmp.path().join(format!("{user}.pass"));
        write_secret(&f, format!("{user}'s own long passphrase 7\n"));
        v.run(&[
            "user",
            "add",
            user,
            "--role",
            "clinician",
            "--new-passphrase-file",
            f.to_str().unwrap(),
        ])
        .expect(0);
    }
    v.run(&["patient", "add", "P-1"]).expect(0);
    let s = carnet_tests::serve::Server::start(&v, &[]);
    let bob = s.login("bob", "bob's own long passphrase 7");
    let carol = s.login("carol", "carol's own long passphrase 7");
    assert_eq!(s.get("/v1/patients", Some(&bob)).status, 200);
    // The administrator removes bob from a desk, while the server runs.
    v.run(&["user", "remove", "bob"]).expect(0);
    let a = s.get("/v1/patients", Some(&bob));
    assert_eq!(a.status, 401, "{}", a.text);
    assert!(a.text.contains("removed"), "{}", a.text);
    assert_eq!(
        s.get("/v1/patients", Some(&bob)).status,
        401,
        "the session is over"
    );
    // Carol's session reads the new keys and goes on, reading and writing.
    let listed = s.get("/v1/patients", Some(&carol));
    assert_eq!(listed.status, 200, "{}", listed.text);
    let r = listed.body[0]["ref"].as_str().unwrap().to_string();
    let added = s.post(
        &format!("/v1/patients/{r}/notes"),
        Some(&carol),
        &serde_json::json!({"body": "after"}),
    );
    assert_eq!(added.status, 201, "{}", added.text);
    v.run(&["verify"]).expect(0);
}
