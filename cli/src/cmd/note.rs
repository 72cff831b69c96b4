//! `carnet note add|list|show|amend|history`

use carnet_core::{NewNote, Note, NoteBody, NoteId};
use serde_json::Value;

use super::{patient_id, read_body};
use crate::args::{Global, NoteCommand};
use crate::context;
use crate::error::CliError;
use crate::render::{self, or_dash};

fn note_id(s: &str) -> Result<NoteId, CliError> {
    Ok(s.parse::<NoteId>()?)
}

/// Another copy of a body (zeroized on drop too), for a write tried again.
fn copy(body: &NoteBody) -> Result<NoteBody, carnet_core::Error> {
    NoteBody::new(body.as_bytes().to_vec())
}

pub fn run(g: &Global, c: NoteCommand) -> Result<(), CliError> {
    match c {
        NoteCommand::Add {
            id,
            file,
            author,
            kind,
        } => {
            let id = patient_id(&id)?;
            let body = read_body(file.as_deref())?;
            let mut vault = context::unlock(g)?;
            let nid = vault.again(|v| {
                let mut note = NewNote::new(copy(&body)?);
                note.author = author.clone();
                note.kind = kind.clone();
                v.add_note(&id, note)
            })?;
            // Printed only now: add_note returns once the note is durably stored.
            if g.json {
                render::print_json(&serde_json::json!({"id": nid.to_string()}))
            } else {
                render::print(&format!("{nid}\n"))
            }
        }
        NoteCommand::List { id } => {
            let id = patient_id(&id)?;
            let notes = context::unlock(g)?.again(|v| v.notes(&id))?;
            if g.json {
                return render::print_json(&Value::Array(
                    notes.iter().map(render::note_json).collect(),
                ));
            }
            let mut out = String::new();
            for n in &notes {
                out.push_str(&format!(
                    "{}\t{}\tv{}\t{}\t{}\t{} bytes\n",
                    n.id,
                    render::rfc3339(n.created_at),
                    n.version,
                    or_dash(n.author.as_deref()),
                    or_dash(n.kind.as_deref()),
                    n.bytes
                ));
            }
            render::print(&out)
        }
        NoteCommand::Show { id, note_id: nid } => {
            let id = patient_id(&id)?;
            let nid = note_id(&nid)?;
            let n = context::unlock(g)?.again(|v| v.note(&id, &nid))?;
            if g.json {
                return render::print_json(&render::note_json(&n));
            }
            render::print_bytes(n.body.as_ref().map_or(&[][..], |b| b.as_bytes()))
        }
        NoteCommand::Amend {
            id,
            note_id: nid,
            file,
            author,
        } => {
            let id = patient_id(&id)?;
            let nid = note_id(&nid)?;
            let body = read_body(file.as_deref())?;
            let version = context::unlock(g)?
                .again(|v| v.amend_note(&id, &nid, copy(&body)?, author.clone()))?;
            if g.json {
                render::print_json(&serde_json::json!({"id": nid.to_string(), "version": version}))
            } else {
                render::print(&format!("{nid}\n"))
            }
        }
        NoteCommand::History { id, note_id: nid } => {
            let id = patient_id(&id)?;
            let nid = note_id(&nid)?;
            let versions = context::unlock(g)?.again(|v| v.note_history(&id, &nid))?;
            if g.json {
                return render::print_json(&Value::Array(
                    versions.iter().map(render::note_json).collect(),
                ));
            }
            let mut out = Vec::new();
            for n in &versions {
                out.extend_from_slice(header(n).as_bytes());
                if let Some(b) = &n.body {
                    out.extend_from_slice(b.as_bytes());
                    if !b.as_bytes().ends_with(b"\n") {
                        out.push(b'\n');
                    }
                }
            }
            render::print_bytes(&out)
        }
    }
}

fn header(n: &Note) -> String {
    // Format 2 records who wrote each version (the unlocking user), beside the free-text
    // author.
    let written = match (&n.written_by, n.written_via_recovery_key) {
        (Some(u), false) => format!(", written by {u}"),
        (Some(u), true) => format!(", written by {u} with the recovery key"),
        (None, _) => String::new(),
    };
    format!(
        "--- version {} of {} ({}, by {}{written}, {} bytes)\n",
        n.version,
        n.id,
        render::rfc3339(n.updated_at),
        or_dash(n.author.as_deref()),
        n.bytes
    )
}
