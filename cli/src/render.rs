//! Rendering: timestamps, the JSON shapes and words of docs/cli.md, and stdout.

use std::io::Write;

use serde_json::Value;

use crate::error::{CliError, Exit};

pub use carnet_cli::timestamp::parse_rfc3339;
pub use carnet_json::{
    action_words, export_json, finish_command, key_status_json, log_user, note_json, patient_json,
    rfc3339, unfinished_words, verify_json,
};

/// Writes one JSON document and a newline to stdout.
pub fn print_json(v: &Value) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| match e.io_error_kind() {
        Some(kind) => stdout_error(kind.into()),
        None => CliError::from(e),
    })?;
    writeln!(out).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)
}

/// Writes raw bytes to stdout.
pub fn print_bytes(b: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(b).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)
}

/// Writes text to stdout.
pub fn print(s: &str) -> Result<(), CliError> {
    print_bytes(s.as_bytes())
}

pub fn stdout_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // The reader went away (`carnet note list X | head`): stop quietly, as Unix tools do,
        // but by returning, so that the command ends as usual (the vault's head remembered).
        return CliError::new(Exit::Quiet, "");
    }
    CliError::failure(format!("cannot write to standard output: {e}"))
}

/// `-` for an absent field.
pub fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}
