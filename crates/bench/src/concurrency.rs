//! `carnet-bench --concurrency`: 1, 4 and 16 clients, each with connections of its own (and,
//! for Carnet, a `Vault` of its own, as a separate process would have), doing a clinic's mix on
//! one PostgreSQL vault and on 16 vaults of one database, Carnet beside the plaintext floor
//! (the same rows, batches and preconditions in the same tables, in clear). Throughput, and
//! p50/p95/p99 latency per operation; every acknowledged note is counted back afterwards
//! (lost or duplicated writes must be zero).

use std::time::{Duration, Instant};

use carnet_core::{NewNote, NoteBody, PatientId};
use carnet_storage::{Batch, PgStore, Space, Store};

use crate::peers::{Carnet, Peer, Plain};
use crate::{contains_word, patient_id, Lcg, Spec};

/// Patients per vault, and notes each has before the clients start.
const PATIENTS: usize = 64;
const NOTES_EACH: usize = 10;

/// What every vault holds before the clients start (notes of 512 B).
const SPEC: Spec = Spec {
    patients: PATIENTS,
    notes: PATIENTS * NOTES_EACH,
    mean: 512,
    grouped: false,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Add,
    Chart,
    Search,
}

/// One client's work: its latencies per operation, and how many notes it added (acknowledged).
#[derive(Default)]
struct Work {
    latencies: [Vec<Duration>; 3],
    added: usize,
}

/// A system under test, from one client's side.
trait Client: Send {
    fn run(&mut self, op: Op, patient: usize, rng: &mut Lcg);
}

struct CarnetClient(Carnet<PgStore>);

impl Client for CarnetClient {
    fn run(&mut self, op: Op, patient: usize, rng: &mut Lcg) {
        let pid = PatientId::new(patient_id(patient)).unwrap();
        match op {
            Op::Add => {
                let body = format!("follow-up {} penicillin review", rng.below(1 << 30));
                self.0
                    .vault()
                    .add_note(
                        &pid,
                        NewNote::new(NoteBody::new(body.into_bytes()).unwrap()),
                    )
                    .unwrap();
            }
            Op::Chart => {
                self.0.vault().read_notes(&pid).unwrap();
            }
            Op::Search => {
                self.0.vault().search("penicillin", Some(&pid)).unwrap();
            }
        }
    }
}

const P_PATIENTS: Space = Space::new("patients");
const P_MANIFESTS: Space = Space::new("manifests");
const P_NOTES: Space = Space::new("notes");

struct PlainClient(Plain<PgStore>, u64);

