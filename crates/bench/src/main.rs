//! `carnet-bench`: whole workloads, Carnet side by side with its peers doing the same logical
//! work on the same data, with the same batching and durability (one flush per batch of 1,000
//! notes and at the end), in the same run. Prints a Markdown table of medians (min–max), each
//! peer's speed relative to Carnet, and the peak RSS of each workload.
//!
//! Peers: plaintext sled with Carnet's key layout (the floor Carnet's cryptography adds to),
//! and with `--features sqlcipher`, SQLCipher 4 with its default settings and plain SQLite
//! (the same bundled library without a key), both in WAL mode with `synchronous=FULL`.
//!
//! ```text
//! cargo run --release -p carnet-bench -- --quick              # under two minutes on 2 cores
//! cargo run --release -p carnet-bench                          # the sizes of issue 5
//! cargo run --release -p carnet-bench -- --full                # and 1,000,000 notes of 512 B
//! cargo run --release -p carnet-bench -- --full-only           # only those
//! cargo run --release -p carnet-bench --features sqlcipher -- --quick
//! cargo build --release -p carnet-cli && cargo run --release -p carnet-bench -- --serve
//! ```
//!
//! `--profile verify|search|read|read-grouped|random|random-grouped [--reps N]` imports once and repeats one workload,
//! for `perf record` or valgrind. docs/performance.md explains the workloads, how to read the
//! table and where the time goes.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: failures abort the run

/// jemalloc, not the system allocator (ADR 0009): glibc's malloc fragments under the import's
/// pattern of 2 KiB records allocated on one thread and freed on another. The `carnet` binary
/// uses it too, so both measure the same allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod concurrency;
mod peers;
mod serve;

use std::time::{Duration, Instant};

use peers::{Carnet, Peer, PlainSled};

/// A small deterministic generator, so every run and every peer gets the same data.
#[derive(Clone)]
pub struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "patient",
    "reports",
    "cough",
    "fever",
    "blood",
    "pressure",
    "follow-up",
    "allergy",
    "penicillin",
    "prescribed",
    "review",
    "symptoms",
    "weeks",
    "stable",
    "referral",
];

/// What to import: `notes` notes spread round-robin over `patients` patients, bodies of
/// `mean` bytes ±25 % (as real notes vary), generated on the fly so that the harness itself
/// holds no data set in memory (the peak RSS is the peer's).
#[derive(Clone, Copy)]
pub struct Spec {
    pub patients: usize,
    pub notes: usize,
    pub mean: usize,
    /// Notes in patient order (an export from another system) instead of round-robin (every
    /// batch touching every patient: the worst case for manifests).
    pub grouped: bool,
}

impl Spec {
    /// Every (patient index, body) in import order.
    pub fn data(&self) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
        let mut rng = Lcg(2026);
        (0..self.notes).map(move |i| {
            let len = self.mean * 3 / 4 + rng.below(self.mean as u64 / 2 + 1) as usize;
            let mut b = Vec::with_capacity(len + 16);
            while b.len() < len {
                b.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
                b.push(b' ');
            }
            b.truncate(len);
            let p = if self.grouped {
                i * self.patients / self.notes
            } else {
                i % self.patients
            };
            (p, b)
        })
    }

    pub fn bytes(&self) -> usize {
        self.data().map(|(_, b)| b.len()).sum()
    }
}

/// The patient identifier of index `p`, the same for every peer.
pub fn patient_id(p: usize) -> String {
    format!("FR-{p:07}")
}

/// Matches `word` in `body` ignoring ASCII case: the search every peer runs on the bodies it
/// reads (Carnet's own search folds full Unicode case, which costs more, not less).
pub fn contains_word(body: &[u8], word: &[u8]) -> bool {
    body.windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// One measurement: time and peak RSS.
#[derive(Clone, Copy)]
struct Sample {
    time: Duration,
    rss_kib: Option<u64>,
}

/// Resets the kernel's peak-RSS mark of this process to its current RSS (Linux).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn measure<T>(f: impl FnOnce() -> T) -> (Sample, T) {
    reset_peak_rss();
    let t = Instant::now();
    let r = f();
    let time = t.elapsed();
    (
        Sample {
            time,
            rss_kib: peak_rss_kib(),
        },
        r,
    )
}

