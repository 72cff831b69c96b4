//! Frozen test vectors of the format, one file per record kind, beside the golden vault
//! (`tests/golden/v1/records/`). Each file says what it exercises, gives the key a reader starts
//! from (the root of the key's role: a master key, a patient key, a vault key), the place the
//! record is bound to, the stored bytes, and the payload they must decode to. Every later version
//! of Carnet must open them exactly as written here.
//!
//! The files were written once by `write_vectors` below (ignored: sealing draws a random nonce,
//! so writing them again would change the stored bytes that every later version must read).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::envelope::{self, Sealed};
use crate::frame;
use crate::keyring::{KdfParams, Keyring, Slot, SlotSecret};
use crate::keys::{BlindKey, EpochKey, LogKey, PatientKey, RegistryKey, REGISTRY_KEY_VERSION};
use crate::model::PatientId;
use crate::records::{
    Blind, JobSlot, JobV1, LogAt, LogEntryV1, LogEntryV2, LogHeadV1, LogListsV2, ManifestV1,
    NoteAt, NoteMetaV1, NoteMetaV2, PatientKeyAt, PatientV1, RegistryV1, UserV1, UsersV1, UsersV2,
    VaultKeyV1, VaultKeysV1,
};
use crate::sealing::{
    JobRecord, LogEntryRecord, LogHeadRecord, ManifestRecord, NoteRecord, PatientKeyRecord,
    PatientRecord, RecordKind, RegistryRecord, UsersRecord, VaultKeysRecord,
};
use crate::secret::Passphrase;

fn dir() -> PathBuf {
    dir_of("v1")
}

fn dir_of(format: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(format)
        .join("records")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "hex of even length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn unhex32(s: &str) -> [u8; 32] {
    unhex(s).try_into().unwrap()
}

/// One vector file: `# comment` lines, then `name: value` lines.
struct Vector {
    name: String,
    comment: String,
    fields: BTreeMap<String, String>,
}

impl Vector {
    fn read(path: &Path) -> Vector {
        let text = std::fs::read_to_string(path).unwrap();
        let mut comment = String::new();
        let mut fields = BTreeMap::new();
        for line in text.lines() {
            if let Some(c) = line.strip_prefix('#') {
                comment.push_str(c.trim());
                comment.push(' ');
            } else if let Some((k, v)) = line.split_once(": ") {
                fields.insert(k.to_string(), v.to_string());
            } else {
                assert!(
                    line.trim().is_empty(),
                    "{}: stray line {line:?}",
                    path.display()
                );
            }
        }
        Vector {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            comment,
            fields,
        }
    }

    fn get(&self, k: &str) -> &str {
        self.fields
            .get(k)
            .unwrap_or_else(|| panic!("{}: no `{k}:` line", self.name))
    }

    fn u32(&self, k: &str) -> u32 {
        self.get(k).parse().unwrap()
    }

    fn vault_id(&self) -> [u8; 16] {
        unhex(self.get("vault-id")).try_into().unwrap()
    }

    fn root(&self) -> [u8; 32] {
        unhex32(self.get("key"))
    }

    /// `a=1 b=2` in the `place` line, by name.
    fn place(&self) -> BTreeMap<String, String> {
        self.get("place")
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn blind(&self) -> Blind {
        Blind(unhex32(&self.place()["blind"]))
    }
}

/// Opens the vector's stored bytes as a record of kind `R` and returns its plaintext, after
/// checking the header.
fn open<R: RecordKind>(v: &Vector, key: &R::Key, place: &R::Place) -> crate::secret::SecretBytes {
    let stored = unhex(v.get("sealed"));
    let sealed = Sealed::parse(&stored).unwrap_or_else(|_| panic!("{}: parses", v.name));
    assert_eq!(sealed.kind, R::KIND, "{}: kind byte", v.name);
    let format = v.fields.get("format").map_or(1, |f| f.parse().unwrap());
    assert_eq!(sealed.format, format, "{}: format byte", v.name);
    assert_eq!(sealed.key_version, v.u32("key-version"), "{}", v.name);
    let plain = sealed
        .open::<R>(key, &v.vault_id(), place)
        .unwrap_or_else(|| panic!("{}: opens", v.name));
    // Bound to its place: the same bytes at another vault id open nothing.
    assert!(sealed.open::<R>(key, &[0xee; 16], place).is_none());
    plain
}

/// Decodes a frame's metadata (and body) and renders it as the vector's `payload` line.
fn payload<M: DeserializeOwned>(v: &Vector, plain: &[u8], render: impl Fn(M, &[u8]) -> String) {
    let (meta, body) = frame::decode::<M>(plain).unwrap_or_else(|| panic!("{}: frame", v.name));
    assert_eq!(render(meta, body), v.get("payload"), "{}: payload", v.name);
}

fn body_text(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("hex:{}", hex(body)),
    }
}

