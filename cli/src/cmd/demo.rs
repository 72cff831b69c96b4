//! `carnet demo`: a guided tour on a demo vault with synthetic patients.

use std::path::{Path, PathBuf};
use std::time::Instant;

use carnet_core::{
    BirthDate, KdfParams, NewNote, NewPatient, NoteBody, Passphrase, PatientId, Vault,
};
use carnet_storage::SledStore;

use crate::args::{DemoArgs, Global};
use crate::error::CliError;
use crate::render;

/// The demo vault's passphrase; it protects synthetic data only.
const DEMO_PASSPHRASE: &str = "demo vault: synthetic patients only";

struct DemoPatient {
    id: &'static str,
    name: &'static str,
    birth: &'static str,
    notes: &'static [(&'static str, &'static str, &'static str)],
}

const PATIENTS: &[DemoPatient] = &[
    DemoPatient {
        id: "DEMO-0001",
        name: "Camille Zephyrin-Martin",
        birth: "1984-02-29",
        notes: &[
            ("Dr Leroy", "consultation", "Persistent dry cough for three weeks. No fever. Allergic to penicillin: prescribed azithromycin."),
            ("Dr Leroy", "lab", "Serology panel requested: HIV, hepatitis B and C. Results to be discussed in person."),
        ],
    },
    DemoPatient {
        id: "DEMO-0002",
        name: "Noor Quillfeather",
        birth: "1957-11-03",
        notes: &[
            ("Dr Benali", "consultation", "Type 2 diabetes follow-up. HbA1c 7.9 %. Patient asks that religious fasting be taken into account."),
            ("Dr Benali", "prescription", "Metformin 1000 mg twice daily."),
        ],
    },
    DemoPatient {
        id: "DEMO-0003",
        name: "Elouan Brightwater",
        birth: "2001-06-15",
        notes: &[
            ("Dr Okafor", "consultation", "Anxiety since coming out to family. Referred to a counsellor. Penicillin tolerated in 2019."),
            ("Dr Okafor", "note", "Patient requests that this record not be shared with the employer's occupational physician."),
        ],
    },
];

fn step(n: u32, text: String) -> String {
    format!("  {n}. {text}\n")
}

