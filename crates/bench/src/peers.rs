//! The peers: each does the same logical work on the same data, with one flush (fsync) per
//! batch of 1,000 notes and at the end.

use std::path::Path;

use carnet_core::{
    KdfParams, NewNote, NewPatient, NoteBody, NoteId, Passphrase, PatientId, Patients, Vault,
};
use carnet_storage::{Batch, PgStore, SledStore, Space, Store};

use crate::{contains_word, patient_id, Spec};

const PASS: &str = "benchmark passphrase, not secret";
const BATCH: usize = 1000;

/// One storage system under test.
pub trait Peer {
    /// Imports `spec`'s notes, one flush per 1,000 notes and one at the end.
    fn import(&mut self, spec: &Spec);
    /// Opens patient `p` and reads every note (current version, with its body); returns how
    /// many.
    fn read_patient(&self, p: usize) -> usize;
    /// `n` single-note reads spread over the vault, each looked up by patient and note.
    fn random_reads(&self, n: usize);
    /// How many notes contain `word` (ignoring case).
    fn search(&self, word: &[u8]) -> usize;
    /// Reads (and, where the peer can, authenticates) everything; true when intact.
    fn verify(&self) -> bool;
    /// Changes the key that protects everything (false: the peer has no such operation).
    fn rotate_master(&mut self, patients: usize) -> bool;
    /// Re-encrypts one patient's notes under a new key (false: no such operation).
    fn rotate_patient(&mut self, p: usize) -> bool;
    /// Lets reads' access-log entries share flushes (Carnet's `ReadLog::Grouped`); the peers
    /// keep no access log, so for them this changes nothing.
    fn group_read_log(&mut self) {}
}

/// The KDF of the benchmark vaults (unlocking is measured on its own).
fn small_kdf() -> KdfParams {
    KdfParams::new(KdfParams::MIN_MEMORY_MIB, 1, 1).unwrap()
}

pub struct Carnet<S: Store = SledStore> {
    vault: Vault<S>,
    /// A sample of (patient, note) for the random reads (see `open`).
    sample: Vec<(PatientId, NoteId)>,
}

/// The PostgreSQL vault standing for the directory `dir` on the benchmark's server (whose URI,
/// without `vault=`, the parent passes in `CARNET_BENCH_PG`).
pub fn pg_uri(dir: &Path) -> String {
    let base = std::env::var("CARNET_BENCH_PG").expect("CARNET_BENCH_PG names the server");
    let name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = &name[name.len().saturating_sub(60)..];
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}vault=b{name}")
}

impl Carnet<SledStore> {
    pub fn create(dir: &Path) -> Self {
        Self::create_in(SledStore::create(&dir.join("v")).unwrap())
    }

    /// Opens the vault `create` made in `dir` (the same small KDF), and picks the sample of
    /// 1,000 notes spread over the patients for the random reads (listing notes: not timed).
    pub fn open(dir: &Path, spec: &Spec) -> Self {
        Self::open_in(SledStore::open(&dir.join("v")).unwrap(), spec)
    }
}

impl Carnet<PgStore> {
    pub fn create_pg(dir: &Path) -> Self {
        Self::create_in(PgStore::create(&pg_uri(dir)).unwrap())
    }

    pub fn open_pg(dir: &Path, spec: &Spec) -> Self {
        Self::open_in(PgStore::open(&pg_uri(dir)).unwrap(), spec)
    }
}

impl<S: Store> Carnet<S> {
    pub fn create_in(store: S) -> Self {
        let vault =
            Vault::create(store, "admin", &Passphrase::new(PASS.into()), small_kdf()).unwrap();
        Carnet {
            vault,
            sample: Vec::new(),
        }
    }

    pub fn open_in(store: S, spec: &Spec) -> Self {
        let vault = Vault::unlock(store, "admin", &Passphrase::new(PASS.into())).unwrap();
        let mut sample = Vec::new();
        let per = 1000usize.div_ceil(spec.patients);
        for p in 0..spec.patients.min(1000) {
            let pid = PatientId::new(patient_id(p)).unwrap();
            let notes = vault.notes(&pid).unwrap();
            let step = (notes.len() / per).max(1);
            for n in notes.iter().step_by(step).take(per) {
                sample.push((pid.clone(), n.id));
            }
        }
        Carnet { vault, sample }
    }

    /// The vault (for the concurrency benchmark).
    pub fn vault(&self) -> &Vault<S> {
        &self.vault
    }
}