/// One row of the table: a workload, and each peer's samples (in `peer_names` order).
struct Row {
    name: String,
    samples: Vec<Vec<Sample>>,
}

struct Table {
    peer_names: Vec<&'static str>,
    rows: Vec<Row>,
}

impl Table {
    fn record(&mut self, workload: &str, peer: usize, s: Sample) {
        let i = match self.rows.iter().position(|r| r.name == workload) {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    name: workload.to_string(),
                    samples: vec![Vec::new(); self.peer_names.len()],
                });
                self.rows.len() - 1
            }
        };
        self.rows[i].samples[peer].push(s);
    }

    fn print(&self) {
        let mut head = "| workload |".to_string();
        let mut rule = "| --- |".to_string();
        for (i, p) in self.peer_names.iter().enumerate() {
            head.push_str(&format!(" {p}: median (min–max) |"));
            rule.push_str(" --- |");
            if i > 0 {
                head.push_str(&format!(" Carnet speed vs {p} |"));
                rule.push_str(" --- |");
            }
        }
        head.push_str(" peak RSS MiB (");
        head.push_str(&self.peer_names.join(" / "));
        head.push_str(") |");
        rule.push_str(" --- |");
        println!("\n{head}\n{rule}");
        for r in &self.rows {
            let mut line = format!("| {} |", r.name);
            let carnet = median(&r.samples[0]);
            for (i, s) in r.samples.iter().enumerate() {
                if s.is_empty() {
                    line.push_str(" — |");
                    if i > 0 {
                        line.push_str(" — |");
                    }
                    continue;
                }
                line.push_str(&format!(" {} |", fmt(s)));
                if i > 0 {
                    match carnet {
                        Some(c) => line.push_str(&format!(
                            " {:.2}x |",
                            median(s).unwrap().as_secs_f64() / c.as_secs_f64()
                        )),
                        None => line.push_str(" — |"),
                    }
                }
            }
            let rss: Vec<String> = r
                .samples
                .iter()
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x.rss_kib)
                        .max()
                        .map_or("—".into(), |k| format!("{}", k / 1024))
                })
                .collect();
            line.push_str(&format!(" {} |", rss.join(" / ")));
            println!("{line}");
        }
    }
}

fn median(v: &[Sample]) -> Option<Duration> {
    let mut s: Vec<Duration> = v.iter().map(|x| x.time).collect();
    s.sort();
    s.get(s.len() / 2).copied()
}

fn fmt(v: &[Sample]) -> String {
    let mut s: Vec<Duration> = v.iter().map(|x| x.time).collect();
    s.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if s.len() == 1 {
        return format!("{:.1} ms", ms(s[0]));
    }
    format!(
        "{:.1} ms ({:.1}–{:.1})",
        ms(s[s.len() / 2]),
        ms(s[0]),
        ms(s[s.len() - 1])
    )
}

type MakePeer = fn(&std::path::Path) -> Box<dyn Peer>;
type OpenPeer = fn(&std::path::Path, &Spec) -> Box<dyn Peer>;

/// Each peer: its name, how to create a store, how to open the store an earlier process made.
fn peers() -> Vec<(&'static str, MakePeer, OpenPeer)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, MakePeer, OpenPeer)> = vec![
        (
            "Carnet",
            |d| Box::new(Carnet::create(d)),
            |d, s| Box::new(Carnet::open(d, s)),
        ),
        (
            "plaintext sled",
            |d| Box::new(PlainSled::create(d)),
            |d, s| Box::new(PlainSled::open(d, s)),
        ),
    ];
    if with_postgres() {
        v.push((
            "Carnet on PostgreSQL",
            |d| Box::new(Carnet::create_pg(d)),
            |d, s| Box::new(Carnet::open_pg(d, s)),
        ));
        v.push((
            "plaintext PostgreSQL",
            |d| Box::new(peers::Plain::create_pg(d)),
            |d, s| Box::new(peers::Plain::open_pg(d, s)),
        ));
    }
    #[cfg(feature = "sqlcipher")]
    {
        v.push((
            "SQLCipher 4",
            |d| Box::new(peers::Sqlite::create(d, true)),
            |d, s| Box::new(peers::Sqlite::open(d, true, s)),
        ));
        v.push((
            "SQLite",
            |d| Box::new(peers::Sqlite::create(d, false)),
            |d, s| Box::new(peers::Sqlite::open(d, false, s)),
        ));
    }
    v
}

