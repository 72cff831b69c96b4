//! Rendering: timestamps, the JSON shapes and words of docs/cli.md, and stdout.

use std::io::Write;

use base64::Engine;
use carnet_core::{Action, LogEntry, Note, Patient, ProblemKind, Timestamp, Unfinished};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{CliError, Exit};

/// RFC 3339 in UTC, e.g. `2026-11-29T08:27:43.120Z`.
pub fn rfc3339(t: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.unix_millis()) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{}ms", t.unix_millis()))
}

pub use carnet_cli::timestamp::parse_rfc3339;

/// An access-log action as the command line names it: the command as typed. The stored names
/// (frozen by the format) were chosen as the commands' words, so they are shown as they are; a
/// command renamed one day maps its old stored name here, and a name written by a newer Carnet
/// (`Action::Other`) is shown as stored.
pub fn action_words(a: &Action) -> &str {
    a.stored_name()
}

/// Who an access-log entry names: `NAME`, or `NAME (recovery key)`.
pub fn log_user(e: &LogEntry) -> String {
    if e.via_recovery_key {
        format!("{} (recovery key)", e.user)
    } else {
        e.user.clone()
    }
}

/// The command that finishes an unfinished operation.
pub fn finish_command(u: &Unfinished) -> &'static str {
    match u {
        Unfinished::MasterRotation { .. } => "`carnet key rotate-master`",
        Unfinished::AllPatientsRotation => "`carnet key rotate-patient --all`",
        Unfinished::Revocation => {
            "`carnet user remove NAME` again (or, after a passphrase change, `carnet key change-passphrase` again)"
        }
        Unfinished::PatientRotations { .. } => "`carnet key rotate-patient ID` or `--all`",
        Unfinished::Upgrade => "`carnet key upgrade` again",
        _ => "the same command again",
    }
}

/// An unfinished operation, with the command that finishes it.
pub fn unfinished_words(u: &Unfinished) -> String {
    match u {
        Unfinished::MasterRotation { to_epoch } => format!(
            "master-key rotation to epoch {to_epoch} (run `carnet key rotate-master` to finish it)"
        ),
        Unfinished::AllPatientsRotation => "rotation of every patient's key (run `carnet key rotate-patient --all` to finish it)".into(),
        Unfinished::Revocation => {
            "a revocation: a user's removal or a passphrase change (run `carnet user remove NAME` or `carnet key change-passphrase` again to finish it)".into()
        }
        Unfinished::Upgrade => {
            "an upgrade to format 2 (run `carnet key upgrade` again to finish it)".into()
        }
        Unfinished::PatientRotations { patients } => format!(
            "{patients} patient key rotation(s) (run `carnet key rotate-patient ID` or `--all` to finish)"
        ),
        other => format!("{other:?} (run the same command again to finish it)"),
    }
}

/// An integrity problem's kind, as `verify --json` names it.
pub fn problem_kind_words(k: ProblemKind) -> &'static str {
    match k {
        ProblemKind::Missing => "missing",
        ProblemKind::Moved => "moved",
        ProblemKind::Orphan => "orphan",
        ProblemKind::FailedAuthentication => "failed_authentication",
        ProblemKind::Malformed => "malformed",
        ProblemKind::Inconsistent => "inconsistent",
        ProblemKind::RolledBack => "rolled_back",
        _ => "other",
    }
}

pub fn patient_json(p: &Patient) -> Value {
    let mut v = json!({
        "id": p.id.as_str(),
        "name": p.name,
        "birth_date": p.birth_date.as_ref().map(|d| d.as_str()),
        "notes": p.notes,
        "created_at": rfc3339(p.created_at),
    });
    // Only a patient that has a reference shows one (ADR 0021).
    if let Some(r) = p.reference {
        v["ref"] = json!(r.to_string());
    }
    v
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
    // Format 2 records who wrote each version; format 1's versions have no such field.
    if let (Some(by), Some(obj)) = (&n.written_by, v.as_object_mut()) {
        obj.insert("written_by".into(), Value::String(by.clone()));
        obj.insert(
            "written_with_recovery_key".into(),
            Value::Bool(n.written_via_recovery_key),
        );
    }
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
