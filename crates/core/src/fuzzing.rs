//! Entry points for the fuzz targets in `fuzz/` (docs/testing.md), and for the property tests
//! that run the same entry points in CI. Compiled only under `cfg(fuzzing)` (set by cargo-fuzz)
//! or in tests, so the parsers stay private in normal builds. Each decoder hook feeds arbitrary
//! bytes to one decoder of stored bytes; none may panic. [`vault_model`] drives a whole vault
//! with operations decoded from the input and checks every answer against a simple model.
//!
//! Test support: here a panic is the report of a finding, so `expect` and `assert` are the
//! point, not a shortcut.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use carnet_storage::MemStore;

use crate::{envelope, frame, keyring, keystore, records};
use crate::{
    Error, KdfParams, NewNote, NewPatient, NoteBody, NoteId, Passphrase, PatientId, Patients, Vault,
};

/// The keyring parser (slots, seals, KDF parameter ranges). Unlocking is left out: it runs
/// Argon2id, which would make every input cost milliseconds.
pub fn keyring(data: &[u8]) {
    let _ = keyring::Keyring::parse(data);
}

/// The key store parser (with the vault id the input itself names, so entries get parsed).
pub fn keystore(data: &[u8]) {
    let vault_id: [u8; 16] = data
        .get(10..26)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; 16]);
    let _ = keystore::KeyStore::parse(data, &vault_id);
}

/// The record envelope parser and the plaintext frame decoder, for every payload type
/// (records, manifests, jobs, users, log entries and the log head).
pub fn envelope_and_frame(data: &[u8]) {
    if let Ok(s) = envelope::Sealed::parse(data) {
        let _ = s.key_version;
    }
    let _ = frame::decode::<records::NoteMetaV1>(data);
    let _ = frame::decode::<records::PatientV1>(data);
    let _ = frame::decode::<records::ManifestV1>(data);
    let _ = frame::decode::<records::RegistryV1>(data);
    let _ = frame::decode::<records::VaultKeysV1>(data);
    let _ = frame::decode::<records::JobV1>(data);
    let _ = frame::decode::<records::UsersV1>(data);
    let _ = frame::decode::<records::LogEntryV1>(data);
    let _ = frame::decode::<records::LogHeadV1>(data);
}

/// The backup archive reader, restoring into memory.
pub fn backup(data: &[u8]) {
    let _ = crate::restore_backup(std::io::Cursor::new(data), &MemStore::new());
}

/// The recovery key and checkpoint text parsers.
pub fn texts(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::RecoveryKey::parse(s);
        let _ = crate::Checkpoint::parse(s);
    }
}

/// Words note bodies are made of: mixed case and non-ASCII, so search's case folding is
/// exercised; "ta" is also a piece of other words.
const WORDS: [&str; 6] = ["alpha", "Beta", "gamma", "ÉCHO", "delta", "écho"];
const NEEDLES: [&str; 5] = ["alpha", "BETA", "écho", "ta", "zzz"];
const PATIENTS: usize = 4;

/// What the vault should hold: per patient (by index), its notes in order, each with every
/// version's body.
#[derive(Default)]
struct Model {
    patients: BTreeMap<usize, Vec<ModelNote>>,
}

/// A note's id and the body of each of its versions.
type ModelNote = (NoteId, Vec<Vec<u8>>);

/// Reads the operations' arguments from the input, one byte at a time (zeros once it ends).
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn body(&mut self) -> Vec<u8> {
        let n = 1 + usize::from(self.byte() % 3);
        let words: Vec<&str> = (0..n)
            .map(|_| WORDS[usize::from(self.byte()) % WORDS.len()])
            .collect();
        words.join(" ").into_bytes()
    }
}

fn pid(i: usize) -> PatientId {
    // Invariant: a short non-empty identifier is always valid.
    PatientId::new(format!("patient-{i}")).expect("valid id")
}

fn body(b: Vec<u8>) -> NoteBody {
    // Invariant: bodies made of a few words are far below the size limit.
    NoteBody::new(b).expect("small body")
}