fn render_vault_keys(k: VaultKeysV1, _: &[u8]) -> String {
    let keys: Vec<String> = k
        .keys
        .iter()
        .map(|k| format!("({},{},{})", k.purpose, k.version, hex(&k.key)))
        .collect();
    format!("keys=[{}]", keys.join(","))
}

fn render_registry(r: RegistryV1, _: &[u8]) -> String {
    format!("patients={} head={}", r.patients, hex(&r.head))
}

fn render_patient(p: PatientV1, _: &[u8]) -> String {
    format!(
        "seq={} id={:?} name={:?} birth_date={:?} created_at={}",
        p.seq, p.id, p.name, p.birth_date, p.created_at
    )
}

fn render_manifest(m: ManifestV1, _: &[u8]) -> String {
    format!(
        "next_seq={} head={} notes={}",
        m.next_seq,
        hex(&m.head),
        m.notes
    )
}

fn render_note(n: NoteMetaV1, body: &[u8]) -> String {
    format!(
        "seq={} created_at={} updated_at={} author={:?} kind={:?} body={}",
        n.seq,
        n.created_at,
        n.updated_at,
        n.author,
        n.kind,
        body_text(body)
    )
}

fn render_job(j: JobV1, _: &[u8]) -> String {
    format!(
        "kind={} target={} source={} done={}",
        j.kind,
        j.target,
        hex(&j.source),
        j.done
    )
}

fn render_users(u: UsersV1, _: &[u8]) -> String {
    let users: Vec<String> = u
        .users
        .iter()
        .map(|u| format!("({:?},{})", u.name, u.role))
        .collect();
    format!("users=[{}]", users.join(","))
}

fn render_log_entry(e: LogEntryV1, _: &[u8]) -> String {
    format!(
        "at={} user={:?} action={:?} patient={:?} note={:?} outcome={:?}",
        e.at, e.user, e.action, e.patient, e.note, e.outcome
    )
}

fn render_note_v2(n: NoteMetaV2, body: &[u8]) -> String {
    format!(
        "seq={} created_at={} updated_at={} author={:?} kind={:?} written_by={:?} via_recovery_key={} body={}",
        n.seq,
        n.created_at,
        n.updated_at,
        n.author,
        n.kind,
        n.written_by,
        n.via_recovery_key,
        body_text(body)
    )
}

fn render_users_v2(u: UsersV2, _: &[u8]) -> String {
    let users: Vec<String> = u
        .users
        .iter()
        .map(|u| format!("({:?},{})", u.name, u.role))
        .collect();
    format!("serial={} users=[{}]", u.serial, users.join(","))
}

fn render_log_entry_v2(e: LogEntryV2, body: &[u8]) -> String {
    let lists: LogListsV2 = frame::decode_body(body).expect("the lists decode");
    let states: Vec<String> = lists
        .states
        .iter()
        .map(|s| format!("({},{},{})", hex(&s.blind), s.next_seq, hex(&s.head)))
        .collect();
    format!(
        "at={} user={:?} via_recovery_key={} action={:?} note={:?} subject={:?} outcome={:?} registry={} patients={:?} states=[{}]",
        e.at,
        e.user,
        e.via_recovery_key,
        e.action,
        e.note,
        e.subject,
        e.outcome,
        e.registry
            .map_or_else(|| "none".to_string(), |r| format!("({},{})", r.patients, hex(&r.head))),
        lists.patients,
        states.join(",")
    )
}

fn render_log_head(h: LogHeadV1, _: &[u8]) -> String {
    format!("count={} head={}", h.count, hex(&h.head))
}