pub fn run(g: &Global, a: DemoArgs) -> Result<(), CliError> {
    let dir = match a.dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("carnet-demo-")
            .tempdir()
            .map_err(|e| CliError::failure(format!("cannot create a temporary directory: {e}")))?
            .keep(),
    };
    let mut out = format!(
        "Carnet demo: a vault of synthetic patients in {}\n\n",
        dir.display()
    );
    let kdf = KdfParams::default();
    let pass = Passphrase::new(DEMO_PASSPHRASE.to_string());
    let mut secrets: Vec<String> = Vec::new();

    // 1. Create, then unlock as a clinic would every morning.
    Vault::create(SledStore::create(&dir)?, "admin", &pass, kdf)?;
    let t = Instant::now();
    let mut vault = Vault::unlock(SledStore::open(&dir)?, "admin", &pass)?;
    out += &step(
        1,
        format!(
            "Created the vault: Argon2id {} MiB / {} passes / {} lanes; unlocking takes {:.2} s.",
            kdf.memory_mib(),
            kdf.iterations(),
            kdf.parallelism(),
            t.elapsed().as_secs_f64()
        ),
    );

    // 2. Patients and notes.
    let mut stored = Vec::new();
    for p in PATIENTS {
        let id = PatientId::new(p.id)?;
        let mut np = NewPatient::new(id.clone());
        np.name = Some(p.name.to_string());
        np.birth_date = Some(BirthDate::parse(p.birth)?);
        vault.add_patient(np)?;
        secrets.extend([p.id.to_string(), p.name.to_string(), p.birth.to_string()]);
        for (author, kind, body) in p.notes {
            let mut n = NewNote::new(NoteBody::new(body.as_bytes().to_vec())?);
            n.author = Some(author.to_string());
            n.kind = Some(kind.to_string());
            stored.push((id.clone(), vault.add_note(&id, n)?, body.to_string()));
            secrets.push(body.to_string());
        }
    }
    let amended = "Persistent dry cough for three weeks. No fever. Allergic to penicillin and amoxicillin: prescribed azithromycin.";
    let first = PatientId::new(PATIENTS[0].id)?;
    vault.amend_note(
        &first,
        &stored[0].1,
        NoteBody::new(amended.as_bytes().to_vec())?,
        None,
    )?;
    stored[0].2 = amended.to_string();
    secrets.push(amended.to_string());
    out += &step(
        2,
        format!(
        "Registered {} patients and stored {} notes (one amended); each patient has its own key.",
        PATIENTS.len(),
        stored.len()
    ),
    );

    // 3. Read back.
    for (id, nid, body) in &stored {
        let n = vault.note(id, nid)?;
        if n.body.as_ref().map(|b| b.as_bytes()) != Some(body.as_bytes()) {
            return Err(CliError::failure(
                "demo: a note did not read back identical",
            ));
        }
    }
    let history = vault.note_history(&first, &stored[0].1)?;
    out += &step(3, format!(
        "Read every note back, authenticated and byte-identical; the amended note keeps its {} versions.",
        history.len()
    ));

    // 4. Search.
    let hits = vault.search("penicillin", None)?;
    out += &step(
        4,
        format!(
            "Searched for \"penicillin\" across all patients: {} notes match.",
            hits.len()
        ),
    );

    // 5. Verify.
    let report = vault.verify(&mut |_, _| {})?;
    out += &step(
        5,
        format!(
            "verify: {} records checked, {} problems.",
            report.records_checked,
            report.problems.len()
        ),
    );
    // 6. Key rotation: the master key (no note rewritten), then one patient's key.
    let t = Instant::now();
    let m = vault.rotate_master(&mut |_, _| {})?;
    let pr = vault.rotate_patients(carnet_core::Patients::One(&first), &mut |_, _| {})?;
    for (id, nid, body) in &stored {
        if vault.note(id, nid)?.body.as_ref().map(|b| b.as_bytes()) != Some(body.as_bytes()) {
            return Err(CliError::failure("demo: a note changed during rotation"));
        }
    }
    out += &step(
        6,
        format!(
            "Rotated the master key (epoch {} → {}: {} keys re-wrapped, {} notes rewritten) and \
             {}'s patient key ({} records re-encrypted, old key destroyed) in {:.2} s; every \
             note reads the same.",
            m.from_epoch,
            m.to_epoch,
            m.keys_rewrapped,
            m.notes_rewritten,
            PATIENTS[0].id,
            pr.records_rewritten,
            t.elapsed().as_secs_f64()
        ),
    );
    drop(vault);

    // 7. Breach check: no secret appears in any file, in clear.
    let (files, bytes, found) = scan(&dir, &secrets)?;
    out += &step(
        7,
        format!(
        "Scanned the {files} files ({bytes} bytes) under the vault directory for the {} secrets \
         (identifiers, names, birth dates, note texts): {} found.",
        secrets.len(),
        found.len()
    ),
    );
    if !found.is_empty() {
        return Err(CliError::failure("demo: plaintext was found on disk"));
    }
    out += &format!(
        "\nExplore it yourself (passphrase: \"{DEMO_PASSPHRASE}\"):\n  \
         carnet --vault {dir} patient list\n  carnet --vault {dir} note list DEMO-0001\n  \
         carnet --vault {dir} verify\n  carnet --vault {dir} key status\n",
        dir = dir.display()
    );
    if g.json {
        render::print_json(&serde_json::json!({
            "vault": dir.display().to_string(),
            "patients": PATIENTS.len(),
            "notes": stored.len(),
            "records_checked": report.records_checked,
            "problems": report.problems.len(),
            "files_scanned": files,
            "plaintext_found": found.len(),
        }))
    } else {
        render::print(&out)
    }
}

/// Every file under `dir`, searched for each secret as raw UTF-8 and as UTF-16LE.
fn scan(dir: &Path, secrets: &[String]) -> Result<(usize, u64, Vec<PathBuf>), CliError> {
    let mut files = 0;
    let mut bytes = 0u64;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| CliError::failure(format!("cannot read {}: {e}", d.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let data = std::fs::read(&path)
                .map_err(|e| CliError::failure(format!("cannot read {}: {e}", path.display())))?;
            files += 1;
            bytes += data.len() as u64;
            for s in secrets {
                let utf16: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
                if contains(&data, s.as_bytes()) || contains(&data, &utf16) {
                    found.push(path.clone());
                }
            }
        }
    }
    Ok((files, bytes, found))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
