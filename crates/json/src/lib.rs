//! The JSON shapes Carnet shows: the command line's `--json` output (docs/cli.md) and the
//! answers of `carnet serve` (docs/api.md) are the same objects, made here once.
#![forbid(unsafe_code)]

use base64::Engine;
use carnet_core::{
    Action, KeyStatus, LogEntry, Note, Patient, ProblemKind, SearchHit, Timestamp, Unfinished,
    VerifyReport,
};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// RFC 3339 in UTC, e.g. `2026-11-29T08:27:43.120Z`.
pub fn rfc3339(t: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.unix_millis()) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{}ms", t.unix_millis()))
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

/// A patient, as `patient show --json` and the API show it.
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

/// A patient's whole record, as `carnet export` writes it.
pub fn export_json(p: &Patient, notes: &[Vec<Note>]) -> Value {
    let mut doc = patient_json(p);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "notes".into(),
            Value::Array(
                notes
                    .iter()
                    .map(|versions| {
                        json!({
                            "id": versions.first().map(|n| n.id.to_string()),
                            "versions": versions.iter().map(note_json).collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            ),
        );
        obj.insert("format".into(), "carnet-export-v1".into());
    }
    doc
}

/// A verification's report, as `verify --json` shows it.
pub fn verify_json(report: &VerifyReport) -> Value {
    json!({
        "ok": report.is_ok(),
        "records_checked": report.records_checked,
        "problems": report.problems.iter().map(|p| json!({
            "location": p.location(),
            "kind": problem_kind_words(p.kind()),
            "problem": p.problem(),
        })).collect::<Vec<_>>(),
        "unfinished": report.unfinished.iter().map(unfinished_words).collect::<Vec<_>>(),
    })
}

/// The state of the keys, as `key status --json` shows it.
pub fn key_status_json(s: &KeyStatus) -> Value {
    json!({
        "epoch": s.epoch,
        "pending_epoch": s.pending_epoch,
        "key_store_epoch": s.key_store_epoch,
        "kdf": {"algorithm": "argon2id", "memory_mib": s.kdf.memory_mib(),
                "iterations": s.kdf.iterations(), "parallelism": s.kdf.parallelism()},
        "slots": s.slots,
        "keys_per_epoch": s.keys_per_epoch.iter().map(|(e, n)| json!({"epoch": e, "keys": n})).collect::<Vec<_>>(),
        "records_per_patient_key_version": s.records_per_patient_key_version.iter()
            .map(|(v, n)| json!({"version": v, "records": n})).collect::<Vec<_>>(),
        "patients_unfinished": s.patients_unfinished,
        "unused_keys": s.unused_keys,
        "format": s.format,
        "legacy_slots": s.legacy_slots,
        "slots_behind": s.slots_behind,
        "unfinished": s.unfinished.iter().map(unfinished_words).collect::<Vec<_>>(),
    })
}

/// A search hit, as `search --json` shows it (with the patient's reference when it has one).
pub fn search_hit_json(h: &SearchHit) -> Value {
    let mut v = json!({
        "patient_id": h.patient_id.as_str(),
        "note_id": h.note_id.to_string(),
        "version": h.version,
        "snippet": h.snippet,
    });
    if let Some(r) = h.patient_ref {
        v["ref"] = json!(r.to_string());
    }
    v
}

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

/// An access-log entry, as `audit --json` shows it.
pub fn audit_entry_json(e: &LogEntry) -> Value {
    json!({
        "seq": e.seq,
        "at": rfc3339(e.at),
        "user": log_user(e),
        "recovery_key": e.via_recovery_key,
        "action": action_words(&e.action),
        "patient_id": e.patient_id,
        "patients": e.patients,
        "note_id": e.note_id,
        "subject_user": e.subject,
        "outcome": e.outcome,
    })
}

/// Parses an RFC 3339 timestamp.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let d = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let ms = d.unix_timestamp_nanos() / 1_000_000;
    Some(Timestamp::from_unix_millis(i64::try_from(ms).ok()?))
}
