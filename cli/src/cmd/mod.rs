//! One module per command; each parses nothing (clap did), calls carnet-core, and renders.

mod audit;
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
        Command::Verify(a) => verify::run(g, a),
        Command::Audit(a) => audit::run(g, a),
        Command::Demo(a) => demo::run(g, a),
    }
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
