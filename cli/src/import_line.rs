//! `carnet import`'s line parser: one JSON Lines record into the patient and note it
//! describes (docs/cli.md, `import`). Part of the binary's private library (see
//! lib.rs); the fuzz target `import_line` reaches it through `carnet_cli::fuzzing`.

use carnet_core::{BirthDate, NewNote, NewPatient, NoteBody, PatientId};
use serde::Deserialize;

use crate::timestamp::parse_rfc3339;

/// One line of the import file (docs/cli.md, `import`).
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

/// Describes why serde rejected a line in words of our own: serde's messages quote input
/// (unknown field names, string values), which may be note text, and input can contain any
/// quote character, so no redaction of them is reliable. Only field names of [`FIELDS`] and
/// serde's description of the expected type (from our schema) are kept.
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("at column {}", e.column());
    match e.classify() {
        Category::Eof => "the JSON object is incomplete (truncated line?)".to_string(),
        Category::Syntax => format!("malformed JSON {at}"),
        Category::Io => format!("unreadable {at}"),
        Category::Data => {
            let msg = e.to_string();
            let named = |prefix: &str| {
                FIELDS
                    .iter()
                    .find(|f| msg.starts_with(&format!("{prefix} `{f}`")))
                    .map(|f| format!("{prefix} `{f}` {at}"))
            };
            if let Some(m) = named("missing field").or_else(|| named("duplicate field")) {
                m
            } else if msg.starts_with("unknown field") {
                format!("unknown field {at} (the fields are {})", FIELDS.join(", "))
            } else if msg.starts_with("invalid type") {
                let expected = [
                    "a string",
                    "a map",
                    "a sequence",
                    "a number",
                    "a boolean",
                    "null",
                ]
                .into_iter()
                .find(|x| msg.contains(&format!("expected {x}")));
                match expected {
                    Some(x) => format!("wrong type {at} (expected {x})"),
                    None => format!("wrong type {at}"),
                }
            } else {
                format!("invalid value {at}")
            }
        }
    }
}

/// Parses and validates one line into the patient and note it describes.
pub fn parse(bytes: &[u8]) -> Result<(NewPatient, NewNote), String> {
    let line: Line = serde_json::from_slice(bytes).map_err(|e| describe(&e))?;
    let mut patient = NewPatient::new(PatientId::new(line.patient_id).map_err(|e| e.to_string())?);
    patient.name = line.name;
    patient.birth_date = line
        .birth_date
        .as_deref()
        .map(BirthDate::parse)
        .transpose()
        .map_err(|e| format!("birth_date: {e}"))?;
    let body = NoteBody::new(line.body.into_bytes()).map_err(|e| e.to_string())?;
    if body.is_blank() {
        return Err("body is empty (or only blanks)".to_string());
    }
    let mut note = NewNote::new(body);
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
        // Input may hold any quote character: messages are built from our own words.
        for line in [
            &br#"{"p`tient._i\n_i\"","a"autho"#[..],
            br#"{"SECRET`x`": 1, "patient_id": "p", "body": "x"}"#,
            br#"{"patient_id": ["SECRET"], "body": "x"}"#,
        ] {
            let err = parse(line).err().unwrap();
            assert!(!err.contains("SECRET") && !err.contains('"'), "{err}");
        }
        let err = parse(br#"{"patient_id": "p"}"#).err().unwrap();
        assert!(err.starts_with("missing field `body`"), "{err}");
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
