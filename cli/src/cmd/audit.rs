//! `carnet audit` and `carnet audit checkpoint`

use carnet_core::AuditFilter;
use serde_json::{json, Value};

use super::patient_id;
use crate::args::{AuditArgs, AuditCommand, Global};
use crate::context;
use crate::error::CliError;
use crate::render::{self, or_dash};

pub fn run(g: &Global, a: AuditArgs) -> Result<(), CliError> {
    if let Some(AuditCommand::AcceptRewind) = a.command {
        let mut vault = context::unlock_as_found(g)?;
        // The same duty as reading the log's head; and the step is itself logged.
        vault.log_checkpoint()?;
        let seen = vault.seen();
        let found = vault.accept_as_is()?;
        if g.json {
            return render::print_json(&json!({
                "seen": seen.map(|c| c.to_line()),
                "accepted": found.to_line(),
            }));
        }
        let before = match seen {
            Some(s) if s == found => "this machine already saw exactly this state".to_string(),
            Some(s) => format!("this machine had seen {} access-log entries", s.count),
            None => "this machine had not seen this vault here".to_string(),
        };
        return render::print(&format!(
            "Accepted the vault as it is now ({} access-log entries; {before}).\n",
            found.count
        ));
    }
    if let Some(AuditCommand::Checkpoint) = a.command {
        let vault = context::unlock(g)?;
        let c = vault.log_checkpoint()?;
        if g.json {
            let head: String = c.head.iter().map(|b| format!("{b:02x}")).collect();
            return render::print_json(&json!({
                "checkpoint": c.to_line(),
                "entries": c.count,
                "head": head,
            }));
        }
        return render::print(&format!("{}\n", c.to_line()));
    }
    let mut filter = AuditFilter::default();
    filter.patient = a.patient.as_deref().map(patient_id).transpose()?;
    filter.user = a.by;
    filter.since = match a.since.as_deref() {
        Some(s) => Some(render::parse_rfc3339(s).ok_or_else(|| {
            CliError::usage("--since must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z")
        })?),
        None => None,
    };
    let vault = context::unlock(g)?;
    let entries = vault.audit(&filter)?;
    if g.json {
        return render::print_json(&Value::Array(
            entries.iter().map(carnet_json::audit_entry_json).collect(),
        ));
    }
    let mut out = String::new();
    for e in &entries {
        // Every patient the entry names (a search, an import), comma-separated; the user an
        // operation concerned goes where a patient would.
        let patients = if e.patients.is_empty() {
            e.subject
                .as_deref()
                .map_or_else(|| "-".to_string(), |u| format!("user {u}"))
        } else {
            e.patients.join(",")
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            e.seq,
            render::rfc3339(e.at),
            render::log_user(e),
            render::action_words(&e.action),
            patients,
            or_dash(e.note_id.as_deref()),
            e.outcome
        ));
    }
    render::print(&out)
}