/// Runs the operations `data` encodes against a fresh in-memory vault and checks each answer
/// against the model: what was written reads back, versions accumulate, unknown ids are
/// refused, search finds exactly the matching current versions, rotations and reopening change
/// nothing readable, erasure removes a patient, and `verify` always passes. Panics on the first
/// disagreement (that is the finding).
pub fn vault_model(data: &[u8]) {
    let store = Arc::new(MemStore::new());
    let pass = Passphrase::new("model passphrase".to_string());
    // Invariant: the smallest valid KDF parameters are valid.
    let kdf = KdfParams::new(KdfParams::MIN_MEMORY_MIB, 1, 1).expect("valid KDF parameters");
    let mut vault = Vault::create(Arc::clone(&store), "admin", &pass, kdf).expect("create");
    let mut model = Model::default();
    let mut input = Input(data);
    // At most 48 operations per input: enough for interesting histories, fast enough to fuzz.
    for _ in 0..48 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte() % 13;
        let p = usize::from(input.byte()) % PATIENTS;
        let id = pid(p);
        let pick = usize::from(input.byte());
        match op {
            0 => {
                let r = vault.add_patient(NewPatient::new(id));
                match model.patients.entry(p) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        r.expect("add patient");
                        e.insert(Vec::new());
                    }
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert!(matches!(r, Err(Error::PatientExists)), "{r:?}");
                    }
                }
            }
            1 => {
                let b = input.body();
                let r = vault.add_note(&id, NewNote::new(body(b.clone())));
                match model.patients.get_mut(&p) {
                    Some(notes) => notes.push((r.expect("add note"), vec![b])),
                    None => assert!(matches!(r, Err(Error::NoSuchPatient)), "{r:?}"),
                }
            }
            2 => {
                let b = input.body();
                let Some(notes) = model.patients.get_mut(&p) else {
                    continue;
                };
                if notes.is_empty() {
                    let r = vault.amend_note(&id, &NoteId([pick as u8; 16]), body(b), None);
                    assert!(matches!(r, Err(Error::NoSuchNote)), "{r:?}");
                    continue;
                }
                let n = pick % notes.len();
                let v = vault
                    .amend_note(&id, &notes[n].0, body(b.clone()), None)
                    .expect("amend");
                notes[n].1.push(b);
                assert_eq!(v as usize, notes[n].1.len());
            }
            3 => match model.patients.get(&p) {
                Some(notes) if !notes.is_empty() => {
                    let (nid, versions) = &notes[pick % notes.len()];
                    let n = vault.note(&id, nid).expect("read note");
                    assert_eq!(n.version as usize, versions.len());
                    assert_eq!(
                        n.body.expect("body").as_bytes(),
                        &versions[versions.len() - 1][..]
                    );
                    let h = vault.note_history(&id, nid).expect("history");
                    let got: Vec<&[u8]> = h
                        .iter()
                        .filter_map(|n| n.body.as_ref())
                        .map(|b| b.as_bytes())
                        .collect();
                    let want: Vec<&[u8]> = versions.iter().map(|v| &v[..]).collect();
                    assert_eq!(got, want);
                }
                Some(_) => assert!(matches!(
                    vault.note(&id, &NoteId([pick as u8; 16])),
                    Err(Error::NoSuchNote)
                )),
                None => assert!(matches!(vault.notes(&id), Err(Error::NoSuchPatient))),
            },
            4 => {
                let listed: Vec<_> = vault
                    .patients()
                    .expect("patients")
                    .into_iter()
                    .map(|p| (p.id.as_str().to_string(), p.notes))
                    .collect();
                let want: Vec<_> = model
                    .patients
                    .iter()
                    .map(|(i, n)| (pid(*i).as_str().to_string(), n.len() as u64))
                    .collect();
                let mut listed_sorted = listed.clone();
                listed_sorted.sort();
                assert_eq!(listed_sorted, want);
                if let Some(notes) = model.patients.get(&p) {
                    let got: Vec<(NoteId, u32)> = vault
                        .notes(&id)
                        .expect("notes")
                        .iter()
                        .map(|n| (n.id, n.version))
                        .collect();
                    let want: Vec<(NoteId, u32)> =
                        notes.iter().map(|(i, v)| (*i, v.len() as u32)).collect();
                    assert_eq!(got, want, "notes in the order they were added");
                }
            }
            5 => {
                let needle = NEEDLES[pick % NEEDLES.len()];
                let mut got: Vec<(String, NoteId)> = vault
                    .search(needle, None)
                    .expect("search")
                    .into_iter()
                    .map(|h| (h.patient_id.as_str().to_string(), h.note_id))
                    .collect();
                got.sort();
                let lower = needle.to_lowercase();
                let mut want: Vec<(String, NoteId)> = Vec::new();
                for (i, notes) in &model.patients {
                    for (nid, versions) in notes {
                        let current =
                            String::from_utf8_lossy(&versions[versions.len() - 1]).to_lowercase();
                        if current.contains(&lower) {
                            want.push((pid(*i).as_str().to_string(), *nid));
                        }
                    }
                }
                want.sort();
                assert_eq!(got, want, "search {needle:?}");
            }
            6 => {
                let r = vault.erase_patient(&id);
                if model.patients.remove(&p).is_some() {
                    r.expect("erase");
                    assert!(matches!(vault.patient(&id), Err(Error::NoSuchPatient)));
                } else {
                    assert!(matches!(r, Err(Error::NoSuchPatient)), "{r:?}");
                }
            }
            7 => {
                let r = vault.rotate_patients(Patients::One(&id), &mut |_, _| {});
                if model.patients.contains_key(&p) {
                    r.expect("rotate patient");
                } else {
                    assert!(matches!(r, Err(Error::NoSuchPatient)), "{r:?}");
                }
            }
            8 => {
                vault.rotate_master(&mut |_, _| {}).expect("rotate master");
            }
            9 => {
                vault
                    .rotate_patients(Patients::All, &mut |_, _| {})
                    .expect("rotate all");
            }
            10 => {
                let b = input.body();
                let mut import = vault.import();
                let nid = import
                    .add(NewPatient::new(id), NewNote::new(body(b.clone())))
                    .expect("import add");
                import.finish().expect("import finish");
                model.patients.entry(p).or_default().push((nid, vec![b]));
            }
            11 => {
                drop(vault);
                vault = Vault::unlock(Arc::clone(&store), "admin", &pass).expect("reopen");
            }
            _ => {
                let report = vault.verify(&mut |_, _| {}).expect("verify runs");
                assert!(report.is_ok(), "{:?}", report.problems);
            }
        }
    }
    let report = vault.verify(&mut |_, _| {}).expect("verify runs");
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[cfg(test)]
mod tests {
    //! The decoders' property tests run in CI: every hook above gets random bytes and
    //! mutations (bit flips, truncations, splices) of real stored bytes. The vault model runs
    //! random operation sequences.

