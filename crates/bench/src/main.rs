//! `carnet-bench`: whole workloads, Carnet side by side with a plaintext sled baseline doing the
//! same logical work with the same key layout, batching and durability (one flush per batch),
//! in the same run on the same data. Prints a table of medians (min–max) and ratios.
//!
//! ```text
//! cargo run --release -p carnet-bench -- --quick     # under two minutes on 2 cores
//! cargo run --release -p carnet-bench                 # the full sizes of docs/performance.md
//! ```
//!
//! SQLCipher and plain SQLite peers, and peak-RSS measurement per workload, are not here yet
//! (docs/performance.md, "Not measured yet").
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: failures abort the run

use std::time::{Duration, Instant};

use carnet_core::{KdfParams, NewNote, NewPatient, NoteBody, NoteId, Passphrase, PatientId, Vault};
use carnet_storage::{Batch, SledStore, Space, Store};

const PASS: &str = "benchmark passphrase, not secret";
const BATCH: usize = 1000;

/// A small deterministic generator, so every run uses the same data.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Note bodies whose sizes vary around `mean` (±25 %), as real notes do.
fn bodies(n: usize, mean: usize, rng: &mut Lcg) -> Vec<Vec<u8>> {
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
    (0..n)
        .map(|_| {
            let len = mean * 3 / 4 + rng.below(mean as u64 / 2 + 1) as usize;
            let mut b = Vec::with_capacity(len + 16);
            while b.len() < len {
                b.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
                b.push(b' ');
            }
            b.truncate(len);
            b
        })
        .collect()
}

fn kdf() -> KdfParams {
    KdfParams::new(8, 1, 1).unwrap()
}

/// The plaintext baseline: the same spaces, keys and batching as Carnet, no cryptography.
struct Plain {
    store: SledStore,
}

const P_PATIENTS: Space = Space::new("patients");
const P_MANIFESTS: Space = Space::new("manifests");
const P_NOTES: Space = Space::new("notes");

impl Plain {
    /// Imports, and returns a sample of 1,000 note keys (for the random reads).
    fn import(&self, patients: usize, notes: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut sample = Vec::new();
        let mut batch = Batch::new();
        let mut counts = vec![0u64; patients];
        for (i, body) in notes.iter().enumerate() {
            let p = i % patients;
            let pid = format!("P{p:06}").into_bytes();
            if counts[p] == 0 {
                batch.put(P_PATIENTS, pid.clone(), b"name and birth date".to_vec());
            }
            counts[p] += 1;
            let mut key = pid.clone();
            key.extend_from_slice(&(i as u128).to_be_bytes());
            key.extend_from_slice(&1u32.to_be_bytes());
            if i % (notes.len() / 1000).max(1) == 0 {
                sample.push(key.clone());
            }
            batch.put(P_NOTES, key, body.clone());
            batch.put(P_MANIFESTS, pid, counts[p].to_be_bytes().to_vec());
            if (i + 1) % BATCH == 0 {
                self.store.commit(std::mem::take(&mut batch)).unwrap();
                self.store.flush().unwrap();
            }
        }
        self.store.commit(batch).unwrap();
        self.store.flush().unwrap();
        sample
    }

    /// One note: its patient's record and manifest, then the note itself.
    fn read_note(&self, key: &[u8]) -> usize {
        let pid = &key[..7];
        self.store.get(P_PATIENTS, pid).unwrap().unwrap();
        self.store.get(P_MANIFESTS, pid).unwrap().unwrap();
        self.store.get(P_NOTES, key).unwrap().unwrap().len()
    }

    fn read_patient(&self, p: usize) -> usize {
        let pid = format!("P{p:06}").into_bytes();
        self.store.get(P_PATIENTS, &pid).unwrap().unwrap();
        self.store.get(P_MANIFESTS, &pid).unwrap().unwrap();
        self.store
            .scan_prefix(P_NOTES, &pid)
            .map(|r| r.unwrap().1.len())
            .sum()
    }

    fn search(&self, word: &[u8]) -> usize {
        self.store
            .scan_prefix(P_NOTES, &[])
            .filter(|r| {
                r.as_ref()
                    .unwrap()
                    .1
                    .windows(word.len())
                    .any(|w| w.eq_ignore_ascii_case(word))
            })
            .count()
    }

    fn scan_all(&self) -> usize {
        self.store
            .scan_prefix(P_NOTES, &[])
            .map(|r| r.unwrap().1.len())
            .sum()
    }

    /// What a master-key rotation costs without cryptography: one record per patient, one batch.
    fn rewrite_patients(&self, patients: usize) {
        let mut batch = Batch::new();
        for p in 0..patients {
            batch.put(P_PATIENTS, format!("P{p:06}").into_bytes(), vec![7u8; 81]);
        }
        self.store.commit(batch).unwrap();
        self.store.flush().unwrap();
    }
}