/// Checks one vector, whatever its kind and format.
fn check(v: &Vector) {
    let version = v.u32("key-version");
    let root = v.root();
    let format2 = v.fields.get("format").is_some_and(|f| f == "2");
    match v.get("kind") {
        "note" if format2 => {
            let keys = PatientKey::from_bytes(version, root).derive();
            let place = v.place();
            let at = NoteAt {
                blind: v.blind(),
                note: unhex(&place["note"]).try_into().unwrap(),
                version: place["version"].parse().unwrap(),
            };
            payload(v, &open::<NoteRecord>(v, &keys.note, &at), render_note_v2);
        }
        "users" if format2 => {
            let key = RegistryKey::from_bytes(version, root);
            payload(v, &open::<UsersRecord>(v, &key, &()), render_users_v2);
        }
        "log-entry" if format2 => {
            let key = LogKey::from_bytes(version, root);
            let place = v.place();
            let at = LogAt {
                seq: place["seq"].parse().unwrap(),
                prev: unhex32(&place["prev"]),
            };
            payload(
                v,
                &open::<LogEntryRecord>(v, &key, &at),
                render_log_entry_v2,
            );
        }
        "vault-keys" => {
            let key = EpochKey::from_bytes(version, root).vault_keys_wrap();
            payload(v, &open::<VaultKeysRecord>(v, &key, &()), render_vault_keys);
        }
        "patient-key" => {
            let key = EpochKey::from_bytes(version, root).patient_keys_wrap();
            let place = v.place();
            let at = PatientKeyAt {
                blind: v.blind(),
                version: place["version"].parse().unwrap(),
            };
            let plain = open::<PatientKeyRecord>(v, &key, &at);
            assert_eq!(
                format!("key={}", hex(&plain)),
                v.get("payload"),
                "{}",
                v.name
            );
        }
        "registry" => {
            let key = RegistryKey::from_bytes(version, root);
            payload(v, &open::<RegistryRecord>(v, &key, &()), render_registry);
        }
        "patient" => {
            let keys = PatientKey::from_bytes(version, root).derive();
            // The place is the blind of the patient's id under the blinding key.
            let blind_key = BlindKey::from_bytes(unhex32(v.get("blind-key")));
            let id = PatientId::new(v.get("patient-id")).unwrap();
            assert_eq!(blind_key.blind(&id), v.blind(), "{}: blind", v.name);
            let plain = open::<PatientRecord>(v, &keys.record, &v.blind());
            payload(v, &plain, render_patient);
        }
        "manifest" => {
            let keys = PatientKey::from_bytes(version, root).derive();
            let plain = open::<ManifestRecord>(v, &keys.manifest, &v.blind());
            payload(v, &plain, render_manifest);
        }
        "note" => {
            let keys = PatientKey::from_bytes(version, root).derive();
            let place = v.place();
            let at = NoteAt {
                blind: v.blind(),
                note: unhex(&place["note"]).try_into().unwrap(),
                version: place["version"].parse().unwrap(),
            };
            payload(v, &open::<NoteRecord>(v, &keys.note, &at), render_note);
        }
        "job" => {
            let key = RegistryKey::from_bytes(version, root);
            let slot = JobSlot::ALL
                .into_iter()
                .find(|s| s.meta_key() == v.place()["slot"].as_bytes())
                .unwrap();
            payload(v, &open::<JobRecord>(v, &key, &slot), render_job);
        }
        "users" => {
            let key = RegistryKey::from_bytes(version, root);
            payload(v, &open::<UsersRecord>(v, &key, &()), render_users);
        }
        "log-entry" => {
            let key = LogKey::from_bytes(version, root);
            let place = v.place();
            let at = LogAt {
                seq: place["seq"].parse().unwrap(),
                prev: unhex32(&place["prev"]),
            };
            payload(v, &open::<LogEntryRecord>(v, &key, &at), render_log_entry);
        }
        "log-head" => {
            let key = LogKey::from_bytes(version, root);
            payload(v, &open::<LogHeadRecord>(v, &key, &()), render_log_head);
        }
        "keyring" => {
            let keyring = Keyring::parse(&unhex(v.get("sealed")))
                .unwrap_or_else(|_| panic!("{}: parses", v.name));
            assert_eq!(keyring.vault_id, v.vault_id());
            assert_eq!(keyring.epoch, version);
            let kdf = KdfParams::new(8, 1, 1).unwrap();
            let pass = Passphrase::new(v.get("passphrase").to_string());
            let opened = keyring
                .unlock(v.get("user"), &SlotSecret::Passphrase(&pass, kdf))
                .unwrap_or_else(|e| panic!("{}: unlocks: {e}", v.name));
            let mut got = format!("master={}", hex(opened.masters.current.bytes_to_wrap()));
            if let Some(k) = &opened.key {
                got += &format!(" keyring-key={}:{}", k.version(), hex(k.bytes_to_wrap()));
            }
            assert_eq!(got, v.get("payload"), "{}", v.name);
            assert_eq!(keyring.version(), if format2 { 2 } else { 1 }, "{}", v.name);
        }
        other => panic!("{}: unknown kind {other}", v.name),
    }
}

/// Checks every vector of `dir` (each says what it exercises) and returns the kinds covered.
fn check_every_vector(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut kinds = std::collections::BTreeSet::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "vector"))
        .collect();
    files.sort();
    for path in &files {
        let v = Vector::read(path);
        assert!(v.comment.len() > 20, "{}: says what it exercises", v.name);
        check(&v);
        kinds.insert(v.get("kind").to_string());
    }
    kinds
}

#[test]
fn every_record_kind_of_format_1_opens_as_written() {
    let kinds = check_every_vector(&dir());
    // Every record kind of docs/format.md, and the keyring.
    assert_eq!(kinds.len(), 11, "kinds covered: {kinds:?}");
}