    use super::*;
    use carnet_storage::Store;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// A decoder hook and a real input for it.
    type Sample = (fn(&[u8]), Vec<u8>);

    /// Real inputs for every decoder.
    fn samples() -> &'static Vec<Sample> {
        static S: OnceLock<Vec<Sample>> = OnceLock::new();
        S.get_or_init(|| {
            let store = Arc::new(MemStore::new());
            let pass = Passphrase::new("sample passphrase".to_string());
            let kdf = KdfParams::new(KdfParams::MIN_MEMORY_MIB, 1, 1).unwrap();
            let vault = Vault::create(Arc::clone(&store), "admin", &pass, kdf).unwrap();
            let id = PatientId::new("sample").unwrap();
            vault.add_patient(NewPatient::new(id.clone())).unwrap();
            vault
                .add_note(
                    &id,
                    NewNote::new(NoteBody::new(b"sample".to_vec()).unwrap()),
                )
                .unwrap();
            vault.notes(&id).unwrap();
            let mut out: Vec<Sample> = vec![
                (
                    keyring,
                    store.read_doc(keystore::ROOT_DOC).unwrap().unwrap(),
                ),
                (
                    keystore,
                    store.read_doc(keystore::KEYS_DOC).unwrap().unwrap(),
                ),
            ];
            let mut archive = Vec::new();
            crate::write_backup(&*store, &mut archive).unwrap();
            out.push((backup, archive));
            for space in records::space::ALL {
                for r in store.scan_prefix(space, &[]) {
                    out.push((envelope_and_frame, r.unwrap().1));
                }
            }
            out
        })
    }

    fn mutate(bytes: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        for &(at, kind, val) in edits {
            if b.is_empty() {
                break;
            }
            let i = at % b.len();
            match kind % 4 {
                0 => b[i] ^= 1 << (val % 8),
                1 => b.truncate(i),
                2 => b[i] = val,
                _ => b.insert(i, val),
            }
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn decoders_survive_mutated_real_input(
            which in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        ) {
            let s = samples();
            let (hook, bytes) = &s[which.index(s.len())];
            hook(&mutate(bytes, &edits));
        }

        #[test]
        fn decoders_survive_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            keyring(&bytes);
            keystore(&bytes);
            envelope_and_frame(&bytes);
            backup(&bytes);
            texts(&bytes);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn the_vault_agrees_with_its_model(ops in prop::collection::vec(any::<u8>(), 0..160)) {
            vault_model(&ops);
        }
    }

    #[test]
    fn the_model_sees_every_operation() {
        // Each operation (with patient 0 and pick 0) twice, twice over: exercises the paths on
        // an empty and a populated patient.
        let mut ops = Vec::new();
        for round in 0..2u8 {
            for op in 0..13u8 {
                ops.extend_from_slice(&[op, 0, round, 1, 0, 1]);
            }
        }
        vault_model(&ops);
    }
}