impl Client for PlainClient {
    fn run(&mut self, op: Op, patient: usize, rng: &mut Lcg) {
        let store = self.0.store();
        let pid = patient_id(patient).into_bytes();
        match op {
            Op::Add => loop {
                // As Carnet's write: the note and the patient's manifest in one batch, on the
                // condition that the manifest is still the one read (retried when it is not).
                let manifest = store.get(P_MANIFESTS, &pid).unwrap();
                let n = manifest
                    .as_ref()
                    .map_or(0, |m| u64::from_be_bytes(m[..8].try_into().unwrap()));
                let mut b = Batch::new();
                b.require(P_MANIFESTS, pid.clone(), manifest);
                self.1 += 1;
                let mut key = pid.clone();
                key.extend_from_slice(
                    &(u128::from(self.1) << 64 | u128::from(rng.below(1 << 40))).to_be_bytes(),
                );
                key.extend_from_slice(&1u32.to_be_bytes());
                b.put(P_NOTES, key, b"follow-up penicillin review".to_vec());
                b.put(P_MANIFESTS, pid.clone(), (n + 1).to_be_bytes().to_vec());
                match store.commit(b) {
                    Ok(()) => {
                        store.flush().unwrap();
                        break;
                    }
                    Err(carnet_storage::StoreError::Conflict) => continue,
                    Err(e) => panic!("{e}"),
                }
            },
            Op::Chart => {
                store.get(P_PATIENTS, &pid).unwrap();
                store.get(P_MANIFESTS, &pid).unwrap();
                let _ = store.scan_prefix(P_NOTES, &pid).count();
            }
            Op::Search => {
                let _ = store
                    .scan_prefix(P_NOTES, &pid)
                    .filter(|r| contains_word(&r.as_ref().unwrap().1, b"penicillin"))
                    .count();
            }
        }
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The vaults of one configuration: made and filled before the clock starts.
fn setup(base: &str, carnet: bool, vaults: usize, tag: &str) -> Vec<String> {
    (0..vaults)
        .map(|i| {
            let uri = format!("{base}?vault={tag}-{i}");
            let store = PgStore::create(&uri).unwrap();
            if carnet {
                Carnet::create_in(store).import(&SPEC);
            } else {
                Plain::from_store(store).import(&SPEC);
            }
            uri
        })
        .collect()
}

/// How many notes a vault holds now.
fn count(uri: &str, carnet: bool) -> usize {
    let store = PgStore::open(uri).unwrap();
    if carnet {
        let c = Carnet::open_in(store, &SPEC);
        (0..PATIENTS)
            .map(|p| {
                c.vault()
                    .notes(&PatientId::new(patient_id(p)).unwrap())
                    .unwrap()
                    .len()
            })
            .sum()
    } else {
        store.scan_prefix(P_NOTES, &[]).count()
    }
}

struct Outcome {
    ops_per_s: f64,
    p: [[Duration; 3]; 3],
    lost: i64,
    duplicated: i64,
}

fn run_once(
    base: &str,
    carnet: bool,
    clients: usize,
    vaults: usize,
    for_: Duration,
    tag: &str,
) -> Outcome {
    let uris = setup(base, carnet, vaults, tag);
    // Each client: connections and (Carnet) a Vault of its own, unlocked before the clock.
    let mut made: Vec<Box<dyn Client>> = (0..clients)
        .map(|c| {
            let uri = &uris[c % vaults];
            let store = PgStore::open(uri).unwrap();
            if carnet {
                Box::new(CarnetClient(Carnet::open_in(store, &SPEC))) as Box<dyn Client>
            } else {
                Box::new(PlainClient(Plain::from_store(store), c as u64 * 1_000_000))
            }
        })
        .collect();
    let start = Instant::now();
    let works: Vec<Work> = std::thread::scope(|s| {
        let handles: Vec<_> = made
            .iter_mut()
            .enumerate()
            .map(|(c, client)| {
                s.spawn(move || {
                    let mut rng = Lcg(7 + c as u64);
                    let mut work = Work::default();
                    while start.elapsed() < for_ {
                        // The mix: 4 in 10 note adds, 4 chart reads, 2 searches of one patient.
                        let op = match rng.below(10) {
                            0..=3 => Op::Add,
                            4..=7 => Op::Chart,
                            _ => Op::Search,
                        };
                        let patient = rng.below(PATIENTS as u64) as usize;
                        let t = Instant::now();
                        client.run(op, patient, &mut rng);
                        work.latencies[op as usize].push(t.elapsed());
                        if op == Op::Add {
                            work.added += 1;
                        }
                    }
                    work
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    drop(made);
    let mut all: [Vec<Duration>; 3] = Default::default();
    let mut added_per_vault = vec![0usize; vaults];
    for (c, w) in works.iter().enumerate() {
        for (i, l) in w.latencies.iter().enumerate() {
            all[i].extend_from_slice(l);
        }
        added_per_vault[c % vaults] += w.added;
    }
    let ops: usize = all.iter().map(Vec::len).sum();
    let mut p = [[Duration::ZERO; 3]; 3];
    for (i, l) in all.iter_mut().enumerate() {
        l.sort();
        p[i] = [percentile(l, 0.5), percentile(l, 0.95), percentile(l, 0.99)];
    }
    let (mut lost, mut duplicated) = (0i64, 0i64);
    for (uri, added) in uris.iter().zip(&added_per_vault) {
        let expected = (PATIENTS * NOTES_EACH + added) as i64;
        let found = count(uri, carnet) as i64;
        lost += (expected - found).max(0);
        duplicated += (found - expected).max(0);
    }
    Outcome {
        ops_per_s: ops as f64 / elapsed.as_secs_f64(),
        p,
        lost,
        duplicated,
    }
}

/// Runs every configuration `runs` times and prints the medians.
pub fn run(base: &str, runs: usize, for_: Duration) {
    println!(
        "\ncarnet-bench --concurrency: {PATIENTS} patients × {NOTES_EACH} notes per vault; the mix: 40 % note add, 40 % chart read, 20 % search of one patient; {} s per configuration; medians of {runs} runs",
        for_.as_secs()
    );
    println!("\n| system | vaults | clients | ops/s | add p50/p95/p99 ms | chart p50/p95/p99 ms | search p50/p95/p99 ms | lost | duplicated |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut n = 0;
    for (carnet, name) in [(true, "Carnet"), (false, "plaintext PostgreSQL")] {
        for (vaults_here, clients) in [(1usize, 1usize), (1, 4), (1, 16), (16, 16)] {
            {
                let mut outs: Vec<Outcome> = (0..runs)
                    .map(|r| {
                        n += 1;
                        run_once(
                            base,
                            carnet,
                            clients,
                            vaults_here,
                            for_,
                            &format!("c{n}-{r}"),
                        )
                    })
                    .collect();
                outs.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
                let med = |f: &dyn Fn(&Outcome) -> Duration| {
                    let mut v: Vec<Duration> = outs.iter().map(f).collect();
                    v.sort();
                    v[v.len() / 2]
                };
                let cell = |op: usize| {
                    format!(
                        "{:.1} / {:.1} / {:.1}",
                        ms(med(&|o| o.p[op][0])),
                        ms(med(&|o| o.p[op][1])),
                        ms(med(&|o| o.p[op][2]))
                    )
                };
                let lost: i64 = outs.iter().map(|o| o.lost).sum();
                let dup: i64 = outs.iter().map(|o| o.duplicated).sum();
                println!(
                    "| {name} | {vaults_here} | {clients} | {:.0} | {} | {} | {} | {lost} | {dup} |",
                    outs[outs.len() / 2].ops_per_s,
                    cell(0),
                    cell(1),
                    cell(2)
                );
            }
        }
    }
}
