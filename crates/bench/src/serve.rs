//! `carnet-bench --serve`: a real `carnet serve` (the release binary beside this one) on a sled
//! vault with the default Argon2id settings, and 1, 8 and 32 HTTPS clients on 127.0.0.1, each
//! with its own keep-alive connection and its own clinician session, doing one kind of work at
//! a time: single-note reads, chart reads (a patient's notes with their bodies) and note adds.
//! Throughput and p50/p95/p99 latency, medians of the runs; beside them, the command line doing
//! the same work one command per operation (each pays its unlock); then a flood of wrong
//! passphrases (from many forged addresses, through a trusted proxy's header, so that the
//! per-address delays do not stop it), with the server's memory sampled throughout and a
//! clinician reading beside it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carnet_core::{KdfParams, NewNote, NewPatient, NoteBody, Passphrase, PatientId, Role, Vault};
use carnet_storage::SledStore;

use crate::{patient_id, Lcg, Spec};

const ADMIN_PASS: &str = "the administrator's long passphrase 7";
const BOB_PASS: &str = "bob's own long passphrase for the bench 7";
/// The vault: patients, and notes each (of 1 KiB on average).
const PATIENTS: usize = 100;
const NOTES_EACH: usize = 20;
const CLIENTS: [usize; 3] = [1, 8, 32];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    NoteRead,
    ChartRead,
    NoteAdd,
}

impl Work {
    const ALL: [Work; 3] = [Work::NoteRead, Work::ChartRead, Work::NoteAdd];
    fn name(self) -> &'static str {
        match self {
            Work::NoteRead => "single-note read",
            Work::ChartRead => "chart read (20 notes with bodies)",
            Work::NoteAdd => "note add (1 KiB)",
        }
    }
}

/// What the clients address: each patient's id and reference, and its notes' ids.
struct Chart {
    id: String,
    reference: String,
    notes: Vec<String>,
}