struct Row {
    name: String,
    carnet: Vec<Duration>,
    plain: Vec<Duration>,
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn fmt(v: &[Duration]) -> String {
    let mut s = v.to_vec();
    s.sort();
    format!(
        "{:>9.1} ms ({:.1}–{:.1})",
        median(&s).as_secs_f64() * 1e3,
        s[0].as_secs_f64() * 1e3,
        s[s.len() - 1].as_secs_f64() * 1e3
    )
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 3 } else { 5 };
    let (patients, notes_n, mean) = if quick {
        (200, 20_000, 2048)
    } else {
        (1000, 100_000, 2048)
    };
    let mut rng = Lcg(2026);
    let data = bodies(notes_n, mean, &mut rng);
    let bytes: usize = data.iter().map(Vec::len).sum();
    println!(
        "carnet-bench{}: {notes_n} notes ({:.1} MB, mean {mean} B ±25 %) for {patients} patients; {runs} runs each",
        if quick { " --quick" } else { "" },
        bytes as f64 / 1e6
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |name: &str| {
        rows.push(Row {
            name: name.to_string(),
            carnet: Vec::new(),
            plain: Vec::new(),
        });
        rows.len() - 1
    };
    let (r_import, r_read, r_random, r_search, r_verify) = (
        row("import (one flush per 1,000 notes)"),
        row("read every note of 50 patients"),
        row("1,000 random single-note reads"),
        row("search one word, all notes"),
        row("verify / scan everything"),
    );
    let r_rotate = row(&format!("rotate-master, {patients} patients"));
    let mut ids: Vec<(PatientId, NoteId)> = Vec::new();
    for run in 0..runs {
        // Carnet.
        ids.clear();
        let dir = tempfile::tempdir().unwrap();
        let mut vault = Vault::create(
            SledStore::create(&dir.path().join("v")).unwrap(),
            "admin",
            &Passphrase::new(PASS.into()),
            kdf(),
        )
        .unwrap();
        let (t, _) = time(|| {
            let mut imp = vault.import();
            for (i, body) in data.iter().enumerate() {
                let pid = PatientId::new(format!("P{:06}", i % patients)).unwrap();
                let id = imp
                    .add(
                        NewPatient::new(pid.clone()),
                        NewNote::new(NoteBody::new(body.clone()).unwrap()),
                    )
                    .unwrap();
                if i % (notes_n / 1000) == 0 {
                    ids.push((pid, id));
                }
            }
            imp.finish().unwrap();
        });
        rows[r_import].carnet.push(t);
        let (t, _) = time(|| {
            for p in 0..50 {
                let pid = PatientId::new(format!("P{:06}", p * patients / 50)).unwrap();
                for n in vault.notes(&pid).unwrap() {
                    vault.note(&pid, &n.id).unwrap();
                }
            }
        });
        rows[r_read].carnet.push(t);
        let (t, _) = time(|| {
            for k in 0..1000 {
                let (pid, id) = &ids[(k * 7919) % ids.len()];
                vault.note(pid, id).unwrap();
            }
        });
        rows[r_random].carnet.push(t);
        let (t, hits) = time(|| vault.search("penicillin", None).unwrap().len());
        assert!(hits > 0);
        rows[r_search].carnet.push(t);
        let (t, r) = time(|| vault.verify(&mut |_, _| {}).unwrap());
        assert!(r.is_ok());
        rows[r_verify].carnet.push(t);
        let (t, _) = time(|| vault.rotate_master(&mut |_, _| {}).unwrap());
        rows[r_rotate].carnet.push(t);
        drop(vault);

        // Plaintext sled, same layout.
        let dir = tempfile::tempdir().unwrap();
        let plain = Plain {
            store: SledStore::create(&dir.path().join("v")).unwrap(),
        };
        let (t, sample) = time(|| plain.import(patients, &data));
        rows[r_import].plain.push(t);
        rows[r_read].plain.push(
            time(|| {
                (0..50)
                    .map(|p| plain.read_patient(p * patients / 50))
                    .sum::<usize>()
            })
            .0,
        );
        rows[r_random].plain.push(
            time(|| {
                for k in 0..1000 {
                    plain.read_note(&sample[(k * 7919) % sample.len()]);
                }
            })
            .0,
        );
        rows[r_search]
            .plain
            .push(time(|| plain.search(b"penicillin")).0);
        rows[r_verify].plain.push(time(|| plain.scan_all()).0);
        rows[r_rotate]
            .plain
            .push(time(|| plain.rewrite_patients(patients)).0);
        eprintln!("run {} of {runs} done", run + 1);
    }
    let (t_unlock, _) = {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        drop(
            Vault::create(
                SledStore::create(&p).unwrap(),
                "admin",
                &Passphrase::new(PASS.into()),
                KdfParams::default(),
            )
            .unwrap(),
        );
        let store = SledStore::open(&p).unwrap();
        time(|| Vault::unlock(store, "admin", &Passphrase::new(PASS.into())).unwrap())
    };
    println!(
        "\n| workload | Carnet: median (min–max) | plaintext sled | Carnet / plaintext speed |"
    );
    println!("| --- | --- | --- | --- |");
    for r in &rows {
        let ratio = median(&r.plain).as_secs_f64() / median(&r.carnet).as_secs_f64();
        println!(
            "| {} | {} | {} | {:.2}x |",
            r.name,
            fmt(&r.carnet),
            fmt(&r.plain),
            ratio
        );
    }
    println!(
        "| unlock, Argon2id 64 MiB / t=3 / p=4 | {:>9.1} ms | — | — |",
        t_unlock.as_secs_f64() * 1e3
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM")) {
        println!(
            "\npeak RSS of the whole run: {}",
            hwm.trim_start_matches("VmHWM:").trim()
        );
    }
}
