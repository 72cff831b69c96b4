//! A day at a small clinic, through the library: create a vault on disk, register a patient,
//! write and amend a note, reopen the vault, read and search, verify.
//!
//! Run with `cargo run -p carnet-core --example clinic`.

use carnet_core::{KdfParams, NewNote, NewPatient, NoteBody, Passphrase, PatientId, Vault};
use carnet_storage::SledStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("vault");
    let passphrase = || Passphrase::new("a long passphrase for the example".to_string());

    // Morning: the vault is created once, with the recommended Argon2id settings.
    let vault = Vault::create(
        SledStore::create(&path)?,
        "admin",
        &passphrase(),
        KdfParams::default(),
    )?;
    let id = PatientId::new("FR-0042")?;
    let mut patient = NewPatient::new(id.clone());
    patient.name = Some("Camille Martin".into());
    vault.add_patient(patient)?;

    let mut note = NewNote::new(NoteBody::new(
        b"Dry cough for three weeks. No fever.".to_vec(),
    )?);
    note.author = Some("Dr Leroy".into());
    note.kind = Some("consultation".into());
    let note_id = vault.add_note(&id, note)?;
    vault.amend_note(
        &id,
        &note_id,
        NoteBody::new(b"Dry cough for three weeks. No fever. Allergic to penicillin.".to_vec())?,
        None,
    )?;
    drop(vault); // closes the store

    // Later: reopen with the passphrase and read.
    let vault = Vault::unlock(SledStore::open(&path)?, "admin", &passphrase())?;
    for p in vault.patients()? {
        println!("patient with {} note(s)", p.notes);
        for n in vault.notes(&p.id)? {
            let full = vault.note(&p.id, &n.id)?;
            let body = full
                .body
                .map(|b| String::from_utf8_lossy(b.as_bytes()).into_owned());
            println!("  {} v{}: {}", n.id, n.version, body.unwrap_or_default());
        }
    }
    println!(
        "search 'penicillin': {} hit(s)",
        vault.search("penicillin", None)?.len()
    );
    let report = vault.verify(&mut |_, _| {})?;
    println!(
        "verify: {} records, {} problems",
        report.records_checked,
        report.problems.len()
    );
    Ok(())
}