/// Whether the PostgreSQL peers run: `--postgres` (the parent), or the server's URI passed
/// down (a child).
fn with_postgres() -> bool {
    std::env::args().any(|a| a == "--postgres") || std::env::var_os("CARNET_BENCH_PG").is_some()
}

/// The benchmark's PostgreSQL server: `CARNET_BENCH_PG`, else the throwaway one `main` starts.
static PG_BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn pg_base() -> &'static str {
    PG_BASE
        .get()
        .map(String::as_str)
        .expect("the PostgreSQL server was started")
}

/// Starts the benchmark's PostgreSQL server when the run needs one and none is named: held by
/// the caller, stopped and removed when dropped.
fn start_postgres() -> Option<carnet_storage::pg_cluster::TestCluster> {
    if let Ok(base) = std::env::var("CARNET_BENCH_PG") {
        let _ = PG_BASE.set(base);
        return None;
    }
    let cluster = carnet_storage::pg_cluster::TestCluster::start()
        .unwrap_or_else(|e| panic!("no PostgreSQL server: {e:?}"));
    let _ = PG_BASE.set(cluster.uri("x").replace("?vault=x", ""));
    Some(cluster)
}

/// Sizes of the run.
struct Sizes {
    quick: bool,
    full: bool,
    runs: usize,
    main: Spec,
    scales: Vec<(usize, usize)>,
}

impl Sizes {
    fn from_args(args: &[String]) -> Sizes {
        let quick = args.iter().any(|a| a == "--quick");
        let full = args.iter().any(|a| a == "--full");
        Sizes {
            quick,
            full,
            runs: if quick { 3 } else { 5 },
            main: if quick {
                Spec {
                    patients: 200,
                    notes: 20_000,
                    mean: 2048,
                    grouped: false,
                }
            } else {
                Spec {
                    patients: 1000,
                    notes: 100_000,
                    mean: 2048,
                    grouped: false,
                }
            },
            // Master-key rotation at growing sizes, one note of 512 B per patient, then at 10
            // and 100 notes per patient (what a rotation must not depend on).
            scales: if quick {
                vec![(1_000, 1), (10_000, 1), (1_000, 10), (1_000, 100)]
            } else {
                vec![
                    (1_000, 1),
                    (10_000, 1),
                    (100_000, 1),
                    (10_000, 10),
                    (10_000, 100),
                ]
            },
        }
    }
}

/// Prints one measurement for the parent process.
fn report(workload: &str, s: Sample) {
    println!(
        "R\t{workload}\t{}\t{}",
        s.time.as_nanos(),
        s.rss_kib.unwrap_or(0)
    );
}

