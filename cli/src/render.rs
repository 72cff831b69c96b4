//! Rendering: timestamps, JSON shapes of ../shared/contract/cli.md, and stdout.

use std::io::Write;

use base64::Engine;
use carnet_core::{Note, Patient, Timestamp};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::CliError;

/// RFC 3339 in UTC, e.g. `2026-11-29T08:27:43.120Z`.
pub fn rfc3339(t: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.unix_millis()) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{}ms", t.unix_millis()))
}

pub use carnet_cli::timestamp::parse_rfc3339;

pub fn patient_json(p: &Patient) -> Value {
    json!({
        "id": p.id.as_str(),
        "name": p.name,
        "birth_date": p.birth_date.as_ref().map(|d| d.as_str()),
        "notes": p.notes,
        "created_at": rfc3339(p.created_at),
    })
}

/// A note as `note list` shows it; with its body when it has one.
pub fn note_json(n: &Note) -> Value {
    let mut v = json!({
        "id": n.id.to_string(),
        "created_at": rfc3339(n.created_at),
        "updated_at": rfc3339(n.updated_at),
        "author": n.author,
        "kind": n.kind,
        "bytes": n.bytes,
        "version": n.version,
    });
    if let (Some(body), Some(obj)) = (&n.body, v.as_object_mut()) {
        match std::str::from_utf8(body.as_bytes()) {
            Ok(text) => obj.insert("body".into(), Value::String(text.to_string())),
            Err(_) => obj.insert(
                "body_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(body.as_bytes())),
            ),
        };
    }
    v
}

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
        // The reader went away (`carnet note list X | head`): stop quietly, as Unix tools do.
        std::process::exit(0);
    }
    CliError::failure(format!("cannot write to standard output: {e}"))
}

/// `-` for an absent field.
pub fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}