impl Carnet<SledStore> {
    pub fn unlock_default_kdf() {
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
        Vault::unlock(store, "admin", &Passphrase::new(PASS.into())).unwrap();
    }
}

impl<S: Store> Peer for Carnet<S> {
    fn import(&mut self, spec: &Spec) {
        let mut imp = self.vault.import();
        imp.add_all(
            spec.data().map(|(p, body)| {
                Ok((
                    NewPatient::new(PatientId::new(patient_id(p)).unwrap()),
                    NewNote::new(NoteBody::new(body).unwrap()),
                ))
            }),
            &mut |_| {},
        )
        .unwrap();
        imp.finish().unwrap();
    }

    fn read_patient(&self, p: usize) -> usize {
        let pid = PatientId::new(patient_id(p)).unwrap();
        self.vault.read_notes(&pid).unwrap().len()
    }

    fn random_reads(&self, n: usize) {
        for k in 0..n {
            let (pid, id) = &self.sample[(k * 7919) % self.sample.len()];
            self.vault.note(pid, id).unwrap();
        }
    }

    fn search(&self, word: &[u8]) -> usize {
        self.vault
            .search(std::str::from_utf8(word).unwrap(), None)
            .unwrap()
            .len()
    }

    fn verify(&self) -> bool {
        self.vault.verify(&mut |_, _| {}).unwrap().is_ok()
    }

    fn rotate_master(&mut self, _patients: usize) -> bool {
        self.vault.rotate_master(&mut |_, _| {}).unwrap();
        true
    }

    fn group_read_log(&mut self) {
        self.vault.set_read_log(carnet_core::ReadLog::Grouped {
            max_delay: std::time::Duration::from_millis(50),
        });
    }

    fn rotate_patient(&mut self, p: usize) -> bool {
        let pid = PatientId::new(patient_id(p)).unwrap();
        self.vault
            .rotate_patients(Patients::One(&pid), &mut |_, _| {})
            .unwrap();
        true
    }
}

/// The plaintext baseline: Carnet's spaces, key layout and batching, no cryptography.
pub struct Plain<S: Store = SledStore> {
    store: S,
    sample: Vec<Vec<u8>>,
}

pub type PlainSled = Plain<SledStore>;

const P_PATIENTS: Space = Space::new("patients");
const P_MANIFESTS: Space = Space::new("manifests");
const P_NOTES: Space = Space::new("notes");
/// The size of one wrapped patient key in Carnet's key store (what a master rotation rewrites).
const WRAPPED_KEY_BYTES: usize = 81;

impl Plain<SledStore> {
    pub fn create(dir: &Path) -> Self {
        Plain {
            store: SledStore::create(&dir.join("v")).unwrap(),
            sample: Vec::new(),
        }
    }

    /// Opens the store `create` made in `dir`, recomputing the import's sample.
    pub fn open(dir: &Path, spec: &Spec) -> Self {
        Self::open_in(SledStore::open(&dir.join("v")).unwrap(), spec)
    }
}

impl Plain<PgStore> {
    /// The same rows and batching in the same tables as Carnet on PostgreSQL, in clear.
    pub fn create_pg(dir: &Path) -> Self {
        Plain {
            store: PgStore::create(&pg_uri(dir)).unwrap(),
            sample: Vec::new(),
        }
    }

    pub fn open_pg(dir: &Path, spec: &Spec) -> Self {
        Self::open_in(PgStore::open(&pg_uri(dir)).unwrap(), spec)
    }
}