#[test]
fn what_format_2_changed_opens_as_written() {
    let kinds = check_every_vector(&dir_of("v2"));
    // The payloads format 2 changed (notes, users, log entries), the keyring, the vault keys
    // with a keyring key, and the upgrade's job record.
    assert_eq!(kinds.len(), 6, "kinds covered: {kinds:?}");
}

#[test]
fn a_changed_byte_in_a_vector_is_refused() {
    let v = Vector::read(&dir().join("note.vector"));
    let mut stored = unhex(v.get("sealed"));
    let last = stored.len() - 1;
    stored[last] ^= 1;
    let mut fields = v.fields.clone();
    fields.insert("sealed".into(), hex(&stored));
    let altered = Vector { fields, ..v };
    let opened = std::panic::catch_unwind(|| check(&altered));
    assert!(opened.is_err(), "an altered tag must not open");
}

// ----- how the files were written -----

const VAULT_ID: [u8; 16] = *b"carnet-vectors-1";

fn write(name: &str, comment: &str, fields: &[(&str, String)]) {
    write_in(&dir(), name, comment, fields);
}

/// One entry of a vault-keys record: a key of fixed bytes.
fn vault_key(purpose: u8, version: u32, byte: u8) -> VaultKeyV1 {
    VaultKeyV1 {
        purpose,
        version,
        key: [byte; 32],
    }
}

/// One vector file: the comment's lines as `# …`, then one `key: value` line per field.
fn write_in(dir: &Path, name: &str, comment: &str, fields: &[(&str, String)]) {
    let mut out = String::new();
    for line in comment.lines() {
        writeln!(out, "# {line}").unwrap();
    }
    for (k, v) in fields {
        writeln!(out, "{k}: {v}").unwrap();
    }
    std::fs::write(dir.join(name), out).unwrap();
}

