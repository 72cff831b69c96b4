//! `carnet import`'s line parser: one JSON Lines record into the patient and note it
//! describes (../shared/contract/cli.md, `import`). Part of the binary's private library (see
//! lib.rs); the fuzz target `import_line` reaches it through `carnet_cli::fuzzing`.

use carnet_core::{BirthDate, NewNote, NewPatient, NoteBody, PatientId};
use serde::Deserialize;

use crate::timestamp::parse_rfc3339;

/// One line of the import file (../shared/contract/cli.md, `import`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    patient_id: String,
    name: Option<String>,
    birth_date: Option<String>,
    author: Option<String>,
    kind: Option<String>,
    created_at: Option<String>,
    body: String,
}

/// The fields a line may have (the struct above, in order).
pub const FIELDS: [&str; 7] = [
    "patient_id",
    "name",
    "birth_date",
    "author",
    "kind",
    "created_at",
    "body",
];

/// Removes quoted input from serde's messages, so that no note text reaches the terminal:
/// every `"…"` piece, and every `` `…` `` piece that is not one of [`FIELDS`] (serde quotes
/// an unknown field's name, which is input, between backticks).
pub fn redact(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(open) = rest.find(['"', '`']) {
        let q = &rest[open..open + 1];
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(q) else {
            // An unterminated quote: drop everything after it.
            out.push_str(q);
            out.push('…');
            return out;
        };
        let inner = &after[..close];
        out.push_str(q);
        out.push_str(if q == "`" && FIELDS.contains(&inner) {
            inner
        } else {
            "…"
        });
        out.push_str(q);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses and validates one line into the patient and note it describes.
pub fn parse(bytes: &[u8]) -> Result<(NewPatient, NewNote), String> {
    let line: Line = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Eof => {
            "the JSON object is incomplete (truncated line?)".to_string()
        }
        serde_json::error::Category::Syntax => {
            format!("malformed JSON ({})", redact(&e.to_string()))
        }
        _ => redact(&e.to_string()),
    })?;
    let mut patient = NewPatient::new(PatientId::new(line.patient_id).map_err(|e| e.to_string())?);
    patient.name = line.name;
    patient.birth_date = line
        .birth_date
        .as_deref()
        .map(BirthDate::parse)
        .transpose()
        .map_err(|e| format!("birth_date: {e}"))?;
    let mut note = NewNote::new(NoteBody::new(line.body.into_bytes()).map_err(|e| e.to_string())?);
    for (what, v) in [
        ("name", &patient.name),
        ("author", &line.author),
        ("kind", &line.kind),
    ] {
        if v.as_ref()
            .is_some_and(|s| s.len() > carnet_core::MAX_FIELD_BYTES)
        {
            return Err(format!(
                "{what} is longer than {} bytes",
                carnet_core::MAX_FIELD_BYTES
            ));
        }
    }
    note.author = line.author;
    note.kind = line.kind;
    note.created_at = match line.created_at.as_deref() {
        Some(s) => Some(parse_rfc3339(s).ok_or_else(|| {
            "created_at is not an RFC 3339 timestamp (e.g. 2026-11-29T08:30:00Z)".to_string()
        })?),
        None => None,
    };
    Ok((patient, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_echo_quoted_input() {
        let err = parse(br#"{"patient_id": "p", "body": "x", "bodyy": "SECRET"}"#)
            .err()
            .unwrap();
        assert!(!err.contains("SECRET"), "{err}");
        let err = parse(br#"{"patient_id": "p", "body": 5}"#).err().unwrap();
        assert!(err.contains("body") || err.contains("string"), "{err}");
        let err = parse(br#"{"patient_id": "p", "body": "SECRET"#)
            .err()
            .unwrap();
        assert!(
            !err.contains("SECRET") && err.contains("incomplete"),
            "{err}"
        );
        assert_eq!(
            redact(r#"unknown field "a", expected "b""#),
            r#"unknown field "…", expected "…""#
        );
        // serde quotes field names between backticks: known ones stay, others are input.
        assert_eq!(
            redact("unknown field `SECRET\nX`, expected one of `body`, `name` at 1"),
            "unknown field `…`, expected one of `body`, `name` at 1"
        );
        assert_eq!(redact("a \"b\" `c"), "a \"…\" `…");
        let err = parse(br#"{"SECRET": 1, "patient_id": "p", "body": "x"}"#)
            .err()
            .unwrap();
        assert!(
            !err.contains("SECRET") && err.contains("unknown field"),
            "{err}"
        );
    }

    #[test]
    fn dates_are_checked() {
        assert!(parse(br#"{"patient_id":"p","body":"x","birth_date":"1984-02-30"}"#).is_err());
        assert!(parse(br#"{"patient_id":"p","body":"x","created_at":"yesterday"}"#).is_err());
        assert!(parse(
            br#"{"patient_id":"p","body":"x","created_at":"2026-01-02T03:04:05+01:00"}"#
        )
        .is_ok());
        assert!(parse(br#"{"patient_id":"","body":"x"}"#).is_err());
    }
}