/// Runs one scenario for one peer, in a process of its own (so that each workload's peak RSS
/// is its own), printing each measurement.
fn child(peer: usize, scenario: &str, sizes: &Sizes) {
    let (_, make, open) = peers()[peer];
    let runs = sizes.runs;
    let spec = sizes.main;
    let parts: Vec<&str> = scenario.split(':').collect();
    // The main workloads share a store that the parent names: import, then reads, then
    // verify, each in a fresh process.
    if let [step, dir] = parts[..] {
        let dir = std::path::Path::new(dir);
        match step {
            "import" => {
                let mut p = make(dir);
                let (s, _) = measure(|| p.import(&spec));
                report(
                    &format!(
                        "import {} notes of {} B (batches of 1,000)",
                        spec.notes, spec.mean
                    ),
                    s,
                );
            }
            "import-grouped" => {
                let mut p = make(dir);
                let grouped = Spec {
                    grouped: true,
                    ..spec
                };
                let (s, _) = measure(|| p.import(&grouped));
                report(
                    &format!(
                        "import {} notes of {} B, in patient order",
                        spec.notes, spec.mean
                    ),
                    s,
                );
            }
            "reads" => {
                let mut p = open(dir, &spec);
                let (s, n) = measure(|| {
                    (0..50)
                        .map(|k| p.read_patient(k * spec.patients / 50))
                        .sum::<usize>()
                });
                assert_eq!(n, 50 * spec.notes / spec.patients);
                report("open 50 patients, read all their notes", s);
                let (s, _) = measure(|| p.random_reads(1000));
                report("1,000 random single-note reads", s);
                let (s, hits) = measure(|| p.search(b"penicillin"));
                assert!(hits > 0);
                report("search one word over all notes", s);
                // The same reads with Carnet's access-log entries flushed together (at most
                // 50 ms apart) instead of one fsync per read.
                p.group_read_log();
                let (s, _) = measure(|| {
                    (0..50)
                        .map(|k| p.read_patient(k * spec.patients / 50))
                        .sum::<usize>()
                });
                report("open 50 patients (Carnet: ReadLog::Grouped 50 ms)", s);
                let (s, _) = measure(|| p.random_reads(1000));
                report("1,000 random reads (Carnet: ReadLog::Grouped 50 ms)", s);
            }
            "verify" => {
                let p = open(dir, &spec);
                let (s, ok) = measure(|| p.verify());
                assert!(ok);
                report("verify (read and check everything)", s);
            }
            _ => panic!("unknown scenario {scenario}"),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = make(dir.path());
    match parts[..] {
        ["rotate", patients, per] => {
            let (patients, per): (usize, usize) = (patients.parse().unwrap(), per.parse().unwrap());
            p.import(&Spec {
                patients,
                notes: patients * per,
                mean: 512,
                grouped: false,
            });
            for _ in 0..runs {
                if let (s, true) = measure(|| p.rotate_master(patients)) {
                    report(
                        &format!("rotate-master: {patients} patients × {per} note(s) of 512 B"),
                        s,
                    );
                }
            }
        }
        ["rotate-patient"] => {
            p.import(&Spec {
                patients: 1,
                notes: 1000,
                mean: 2048,
                grouped: false,
            });
            for _ in 0..runs {
                if let (s, true) = measure(|| p.rotate_patient(0)) {
                    report("rotate-patient: one patient with 1,000 notes", s);
                }
            }
        }
        ["full"] => {
            let spec = Spec {
                patients: 10_000,
                notes: 1_000_000,
                mean: 512,
                grouped: false,
            };
            let (s, _) = measure(|| p.import(&spec));
            report("--full: import 1,000,000 notes of 512 B", s);
            let (s, ok) = measure(|| p.verify());
            assert!(ok);
            report("--full: verify 1,000,000 notes", s);
        }
        ["unlock"] => {
            drop(p);
            for _ in 0..runs {
                let (s, _) = measure(Carnet::unlock_default_kdf);
                report("unlock (Argon2id 64 MiB, t=3, p=4)", s);
            }
        }
        _ => panic!("unknown scenario {scenario}"),
    }
}

/// Runs `scenario` for `peer` in a child process and records what it reports.
fn spawn(table: &mut Table, peer: usize, scenario: &str, args: &[String]) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    if with_postgres() {
        cmd.env("CARNET_BENCH_PG", pg_base());
    }
    let out = cmd
        .args(args.iter().filter(|a| *a == "--quick" || *a == "--full"))
        .args(["--child", &peer.to_string(), scenario])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{scenario} for peer {peer} failed");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if let ["R", name, nanos, rss] = f[..] {
            let rss: u64 = rss.parse().unwrap();
            table.record(
                name,
                peer,
                Sample {
                    time: Duration::from_nanos(nanos.parse().unwrap()),
                    rss_kib: (rss > 0).then_some(rss),
                },
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes = Sizes::from_args(&args);
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args[i + 1].parse().unwrap(), &args[i + 2], &sizes);
        return;
    }
    // `--profile WORKLOAD`: import once, then repeat one workload (for perf/callgrind).
    if let Some(w) = args
        .iter()
        .position(|a| a == "--profile")
        .and_then(|i| args.get(i + 1))
    {
        let dir = tempfile::tempdir().unwrap();
        Carnet::create(dir.path()).import(&sizes.main);
        let mut peer = Carnet::open(dir.path(), &sizes.main);
        if w.ends_with("-grouped") {
            peer.group_read_log();
        }
        // `--reps N`: how many times (default 20).
        let reps = args
            .iter()
            .position(|a| a == "--reps")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(20);
        eprintln!("imported; repeating {w} {reps} times");
        for _ in 0..reps {
            match w.as_str() {
                "verify" => assert!(peer.verify()),
                "search" => assert!(peer.search(b"penicillin") > 0),
                "read" | "read-grouped" => assert!(peer.read_patient(7) > 0),
                "random" | "random-grouped" => peer.random_reads(100),
                other => panic!("unknown workload {other}"),
            }
        }
        return;
    }
    // `--serve`: HTTPS clients of a real `carnet serve` (serve.rs), then nothing else.
    if args.iter().any(|a| a == "--serve") {
        serve::run(sizes.quick, 3);
        return;
    }
    let _cluster = if with_postgres() || args.iter().any(|a| a == "--concurrency") {
        start_postgres()
    } else {
        None
    };
    // `--concurrency`: clients at once on PostgreSQL (concurrency.rs), then nothing else.
    if args.iter().any(|a| a == "--concurrency") {
        let secs = if sizes.quick { 3 } else { 8 };
        concurrency::run(pg_base(), 3, Duration::from_secs(secs));
        return;
    }
    let peer_names: Vec<&'static str> = peers().iter().map(|p| p.0).collect();
    let mut table = Table {
        peer_names: peer_names.clone(),
        rows: Vec::new(),
    };
    let m = sizes.main;
    println!(
        "carnet-bench{}{}: import {} notes ({:.1} MB, mean {} B ±25 %) for {} patients; {} runs; peers: {}",
        if sizes.quick { " --quick" } else { "" },
        if sizes.full { " --full" } else { "" },
        m.notes,
        m.bytes() as f64 / 1e6,
        m.mean,
        m.patients,
        sizes.runs,
        peer_names.join(", ")
    );
    let not_pg = |p: &usize| !peer_names[*p].contains("PostgreSQL");
    // `--full-only`: just the 1,000,000-note scenario.
    let only_full = args.iter().any(|a| a == "--full-only");
    for run in 0..if only_full { 0 } else { sizes.runs } {
        for peer in 0..peer_names.len() {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_str().unwrap();
            for step in ["import", "reads", "verify"] {
                spawn(&mut table, peer, &format!("{step}:{d}"), &args);
            }
            if !not_pg(&peer) {
                continue; // the main workloads only
            }
            let other = tempfile::tempdir().unwrap();
            let d = other.path().to_str().unwrap();
            spawn(&mut table, peer, &format!("import-grouped:{d}"), &args);
        }
        eprintln!("main workloads: run {} of {} done", run + 1, sizes.runs);
    }
    for (patients, per) in sizes.scales.iter().filter(|_| !only_full) {
        for peer in (0..peer_names.len()).filter(not_pg) {
            spawn(&mut table, peer, &format!("rotate:{patients}:{per}"), &args);
        }
        eprintln!("rotate-master at {patients} × {per} done");
    }
    for peer in (0..peer_names.len()).filter(|_| !only_full).filter(not_pg) {
        spawn(&mut table, peer, "rotate-patient", &args);
    }
    if sizes.full || only_full {
        for (peer, name) in peer_names.iter().enumerate().filter(|(p, _)| not_pg(p)) {
            spawn(&mut table, peer, "full", &args);
            eprintln!("--full: {name} done");
        }
    }
    if !only_full {
        spawn(&mut table, 0, "unlock", &args);
    }
    table.print();
    println!(
        "\nSpeed columns: the peer's time divided by Carnet's (above 1: Carnet is faster). \
         Peak RSS: the high-water mark of the process that ran the workload: import in one \
         process, the three reads in a second (each reset before it starts), verify in a \
         third; rotations import first, then rotate."
    );
}