/// Writes every vector (run by hand, once: `cargo test -p carnet-core write_vectors --
/// --ignored`). The keys are fixed bytes; the nonces are random.
#[test]
#[ignore = "writes the frozen vectors; never needed again"]
fn write_vectors() {
    std::fs::create_dir_all(dir()).unwrap();
    let vid = hex(&VAULT_ID);
    let master = EpochKey::from_bytes(3, [0x11; 32]);
    let blind_key = BlindKey::from_bytes([0x22; 32]);
    let registry = RegistryKey::from_bytes(REGISTRY_KEY_VERSION, [0x33; 32]);
    let log = LogKey::from_bytes(2, [0x44; 32]);
    let patient = PatientKey::from_bytes(2, [0x55; 32]);
    let pk = patient.derive();
    let id = PatientId::new("FR-1984-00042").unwrap();
    let blind = blind_key.blind(&id);

    let vault_keys = VaultKeysV1 {
        keys: vec![
            vault_key(1, 1, 0x22),
            vault_key(2, 1, 0x33),
            vault_key(3, 1, 0x43),
            vault_key(3, 2, 0x44),
        ],
    };
    let sealed = envelope::seal_frame::<VaultKeysRecord, _>(
        &master.vault_keys_wrap(),
        &VAULT_ID,
        &(),
        &vault_keys,
    )
    .unwrap();
    write(
        "vault-keys.vector",
        "Kind 1, VaultKeys, as the key store holds it: sealed under the vault-keys wrap key of\n\
         master epoch 3 (HKDF of the master key, \"carnet/v1/master/wrap-vault-keys\"), bound to\n\
         nothing but the vault id. Four vault keys: blinding, registry, and two log-key versions.",
        &[
            ("kind", "vault-keys".into()),
            ("vault-id", vid.clone()),
            ("key", hex(master.bytes_to_wrap())),
            ("key-version", "3".into()),
            ("place", "none".into()),
            ("sealed", hex(&sealed)),
            ("payload", render_vault_keys(vault_keys, &[])),
        ],
    );

    let at = PatientKeyAt { blind, version: 2 };
    let sealed = envelope::seal::<PatientKeyRecord>(
        &master.patient_keys_wrap(),
        &VAULT_ID,
        &at,
        patient.bytes_to_wrap(),
    )
    .unwrap();
    write(
        "patient-key.vector",
        "Kind 2, PatientKey: one patient key (version 2) wrapped under master epoch 3's patient\n\
         wrap key, bound to the patient's blind and the key version; the payload is the raw 32\n\
         bytes, no frame (every such record is 81 bytes).",
        &[
            ("kind", "patient-key".into()),
            ("vault-id", vid.clone()),
            ("key", hex(master.bytes_to_wrap())),
            ("key-version", "3".into()),
            ("place", format!("blind={} version=2", hex(&blind.0))),
            ("sealed", hex(&sealed)),
            ("payload", format!("key={}", hex(patient.bytes_to_wrap()))),
        ],
    );

    let reg = RegistryV1 {
        patients: 300,
        head: [0xab; 32],
    };
    let sealed =
        envelope::seal_frame::<RegistryRecord, _>(&registry, &VAULT_ID, &(), &reg).unwrap();
    write(
        "registry.vector",
        "Kind 3, Registry: the count of patients (300: a varint of three bytes) and the head of\n\
         the registry chain, sealed under the registry vault key (key version 1), bound to\n\
         nothing but the vault id.",
        &[
            ("kind", "registry".into()),
            ("vault-id", vid.clone()),
            ("key", hex(registry.bytes_to_wrap())),
            ("key-version", "1".into()),
            ("place", "none".into()),
            ("sealed", hex(&sealed)),
            ("payload", render_registry(reg, &[])),
        ],
    );

    let info = PatientV1 {
        seq: 7,
        id: id.as_str().to_string(),
        name: Some("Camille Martin-Lefèvre".into()),
        birth_date: Some("1984-02-29".into()),
        created_at: 1_764_000_000_000,
        reference: None,
    };
    let sealed =
        envelope::seal_frame::<PatientRecord, _>(&pk.record, &VAULT_ID, &blind, &info).unwrap();
    write(
        "patient.vector",
        "Kind 4, Patient: a patient's identity (a non-ASCII name, a birth date), sealed under\n\
         patient key version 2's record subkey (\"carnet/v1/patient/record\"), bound to the\n\
         patient's blind: HMAC-SHA-256 of the identifier under the blinding key.",
        &[
            ("kind", "patient".into()),
            ("vault-id", vid.clone()),
            ("key", hex(patient.bytes_to_wrap())),
            ("key-version", "2".into()),
            ("blind-key", hex(blind_key.bytes_to_wrap())),
            ("patient-id", id.as_str().to_string()),
            ("place", format!("blind={}", hex(&blind.0))),
            ("sealed", hex(&sealed)),
            ("payload", render_patient(info, &[])),
        ],
    );

    let manifest = ManifestV1 {
        next_seq: 3,
        head: [0xcd; 32],
        notes: 2,
    };
    let sealed =
        envelope::seal_frame::<ManifestRecord, _>(&pk.manifest, &VAULT_ID, &blind, &manifest)
            .unwrap();
    write(
        "manifest.vector",
        "Kind 5, Manifest: three note versions of two notes and the note chain's head, sealed\n\
         under patient key version 2's manifest subkey (\"carnet/v1/patient/manifest\"), bound to\n\
         the patient's blind.",
        &[
            ("kind", "manifest".into()),
            ("vault-id", vid.clone()),
            ("key", hex(patient.bytes_to_wrap())),
            ("key-version", "2".into()),
            ("place", format!("blind={}", hex(&blind.0))),
            ("sealed", hex(&sealed)),
            ("payload", render_manifest(manifest, &[])),
        ],
    );

    let note = [0x0f; 16];
    for (name, version, body, comment) in [
        (
            "note.vector",
            1,
            "Toux sèche depuis 3 semaines. Allergie à la pénicilline.".as_bytes().to_vec(),
            "Kind 6, Note: the first version of a note with a UTF-8 body, sealed under patient key\n\
             version 2's note subkey (\"carnet/v1/patient/note\"), bound to its storage key (blind,\n\
             note id, version); the frame is padded to its 256-byte bucket.",
        ),
        (
            "note-binary.vector",
            2,
            (0..=255u8).chain(0..=99).collect(),
            "Kind 6, Note: an amendment (version 2) whose body is not UTF-8 and 356 bytes long, so\n\
             the frame (8 + metadata + body) is padded to a bucket above 256 (padded_len).",
        ),
    ] {
        let meta = NoteMetaV1 {
            seq: u64::from(version) - 1,
            created_at: 1_764_000_000_000,
            updated_at: 1_764_000_000_000 + i64::from(version - 1) * 86_400_000,
            author: Some("Dr Leroy".into()),
            kind: if version == 1 {
                Some("consultation".into())
            } else {
                None
            },
        };
        let at = NoteAt {
            blind,
            note,
            version,
        };
        let sealed = envelope::seal::<NoteRecord>(
            &pk.note,
            &VAULT_ID,
            &at,
            &frame::encode(&meta, &body).unwrap(),
        )
        .unwrap();
        write(
            name,
            comment,
            &[
                ("kind", "note".into()),
                ("vault-id", vid.clone()),
                ("key", hex(patient.bytes_to_wrap())),
                ("key-version", "2".into()),
                (
                    "place",
                    format!("blind={} note={} version={version}", hex(&blind.0), hex(&note)),
                ),
                ("sealed", hex(&sealed)),
                ("payload", render_note(meta, &body)),
            ],
        );
    }

    let job = JobV1 {
        kind: 2,
        target: 0,
        source: [0x5a; 32],
        done: 1500,
    };
    let sealed =
        envelope::seal_frame::<JobRecord, _>(&registry, &VAULT_ID, &JobSlot::Import, &job).unwrap();
    write(
        "job.vector",
        "Kind 7, Job: an import under way (job kind 2) of the file whose SHA-256 is `source`,\n\
         1,500 records in, sealed under the registry key, bound to its storage key\n\
         (\"import-job\").",
        &[
            ("kind", "job".into()),
            ("vault-id", vid.clone()),
            ("key", hex(registry.bytes_to_wrap())),
            ("key-version", "1".into()),
            ("place", "slot=import-job".into()),
            ("sealed", hex(&sealed)),
            ("payload", render_job(job, &[])),
        ],
    );

    let users = UsersV1 {
        users: vec![
            UserV1 {
                name: "admin".into(),
                role: 1,
            },
            UserV1 {
                name: "dr.leroy".into(),
                role: 2,
            },
            UserV1 {
                name: "dpo".into(),
                role: 3,
            },
        ],
    };
    let sealed = envelope::seal_frame::<UsersRecord, _>(&registry, &VAULT_ID, &(), &users).unwrap();
    write(
        "users.vector",
        "Kind 8, Users: three users, one of each role (1 admin, 2 clinician, 3 auditor), sealed\n\
         under the registry key, bound to its storage key (\"users\").",
        &[
            ("kind", "users".into()),
            ("vault-id", vid.clone()),
            ("key", hex(registry.bytes_to_wrap())),
            ("key-version", "1".into()),
            ("place", "none".into()),
            ("sealed", hex(&sealed)),
            ("payload", render_users(users, &[])),
        ],
    );

    let entry = LogEntryV1 {
        at: 1_764_000_123_456,
        user: "admin (recovery key)".into(),
        action: "note show".into(),
        patient: Some(id.as_str().to_string()),
        note: Some(hex(&note)),
        outcome: "ok".into(),
    };
    let at = LogAt {
        seq: 41,
        prev: [0x77; 32],
    };
    let sealed = envelope::seal_frame::<LogEntryRecord, _>(&log, &VAULT_ID, &at, &entry).unwrap();
    write(
        "log-entry.vector",
        "Kind 9, LogEntry: entry 41 of the access log, a read by a user who unlocked with the\n\
         recovery key (stored as a suffix of the user name in format 1), sealed under log key\n\
         version 2, bound to its sequence number and the chain value before it.",
        &[
            ("kind", "log-entry".into()),
            ("vault-id", vid.clone()),
            ("key", hex(log.bytes_to_wrap())),
            ("key-version", "2".into()),
            ("place", format!("seq=41 prev={}", hex(&[0x77; 32]))),
            ("sealed", hex(&sealed)),
            ("payload", render_log_entry(entry, &[])),
        ],
    );

    let head = LogHeadV1 {
        count: 42,
        head: [0x88; 32],
    };
    let sealed = envelope::seal_frame::<LogHeadRecord, _>(&log, &VAULT_ID, &(), &head).unwrap();
    write(
        "log-head.vector",
        "Kind 10, LogHead: the access log's count and chain value, sealed under log key version\n\
         2, bound to its storage key (\"log-head\").",
        &[
            ("kind", "log-head".into()),
            ("vault-id", vid.clone()),
            ("key", hex(log.bytes_to_wrap())),
            ("key-version", "2".into()),
            ("place", "none".into()),
            ("sealed", hex(&sealed)),
            ("payload", render_log_head(head, &[])),
        ],
    );

    let pass = Passphrase::new("correct horse battery staple".into());
    let kdf = KdfParams::new(8, 1, 1).unwrap();
    let slot = Slot::create(
        &VAULT_ID,
        "admin",
        SlotSecret::Passphrase(&pass, kdf),
        &master,
        None,
    )
    .unwrap()
    .0;
    let mut keyring = Keyring::new(1, VAULT_ID, master.epoch(), slot);
    let bytes = keyring
        .encode(&master, &Default::default())
        .expect("a version-1 keyring needs no keyring key");
    write(
        "keyring.vector",
        "The keyring (DIR/root): one passphrase slot for `admin` (Argon2id at 8 MiB, 1 pass,\n\
         1 lane), its X25519 private key sealed under the slot key, master epoch 3 sealed to its\n\
         public key, and the keyring's MAC under the master key. `key` is unused here.",
        &[
            ("kind", "keyring".into()),
            ("vault-id", vid),
            ("key", hex(&[0; 32])),
            ("key-version", "3".into()),
            ("user", "admin".into()),
            ("passphrase", "correct horse battery staple".into()),
            ("place", "none".into()),
            ("sealed", hex(&bytes)),
            ("payload", format!("master={}", hex(master.bytes_to_wrap()))),
        ],
    );
}