/// The `carnet` binary beside this one (`cargo build --release -p carnet-cli` makes it).
fn carnet_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CARNET_BIN") {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().unwrap();
    let p = me.with_file_name("carnet");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release -p carnet-cli` first (or set CARNET_BIN)",
        p.display()
    );
    p
}

fn setup(dir: &Path) -> Vec<Chart> {
    let admin = Passphrase::new(ADMIN_PASS.into());
    let mut v = Vault::create(
        SledStore::create(dir).unwrap(),
        "admin",
        &admin,
        KdfParams::default(),
    )
    .unwrap();
    v.add_user("bob", Role::Clinician, &Passphrase::new(BOB_PASS.into()))
        .unwrap();
    let spec = Spec {
        patients: PATIENTS,
        notes: PATIENTS * NOTES_EACH,
        mean: 1024,
        grouped: false,
    };
    let mut charts: Vec<Chart> = (0..PATIENTS)
        .map(|p| {
            let id = patient_id(p);
            let reference = v
                .add_patient(NewPatient::new(PatientId::new(id.clone()).unwrap()))
                .unwrap()
                .expect("a format-3 vault gives references")
                .to_string();
            Chart {
                id,
                reference,
                notes: Vec::new(),
            }
        })
        .collect();
    for (p, body) in spec.data() {
        let id = PatientId::new(charts[p].id.clone()).unwrap();
        let n = v
            .add_note(&id, NewNote::new(NoteBody::new(body).unwrap()))
            .unwrap();
        charts[p].notes.push(n.to_string());
    }
    v.sync_log().unwrap();
    charts
}

/// A running `carnet serve` and what it printed.
struct Server {
    child: Child,
    url: String,
    fingerprint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env(cmd: &mut Command, dir: &Path, state: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CARNET_VAULT", dir)
        .env("CARNET_STATE_DIR", state);
}

fn start(carnet: &Path, dir: &Path, state: &Path, extra: &[&str]) -> Server {
    let mut cmd = Command::new(carnet);
    env(&mut cmd, dir, state);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-file"])
        .arg(state.join("serve.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = loop {
        let l = lines
            .next()
            .expect("carnet serve printed its line")
            .unwrap();
        if let Some(rest) = l.strip_prefix("carnet serve: listening on ") {
            break rest.to_string();
        }
    };
    // The rest of stderr is drained, so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    let (url, fp) = line
        .split_once(" (certificate SHA-256 fingerprint ")
        .unwrap();
    Server {
        child,
        url: url.to_string(),
        fingerprint: fp.trim_end_matches(')').to_string(),
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn login(agent: &ureq::Agent, url: &str, user: &str, pass: &str) -> String {
    let r: serde_json::Value = agent
        .post(&format!("{url}/v1/sessions"))
        .send_json(serde_json::json!({"user": user, "passphrase": pass}))
        .unwrap()
        .into_json()
        .unwrap();
    r["token"].as_str().unwrap().to_string()
}

/// One request of `work` by a client; its latency, or `None` when it failed.
fn request(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    work: Work,
    charts: &[Chart],
    rng: &mut Lcg,
) -> Option<Duration> {
    let c = &charts[rng.below(charts.len() as u64) as usize];
    let auth = format!("Bearer {token}");
    let started = Instant::now();
    let answer = match work {
        Work::NoteRead => {
            let n = &c.notes[rng.below(c.notes.len() as u64) as usize];
            agent
                .get(&format!("{url}/v1/patients/{}/notes/{n}", c.reference))
                .set("Authorization", &auth)
                .call()
        }
        Work::ChartRead => agent
            .get(&format!(
                "{url}/v1/patients/{}/notes?bodies=true",
                c.reference
            ))
            .set("Authorization", &auth)
            .call(),
        Work::NoteAdd => agent
            .post(&format!("{url}/v1/patients/{}/notes", c.reference))
            .set("Authorization", &auth)
            .send_json(serde_json::json!({"body": "x".repeat(1024), "kind": "bench"})),
    };
    match answer {
        Ok(r) => {
            // The whole body is read: a client has its answer only then.
            let _ = std::io::copy(&mut r.into_reader(), &mut std::io::sink());
            Some(started.elapsed())
        }
        Err(_) => None,
    }
}

/// Throughput, p50, p95, p99 (ms) and failures of `clients` clients doing `work` for `for_`.
fn measure(
    server: &Server,
    tokens: &[String],
    charts: &Arc<Vec<Chart>>,
    clients: usize,
    work: Work,
    for_: Duration,
) -> (f64, [f64; 3], u64) {
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + for_;
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (url, fp, token) = (
                server.url.clone(),
                server.fingerprint.clone(),
                tokens[i].clone(),
            );
            let (charts, failed) = (Arc::clone(charts), Arc::clone(&failed));
            std::thread::spawn(move || {
                let agent = carnet_tests::serve::pinned_agent(&fp);
                let mut rng = Lcg(7 + i as u64);
                let mut seen = Vec::new();
                while Instant::now() < deadline {
                    match request(&agent, &url, &token, work, &charts, &mut rng) {
                        Some(d) => seen.push(d),
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    all.sort();
    let p = |q: f64| crate::concurrency::percentile(&all, q).as_secs_f64() * 1000.0;
    (
        all.len() as f64 / elapsed.as_secs_f64(),
        [p(0.50), p(0.95), p(0.99)],
        failed.load(Ordering::Relaxed),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The command line doing `work` `n` times, one command per operation: operations per second.
fn cli(
    carnet: &Path,
    dir: &Path,
    state: &Path,
    pass: &Path,
    charts: &[Chart],
    work: Work,
    n: usize,
) -> f64 {
    let mut rng = Lcg(99);
    let started = Instant::now();
    for _ in 0..n {
        let c = &charts[rng.below(charts.len() as u64) as usize];
        let mut cmd = Command::new(carnet);
        env(&mut cmd, dir, state);
        cmd.env("CARNET_PASSPHRASE_FILE", pass)
            .env("CARNET_USER", "bob")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let status = match work {
            Work::NoteRead => {
                let note = &c.notes[rng.below(c.notes.len() as u64) as usize];
                cmd.args(["note", "show", &c.id, note]).status().unwrap()
            }
            Work::ChartRead => cmd.args(["export", &c.id]).status().unwrap(),
            Work::NoteAdd => {
                let mut child = cmd
                    .args(["note", "add", &c.id, "--kind", "bench"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all("x".repeat(1024).as_bytes())
                    .unwrap();
                child.wait().unwrap()
            }
        };
        assert!(status.success(), "the command line failed");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

pub fn run(quick: bool, runs: usize) {
    let carnet = carnet_binary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vault");
    let state = tmp.path().join("state");
    let pass = tmp.path().join("bob.pass");
    carnet_tests::write_secret(&pass, format!("{BOB_PASS}\n"));
    let charts = Arc::new(setup(&dir));
    let for_ = Duration::from_secs(if quick { 3 } else { 5 });
    println!(
        "\ncarnet-bench --serve: a sled vault of {PATIENTS} patients × {NOTES_EACH} notes of 1 KiB, default Argon2id (64 MiB, 3 passes, 4 lanes); HTTPS (TLS 1.3, keep-alive, certificate pinned) on 127.0.0.1, client and server on the same 2 cores; {} s per configuration, medians of {runs} runs",
        for_.as_secs()
    );

    // The command line first (the server would hold the vault).
    let n_cli = if quick { 3 } else { 5 };
    let cli_rates: Vec<f64> = Work::ALL
        .iter()
        .map(|&w| cli(&carnet, &dir, &state, &pass, &charts, w, n_cli))
        .collect();

    let server = start(&carnet, &dir, &state, &["--concurrent-logins", "2"]);
    let agent = carnet_tests::serve::pinned_agent(&server.fingerprint);
    let login_started = Instant::now();
    let max = *CLIENTS.iter().max().unwrap();
    let tokens: Vec<String> = (0..max)
        .map(|_| login(&agent, &server.url, "bob", BOB_PASS))
        .collect();
    let per_login = login_started.elapsed().as_secs_f64() * 1000.0 / max as f64;
    let rss_logged_in = rss_kib(server.child.id(), "VmRSS:");

    println!("\n| work | clients | requests/s | p50 ms | p95 ms | p99 ms | failed | CLI, one command per operation |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (wi, &work) in Work::ALL.iter().enumerate() {
        for &clients in &CLIENTS {
            let samples: Vec<_> = (0..runs)
                .map(|_| measure(&server, &tokens, &charts, clients, work, for_))
                .collect();
            let rate = median(samples.iter().map(|s| s.0).collect());
            let q = |i: usize| median(samples.iter().map(|s| s.1[i]).collect());
            let failed: u64 = samples.iter().map(|s| s.2).sum();
            println!(
                "| {} | {clients} | {rate:.0} | {:.1} | {:.1} | {:.1} | {failed} | {:.1}/s |",
                work.name(),
                q(0),
                q(1),
                q(2),
                cli_rates[wi]
            );
        }
    }
    println!(
        "\nLogins: {per_login:.0} ms each, one after another ({max} sessions of one clinician); the server's RSS with {max} sessions open: {} MiB.",
        rss_logged_in / 1024
    );
    drop(server);
    flood(&carnet, &dir, &state, &charts, for_ * 2);
}

/// Wrong passphrases from `FLOODERS` threads, each request from a forged address and a new user
/// name (the worst case for the per-name and per-address delays), while one clinician reads.
fn flood(carnet: &Path, dir: &Path, state: &Path, charts: &Arc<Vec<Chart>>, for_: Duration) {
    const FLOODERS: usize = 16;
    let server = start(
        carnet,
        dir,
        state,
        &["--concurrent-logins", "2", "--trust-proxy", "127.0.0.1"],
    );
    let pid = server.child.id();
    let agent = carnet_tests::serve::pinned_agent(&server.fingerprint);
    let token = login(&agent, &server.url, "bob", BOB_PASS);
    let rss_before = rss_kib(pid, "VmRSS:");
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // 401, 429, 503, other
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let (url, fp) = (server.url.clone(), server.fingerprint.clone());
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            std::thread::spawn(move || {
                let agent = carnet_tests::serve::pinned_agent(&fp);
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let forged = format!("10.{}.{}.{}", i, (n >> 8) & 255, n & 255);
                    let r = agent
                        .post(&format!("{url}/v1/sessions"))
                        .set("X-Forwarded-For", &forged)
                        .send_json(serde_json::json!({"user": format!("guess-{i}-{n}"), "passphrase": "wrong wrong wrong"}));
                    let slot = match r {
                        Err(ureq::Error::Status(401, _)) => 0,
                        Err(ureq::Error::Status(429, _)) => 1,
                        Err(ureq::Error::Status(503, _)) => 2,
                        _ => 3,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // A clinician reads single notes meanwhile; the server's memory is sampled.
    let started = Instant::now();
    let mut reads = Vec::new();
    let mut peak = rss_before;
    let mut rng = Lcg(5);
    let mut failed_reads = 0;
    while started.elapsed() < for_ {
        match request(
            &agent,
            &server.url,
            &token,
            Work::NoteRead,
            charts,
            &mut rng,
        ) {
            Some(d) => reads.push(d),
            None => failed_reads += 1,
        }
        peak = peak.max(rss_kib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let half = rss_kib(pid, "VmRSS:");
    // A second stretch as long: memory that grows with the flood shows here.
    let second = Instant::now();
    while second.elapsed() < for_ {
        peak = peak.max(rss_kib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end = rss_kib(pid, "VmRSS:");
    reads.sort();
    let p = |q: f64| crate::concurrency::percentile(&reads, q).as_secs_f64() * 1000.0;
    let c: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "\nFlood of wrong passphrases ({FLOODERS} clients, each attempt a new user name from a new forged address, {elapsed:.0} s): {:.1} attempts/s answered 401 (each a full Argon2id unlock), {:.0}/s answered 503 (unlock queue full), {:.0}/s 429, {} other. Server RSS: {} MiB before, {} MiB at half time, {} MiB at the end, peak {} MiB. A clinician's single-note reads meanwhile: p50 {:.1} ms, p99 {:.1} ms, {} failed.",
        c[0] as f64 / elapsed,
        c[2] as f64 / elapsed,
        c[1] as f64 / elapsed,
        c[3],
        rss_before / 1024,
        half / 1024,
        end / 1024,
        peak / 1024,
        p(0.5),
        p(0.99),
        failed_reads
    );
}
