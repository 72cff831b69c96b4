//! `cargo bench -p carnet-bench`: the hot paths, one operation at a time (criterion). Whole
//! workloads against the peers are `carnet-bench`'s job (docs/performance.md).
//!
//! In memory (`MemStore`), so that what is measured is Carnet's own work (AEAD, encoding, the
//! access log's records), not a disk.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failures abort it

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

use carnet_core::{KdfParams, NewNote, NewPatient, NoteBody, Passphrase, PatientId, Vault};
use carnet_storage::MemStore;

fn vault() -> Vault<Arc<MemStore>> {
    Vault::create(
        Arc::new(MemStore::new()),
        "admin",
        &Passphrase::new("benchmark passphrase".into()),
        KdfParams::new(KdfParams::MIN_MEMORY_MIB, 1, 1).unwrap(),
    )
    .unwrap()
}

fn body(len: usize) -> Vec<u8> {
    b"patient reports cough and fever, follow-up in two weeks. "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// The AEAD alone: what `-C target-cpu=x86-64-v3` changes.
fn aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("xchacha20poly1305");
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let nonce = XNonce::from([9u8; 24]);
    for len in [512usize, 2048, 16384] {
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("seal+open", len), &len, |b, &len| {
            let mut buf = body(len);
            b.iter(|| {
                let tag = cipher
                    .encrypt_in_place_detached(&nonce, b"aad", &mut buf)
                    .unwrap();
                cipher
                    .decrypt_in_place_detached(&nonce, b"aad", &mut buf, &tag)
                    .unwrap();
            });
        });
    }
    g.finish();
}

fn notes(c: &mut Criterion) {
    let mut g = c.benchmark_group("vault");
    let v = vault();
    let id = PatientId::new("FR-0000042").unwrap();
    v.add_patient(NewPatient::new(id.clone())).unwrap();
    g.throughput(Throughput::Bytes(2048));
    g.bench_function("add_note 2 KiB", |b| {
        b.iter(|| {
            v.add_note(&id, NewNote::new(NoteBody::new(body(2048)).unwrap()))
                .unwrap()
        })
    });
    // The per-write cost of a patient's manifest must not grow with the patient's notes.
    for existing in [10usize, 10_000] {
        let big = vault();
        big.add_patient(NewPatient::new(id.clone())).unwrap();
        let mut imp = big.import();
        imp.add_all(
            (0..existing).map(|_| {
                Ok((
                    NewPatient::new(id.clone()),
                    NewNote::new(NoteBody::new(body(512)).unwrap()),
                ))
            }),
            &mut |_| {},
        )
        .unwrap();
        imp.finish().unwrap();
        g.bench_with_input(
            BenchmarkId::new("add_note 2 KiB, patient already has", existing),
            &existing,
            |b, _| {
                b.iter(|| {
                    big.add_note(&id, NewNote::new(NoteBody::new(body(2048)).unwrap()))
                        .unwrap()
                })
            },
        );
    }
    let reader = vault();
    reader.add_patient(NewPatient::new(id.clone())).unwrap();
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(
            reader
                .add_note(&id, NewNote::new(NoteBody::new(body(2048)).unwrap()))
                .unwrap(),
        );
    }
    g.bench_function("note (one read, logged)", |b| {
        b.iter(|| reader.note(&id, &ids[37]).unwrap())
    });
    g.throughput(Throughput::Bytes(100 * 2048));
    g.bench_function("read_notes (chart of 100 notes, logged)", |b| {
        b.iter(|| reader.read_notes(&id).unwrap())
    });
    // A fresh vault each time: every read above added an access-log entry, and verify checks
    // the whole log (docs/performance.md).
    let fresh = || {
        let v = vault();
        v.add_patient(NewPatient::new(id.clone())).unwrap();
        for _ in 0..100 {
            v.add_note(&id, NewNote::new(NoteBody::new(body(2048)).unwrap()))
                .unwrap();
        }
        v
    };
    g.bench_function("verify (100 notes)", |b| {
        b.iter_batched(
            fresh,
            |v| v.verify(&mut |_, _| {}).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = aead, notes
}
criterion_main!(benches);
