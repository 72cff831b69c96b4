//! One module per command; each parses nothing (clap did), calls carnet-core, and renders.

mod audit;
mod backup;
mod demo;
mod import;
mod init;
mod key;
mod note;
mod patient;
mod search;
mod user;
mod verify;

use carnet_core::{PatientId, MAX_BODY_BYTES};
use std::io::{IsTerminal, Read};
use std::path::Path;

use crate::args::{Cli, Command};
use crate::error::CliError;

pub fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Patient(c) => patient::run(g, c),
        Command::Note(c) => note::run(g, c),
        Command::Key(c) => key::run(g, c),
        Command::User(c) => user::run(g, c),
        Command::Import(a) => import::run(g, a),
        Command::Search(a) => search::run(g, a),
        Command::Export { id } => export(g, &id),
        Command::Verify(a) => verify::run(g, a),
        Command::Audit(a) => audit::run(g, a),
        Command::Demo(a) => demo::run(g, a),
        Command::Backup { file } => backup::backup(g, &file),
        Command::Restore { file } => backup::restore(g, &file),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "carnet", &mut out);
            crate::render::print_bytes(&out)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut out)
                .map_err(|e| CliError::failure(format!("cannot render the manual: {e}")))?;
            crate::render::print_bytes(&out)
        }
    }
}

/// `carnet export ID`: always JSON (the record is data for another program).
fn export(g: &crate::args::Global, id: &str) -> Result<(), CliError> {
    let id = patient_id(id)?;
    let vault = crate::context::unlock(g)?;
    let (p, notes) = vault.export(&id)?;
    let mut doc = crate::render::patient_json(&p);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "notes".into(),
            serde_json::Value::Array(
                notes
                    .iter()
                    .map(|versions| {
                        serde_json::json!({
                            "id": versions.first().map(|n| n.id.to_string()),
                            "versions": versions.iter().map(crate::render::note_json).collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            ),
        );
        obj.insert("format".into(), "carnet-export-v1".into());
    }
    crate::render::print_json(&doc)
}

/// A patient id from the command line (validated before any passphrase is asked).
pub fn patient_id(id: &str) -> Result<PatientId, CliError> {
    Ok(PatientId::new(id)?)
}

/// A note body from FILE or standard input, refusing more than 16 MiB without reading it all.
pub fn read_body(file: Option<&Path>) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    let limit = MAX_BODY_BYTES as u64 + 1;
    let res = match file {
        Some(f) => std::fs::File::open(f)
            .and_then(|f| f.take(limit).read_to_end(&mut buf))
            .map_err(|e| CliError::failure(format!("cannot read {}: {e}", f.display()))),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Type the note, then press Ctrl-D on a new line:");
            }
            stdin
        }
        .lock()
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::failure(format!("cannot read standard input: {e}"))),
    };
    res?;
    if buf.len() > MAX_BODY_BYTES {
        return Err(CliError::failure(format!(
            "the note is larger than 16 MiB ({MAX_BODY_BYTES} bytes)"
        ))
        .hint("split it into several notes"));
    }
    Ok(buf)
}