impl<S: Store> Plain<S> {
    pub fn from_store(store: S) -> Self {
        Plain {
            store,
            sample: Vec::new(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn open_in(store: S, spec: &Spec) -> Self {
        let every = (spec.notes / 1000).max(1);
        Plain {
            store,
            sample: (0..spec.notes)
                .step_by(every)
                .map(|i| Self::note_key(patient_id(i % spec.patients).as_bytes(), i))
                .collect(),
        }
    }

    pub fn note_key(pid: &[u8], i: usize) -> Vec<u8> {
        let mut key = pid.to_vec();
        key.extend_from_slice(&(i as u128).to_be_bytes());
        key.extend_from_slice(&1u32.to_be_bytes());
        key
    }
}

impl<S: Store> Peer for Plain<S> {
    fn import(&mut self, spec: &Spec) {
        let every = (spec.notes / 1000).max(1);
        let mut batch = Batch::new();
        let mut counts = vec![0u64; spec.patients];
        for (i, (p, body)) in spec.data().enumerate() {
            let pid = patient_id(p).into_bytes();
            if counts[p] == 0 {
                batch.put(P_PATIENTS, pid.clone(), b"name and birth date".to_vec());
            }
            counts[p] += 1;
            let key = Self::note_key(&pid, i);
            if i % every == 0 {
                self.sample.push(key.clone());
            }
            batch.put(P_NOTES, key, body);
            batch.put(P_MANIFESTS, pid, counts[p].to_be_bytes().to_vec());
            if (i + 1) % BATCH == 0 {
                self.store.commit(std::mem::take(&mut batch)).unwrap();
                self.store.flush().unwrap();
            }
        }
        self.store.commit(batch).unwrap();
        self.store.flush().unwrap();
    }

    fn read_patient(&self, p: usize) -> usize {
        let pid = patient_id(p).into_bytes();
        self.store.get(P_PATIENTS, &pid).unwrap().unwrap();
        self.store.get(P_MANIFESTS, &pid).unwrap().unwrap();
        // Every body is read (as the others do); how many were read is the answer.
        self.store
            .scan_prefix(P_NOTES, &pid)
            .filter(|r| !r.as_ref().unwrap().1.is_empty())
            .count()
    }

    fn random_reads(&self, n: usize) {
        for k in 0..n {
            let key = &self.sample[(k * 7919) % self.sample.len()];
            let pid = &key[..key.len() - 20];
            self.store.get(P_PATIENTS, pid).unwrap().unwrap();
            self.store.get(P_MANIFESTS, pid).unwrap().unwrap();
            self.store.get(P_NOTES, key).unwrap().unwrap();
        }
    }

    fn search(&self, word: &[u8]) -> usize {
        self.store
            .scan_prefix(P_NOTES, &[])
            .filter(|r| contains_word(&r.as_ref().unwrap().1, word))
            .count()
    }

    fn verify(&self) -> bool {
        let mut n = 0;
        for space in [P_PATIENTS, P_MANIFESTS, P_NOTES] {
            n += self
                .store
                .scan_prefix(space, &[])
                .map(|r| r.unwrap().1.len())
                .sum::<usize>();
        }
        n > 0
    }

    fn rotate_master(&mut self, patients: usize) -> bool {
        // Without cryptography, a master rotation is one record per patient, in one batch.
        let mut batch = Batch::new();
        for p in 0..patients {
            batch.put(
                P_PATIENTS,
                patient_id(p).into_bytes(),
                vec![7u8; WRAPPED_KEY_BYTES],
            );
        }
        self.store.commit(batch).unwrap();
        self.store.flush().unwrap();
        true
    }

    fn rotate_patient(&mut self, p: usize) -> bool {
        // Rewrite every note of the patient, one batch.
        let pid = patient_id(p).into_bytes();
        let mut batch = Batch::new();
        for r in self.store.scan_prefix(P_NOTES, &pid) {
            let (k, v) = r.unwrap();
            batch.put(P_NOTES, k, v);
        }
        self.store.commit(batch).unwrap();
        self.store.flush().unwrap();
        true
    }
}

/// SQLCipher 4 with its default settings (PBKDF2-HMAC-SHA512, AES-256-CBC pages with
/// HMAC-SHA512), or the same bundled SQLite without a key: plain SQLite. WAL with
/// `synchronous=FULL`: one fsync per committed transaction, like the others' flush per batch.
#[cfg(feature = "sqlcipher")]
pub struct Sqlite {
    conn: rusqlite::Connection,
    encrypted: bool,
    sample: Vec<i64>,
}

#[cfg(feature = "sqlcipher")]
impl Sqlite {
    /// Opens (or creates) the database in `dir`: the key first when encrypted, then WAL with
    /// `synchronous=FULL`.
    fn connect(dir: &Path, encrypted: bool) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(dir.join("notes.db")).unwrap();
        if encrypted {
            conn.pragma_update(None, "key", PASS).unwrap();
        }
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn
    }

    pub fn create(dir: &Path, encrypted: bool) -> Self {
        let conn = Self::connect(dir, encrypted);
        conn.execute_batch(
            "CREATE TABLE patients (id TEXT PRIMARY KEY, info BLOB NOT NULL);
             CREATE TABLE manifests (id TEXT PRIMARY KEY, notes INTEGER NOT NULL);
             CREATE TABLE notes (id INTEGER PRIMARY KEY, patient TEXT NOT NULL, version INTEGER NOT NULL, body BLOB NOT NULL);
             CREATE INDEX notes_by_patient ON notes (patient);",
        )
        .unwrap();
        Sqlite {
            conn,
            encrypted,
            sample: Vec::new(),
        }
    }

    /// Reads a patient's record and manifest, as every peer does before it reads notes (the
    /// plaintext peer's two lookups, Carnet's `find_patient`).
    fn read_patient_record(&self, pid: &str) {
        let _: Vec<u8> = self
            .conn
            .prepare_cached("SELECT info FROM patients WHERE id = ?1")
            .unwrap()
            .query_row([pid], |r| r.get(0))
            .unwrap();
        let _: i64 = self
            .conn
            .prepare_cached("SELECT notes FROM manifests WHERE id = ?1")
            .unwrap()
            .query_row([pid], |r| r.get(0))
            .unwrap();
    }

    /// Opens the database `create` made in `dir`; rows were numbered in import order.
    pub fn open(dir: &Path, encrypted: bool, spec: &Spec) -> Self {
        let conn = Self::connect(dir, encrypted);
        let every = (spec.notes / 1000).max(1);
        Sqlite {
            conn,
            encrypted,
            sample: (0..spec.notes)
                .step_by(every)
                .map(|i| i as i64 + 1)
                .collect(),
        }
    }
}

#[cfg(feature = "sqlcipher")]
impl Peer for Sqlite {
    fn import(&mut self, spec: &Spec) {
        let every = (spec.notes / 1000).max(1);
        let mut counts = vec![0u64; spec.patients];
        let mut data = spec.data().enumerate().peekable();
        while data.peek().is_some() {
            let tx = self.conn.transaction().unwrap();
            {
                let mut patient = tx
                    .prepare_cached("INSERT INTO patients (id, info) VALUES (?1, ?2)")
                    .unwrap();
                let mut manifest = tx
                    .prepare_cached("INSERT OR REPLACE INTO manifests (id, notes) VALUES (?1, ?2)")
                    .unwrap();
                let mut note = tx
                    .prepare_cached("INSERT INTO notes (patient, version, body) VALUES (?1, 1, ?2)")
                    .unwrap();
                for (i, (p, body)) in data.by_ref().take(BATCH) {
                    let pid = patient_id(p);
                    if counts[p] == 0 {
                        patient
                            .execute(rusqlite::params![pid, &b"name and birth date"[..]])
                            .unwrap();
                    }
                    counts[p] += 1;
                    note.execute(rusqlite::params![pid, body]).unwrap();
                    if i % every == 0 {
                        self.sample.push(tx.last_insert_rowid());
                    }
                    manifest
                        .execute(rusqlite::params![pid, counts[p] as i64])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
    }

    fn read_patient(&self, p: usize) -> usize {
        let pid = patient_id(p);
        self.read_patient_record(&pid);
        let mut st = self
            .conn
            .prepare_cached("SELECT body FROM notes WHERE patient = ?1")
            .unwrap();
        let rows = st.query_map([&pid], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        rows.filter(|r| !r.as_ref().unwrap().is_empty()).count()
    }

    fn random_reads(&self, n: usize) {
        for k in 0..n {
            let id = self.sample[(k * 7919) % self.sample.len()];
            let (pid, _body): (String, Vec<u8>) = self
                .conn
                .prepare_cached("SELECT patient, body FROM notes WHERE id = ?1")
                .unwrap()
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            self.read_patient_record(&pid);
        }
    }

    fn search(&self, word: &[u8]) -> usize {
        let mut st = self.conn.prepare_cached("SELECT body FROM notes").unwrap();
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        rows.filter(|b| contains_word(b.as_ref().unwrap(), word))
            .count()
    }

    fn verify(&self) -> bool {
        // Reading every row makes SQLCipher decrypt and authenticate every page it holds.
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT length(info) FROM patients UNION ALL SELECT length(body) FROM notes",
            )
            .unwrap();
        let mut total = 0i64;
        let mut st2 = self.conn.prepare_cached("SELECT body FROM notes").unwrap();
        for b in st2.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
            total += b.unwrap().len() as i64;
        }
        for n in st.query_map([], |r| r.get::<_, i64>(0)).unwrap() {
            total += n.unwrap();
        }
        total > 0
    }

    fn rotate_master(&mut self, _patients: usize) -> bool {
        if !self.encrypted {
            return false;
        }
        // SQLCipher's only key change: every page re-encrypted under the new key.
        self.conn
            .pragma_update(None, "rekey", "another benchmark passphrase")
            .unwrap();
        true
    }

    fn rotate_patient(&mut self, _p: usize) -> bool {
        false // one key for the whole database: nothing per patient to rotate
    }
}