fn write_v2(name: &str, comment: &str, fields: &[(&str, String)]) {
    write_in(&dir_of("v2"), name, comment, fields);
}

/// Writes the format-2 vectors (run by hand, once: `cargo test -p carnet-core
/// write_vectors_v2 -- --ignored`). The keys are fixed bytes; the nonces are random.
#[test]
#[ignore = "writes the frozen vectors of format 2; never needed again"]
fn write_vectors_v2() {
    use crate::keys::KeyringKey;
    use crate::records::{ManifestState, JOB_UPGRADE, PURPOSE_KEYRING};
    std::fs::create_dir_all(dir_of("v2")).unwrap();
    const VAULT_ID_2: [u8; 16] = *b"carnet-vectors-2";
    let vid = hex(&VAULT_ID_2);
    let master = EpochKey::from_bytes(4, [0x11; 32]);
    let blind_key = BlindKey::from_bytes([0x22; 32]);
    let registry = RegistryKey::from_bytes(2, [0x34; 32]);
    let log = LogKey::from_bytes(3, [0x45; 32]);
    let patient = PatientKey::from_bytes(3, [0x56; 32]);
    let keyring_key = KeyringKey::from_bytes(2, [0x66; 32]);
    let pk = patient.derive();
    let id = PatientId::new("FR-2026-00007").unwrap();
    let blind = blind_key.blind(&id);

    let vault_keys = VaultKeysV1 {
        keys: vec![
            vault_key(1, 1, 0x22),
            vault_key(2, 2, 0x34),
            vault_key(3, 3, 0x45),
            vault_key(PURPOSE_KEYRING, 1, 0x65),
            vault_key(PURPOSE_KEYRING, 2, 0x66),
        ],
    };
    let sealed = envelope::seal_frame::<VaultKeysRecord, _>(
        &master.vault_keys_wrap(),
        &VAULT_ID_2,
        &(),
        &vault_keys,
    )
    .unwrap();
    write_v2(
        "vault-keys.vector",
        "Kind 1, VaultKeys of a format-2 vault (record format 1: the payload did not change):\n\
         sealed under the vault-keys wrap key of master epoch 4. Registry key version 2 (after a\n\
         revocation), log key version 3, and keyring keys (purpose 4) of versions 1 and 2.",
        &[
            ("kind", "vault-keys".into()),
            ("format", "1".into()),
            ("vault-id", vid.clone()),
            ("key", hex(master.bytes_to_wrap())),
            ("key-version", "4".into()),
            ("place", "none".into()),
            ("sealed", hex(&sealed)),
            ("payload", render_vault_keys(vault_keys, &[])),
        ],
    );

    let at = NoteAt {
        blind,
        note: [0x0a; 16],
        version: 2,
    };
    let meta = NoteMetaV2 {
        seq: 5,
        created_at: 1_764_000_000_000,
        updated_at: 1_764_500_000_000,
        author: Some("Dr Martin".into()),
        kind: Some("consultation".into()),
        written_by: "bob".into(),
        via_recovery_key: false,
    };
    let body = "Posologie corrigée : 5 mg.".as_bytes();
    let sealed = envelope::seal_as::<NoteRecord>(
        2,
        &pk.note,
        &VAULT_ID_2,
        &at,
        &frame::encode(&meta, body).unwrap(),
    )
    .unwrap();
    write_v2(
        "note.vector",
        "Kind 6, Note, record format 2: version 2 of a note, amended by the user bob (written_by)\n\
         while its free-text author stays \"Dr Martin\"; sealed under the note subkey of patient key\n\
         version 3, bound to blind || note id || version.",
        &[
            ("kind", "note".into()),
            ("format", "2".into()),
            ("vault-id", vid.clone()),
            ("key", hex(patient.bytes_to_wrap())),
            ("key-version", "3".into()),
            ("place", format!("blind={} note={} version=2", hex(&blind.0), hex(&[0x0a; 16]))),
            ("sealed", hex(&sealed)),
            ("payload", render_note_v2(meta.clone(), body)),
        ],
    );

    let users = UsersV2 {
        serial: 7,
        users: vec![
            UserV1 {
                name: "admin".into(),
                role: 1,
            },
            UserV1 {
                name: "bob".into(),
                role: 2,
            },
        ],
    };
    let sealed =
        envelope::seal_frame_as::<UsersRecord, _>(2, &registry, &VAULT_ID_2, &(), &users).unwrap();
    write_v2(
        "users.vector",
        "Kind 8, Users, record format 2: serial 7 (the keyring holds the same serial), two users;\n\
         sealed under registry key version 2, bound to \"users\".",
        &[
            ("kind", "users".into()),
            ("format", "2".into()),
            ("vault-id", vid.clone()),
            ("key", hex(registry.bytes_to_wrap())),
            ("key-version", "2".into()),
            ("place", "none".into()),
            ("sealed", hex(&sealed)),
            ("payload", render_users_v2(users.clone(), &[])),
        ],
    );

    let job = JobV1 {
        kind: JOB_UPGRADE,
        target: 2,
        source: [0; 32],
        done: 2000,
    };
    let sealed =
        envelope::seal_frame::<JobRecord, _>(&registry, &VAULT_ID_2, &JobSlot::Upgrade, &job)
            .unwrap();
    write_v2(
        "job.vector",
        "Kind 7, Job (record format 1), kind 4 under \"upgrade-job\": an upgrade to format 2 whose\n\
         baseline entries record the first 2000 patients; sealed under registry key version 2.",
        &[
            ("kind", "job".into()),
            ("format", "1".into()),
            ("vault-id", vid.clone()),
            ("key", hex(registry.bytes_to_wrap())),
            ("key-version", "2".into()),
            ("place", "slot=upgrade-job".into()),
            ("sealed", hex(&sealed)),
            ("payload", render_job(job.clone(), &[])),
        ],
    );

    let entry = LogEntryV2 {
        at: 1_764_500_000_001,
        user: "bob".into(),
        via_recovery_key: false,
        action: "note amend".into(),
        note: Some(hex(&[0x0a; 16])),
        subject: None,
        outcome: "ok".into(),
        registry: None,
    };
    let lists = LogListsV2 {
        patients: vec![id.as_str().to_string()],
        states: vec![ManifestState {
            blind: blind.0,
            next_seq: 6,
            head: [0x77; 32],
        }],
    };
    let at = LogAt {
        seq: 41,
        prev: [0x88; 32],
    };
    let plain = frame::encode(&entry, &frame::encode_body(&lists).unwrap()).unwrap();
    let sealed = envelope::seal_as::<LogEntryRecord>(2, &log, &VAULT_ID_2, &at, &plain).unwrap();
    let (_, lists_bytes) = frame::decode::<LogEntryV2>(&plain).unwrap();
    write_v2(
        "log-entry.vector",
        "Kind 9, LogEntry, record format 2: bob's `note amend`, naming the patient and carrying the\n\
         manifest state the write left (in the frame's body); sealed under log key version 3,\n\
         bound to its sequence number 41 and the chain value before it.",
        &[
            ("kind", "log-entry".into()),
            ("format", "2".into()),
            ("vault-id", vid.clone()),
            ("key", hex(log.bytes_to_wrap())),
            ("key-version", "3".into()),
            ("place", format!("seq=41 prev={}", hex(&[0x88; 32]))),
            ("sealed", hex(&sealed)),
            ("payload", render_log_entry_v2(entry, lists_bytes)),
        ],
    );

    let pass = Passphrase::new("correct horse battery staple".into());
    let kdf = KdfParams::new(8, 1, 1).unwrap();
    let (slot, _) = Slot::create(
        &VAULT_ID_2,
        "admin",
        SlotSecret::Passphrase(&pass, kdf),
        &master,
        Some(&keyring_key),
    )
    .unwrap();
    let mut keyring = Keyring::new(2, VAULT_ID_2, master.epoch(), slot);
    keyring.set_users_serial(7);
    let mut held = crate::keyring::KeyringKeys::new();
    held.insert(2, KeyringKey::from_bytes(2, *keyring_key.bytes_to_wrap()));
    let bytes = keyring.encode(&master, &held).unwrap();
    write_v2(
        "keyring.vector",
        "The keyring, version 2: users serial 7, no revocation pending, one keyed passphrase slot\n\
         for `admin` (Argon2id at 8 MiB, 1 pass, 1 lane) holding keyring key version 2, master\n\
         epoch 4 sealed to it, and one MAC, under keyring key version 2. `key` is unused here.",
        &[
            ("kind", "keyring".into()),
            ("format", "2".into()),
            ("vault-id", vid),
            ("key", hex(&[0; 32])),
            ("key-version", "4".into()),
            ("user", "admin".into()),
            ("passphrase", "correct horse battery staple".into()),
            ("place", "none".into()),
            ("sealed", hex(&bytes)),
            (
                "payload",
                format!(
                    "master={} keyring-key=2:{}",
                    hex(master.bytes_to_wrap()),
                    hex(keyring_key.bytes_to_wrap())
                ),
            ),
        ],
    );
}
