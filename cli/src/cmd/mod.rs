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
mod serve;
mod user;
mod verify;

use carnet_core::{NoteBody, PatientId, MAX_BODY_BYTES};
use std::io::{IsTerminal, Read};
use std::os::fd::AsFd;
use std::path::Path;
use zeroize::Zeroizing;

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
        Command::Serve(a) => serve::run(g, a),
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
    crate::render::print_json(&crate::render::export_json(&p, &notes))
}

/// A patient id from the command line (validated before any passphrase is asked).
pub fn patient_id(id: &str) -> Result<PatientId, CliError> {
    Ok(PatientId::new(id)?)
}

/// A note body from FILE or standard input, refusing more than 16 MiB without reading it all.
/// Read without any buffer but its own (standard input through its file descriptor, not std's
/// buffered handle), which is zeroized whenever it grows and if the body is refused: no copy
/// of the note is left in freed memory.
pub fn read_body(file: Option<&Path>) -> Result<NoteBody, CliError> {
    let limit = MAX_BODY_BYTES + 1;
    let body = match file {
        Some(f) => std::fs::File::open(f)
            .and_then(|mut input| {
                let hint = input.metadata().map_or(0, |m| m.len() as usize);
                read_secret(&mut input, limit, hint)
            })
            .map_err(|e| CliError::failure(format!("cannot read {}: {e}", f.display())))?,
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("Type the note, then press Ctrl-D on a new line:");
            }
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(std::fs::File::from)
                .and_then(|mut input| read_secret(&mut input, limit, 0))
                .map_err(|e| CliError::failure(format!("cannot read standard input: {e}")))?
        }
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(CliError::failure(format!(
            "the note is larger than 16 MiB ({MAX_BODY_BYTES} bytes)"
        ))
        .hint("split it into several notes"));
    }
    let mut body = body;
    let body = NoteBody::new(std::mem::take(&mut *body))?;
    if body.is_blank() {
        return Err(CliError::usage("the note is empty (or only blanks)")
            .hint("write the note's text, or give it with --file FILE"));
    }
    Ok(body)
}

/// Reads at most `limit` bytes of `input` into one zeroizing buffer, starting at `hint` bytes
/// of room: when it must grow, the old buffer is zeroized after the copy.
fn read_secret(
    input: &mut impl Read,
    limit: usize,
    hint: usize,
) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(hint.clamp(4096, limit) + 1));
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= limit {
                return Ok(buf);
            }
            let mut bigger =
                Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).min(limit + 1)));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        let len = buf.len();
        let room = (buf.capacity() - len).min(limit + 1 - len);
        buf.resize(len + room, 0);
        match input.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Ok(n) => buf.truncate(len + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(len),
            Err(e) => return Err(e),
        }
        if buf.len() > limit {
            return Ok(buf);
        }
    }
}
