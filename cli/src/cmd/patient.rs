//! `carnet patient add|list|show`

use carnet_core::{BirthDate, NewPatient, Patient};
use serde_json::Value;

use super::patient_id;
use crate::args::{Global, PatientCommand};
use crate::context;
use crate::error::CliError;
use crate::render::{self, or_dash};

pub fn run(g: &Global, c: PatientCommand) -> Result<(), CliError> {
    match c {
        PatientCommand::Add {
            id,
            name,
            birth_date,
        } => {
            let mut p = NewPatient::new(patient_id(&id)?);
            p.name = name;
            p.birth_date = birth_date.as_deref().map(BirthDate::parse).transpose()?;
            context::unlock(g)?.again(|v| v.add_patient(p.clone()))?;
            if g.json {
                render::print_json(&serde_json::json!({"ok": true}))
            } else if g.quiet {
                Ok(())
            } else {
                render::print("Patient registered.\n")
            }
        }
        PatientCommand::List => {
            let patients = context::unlock(g)?.again(|v| v.patients())?;
            if g.json {
                return render::print_json(&Value::Array(
                    patients.iter().map(render::patient_json).collect(),
                ));
            }
            let mut out = String::new();
            for p in &patients {
                out.push_str(&line(p));
            }
            if patients.is_empty() && !g.quiet {
                eprintln!("No patients yet. Add one with `carnet patient add ID`.");
            }
            render::print(&out)
        }
        PatientCommand::Erase { id, yes } => {
            let id = patient_id(&id)?;
            if !yes {
                return Err(CliError::usage(
                    "erasing a patient destroys every note and key irreversibly: add --yes to confirm",
                ));
            }
            let mut vault = context::unlock(g)?;
            vault.erase_patient(&id)?;
            if g.json {
                render::print_json(&serde_json::json!({"erased": true}))
            } else {
                render::print(
                    "Patient erased: their keys and records are destroyed in this vault.\n\
                     Backups taken before still contain them.\n",
                )
            }
        }
        PatientCommand::Show { id } => {
            let id = patient_id(&id)?;
            let p = context::unlock(g)?.again(|v| v.patient(&id))?;
            if g.json {
                return render::print_json(&render::patient_json(&p));
            }
            render::print(&format!(
                "id:         {}\nname:       {}\nbirth date: {}\nregistered: {}\nnotes:      {}\n",
                p.id.as_str(),
                or_dash(p.name.as_deref()),
                or_dash(p.birth_date.as_ref().map(|d| d.as_str())),
                render::rfc3339(p.created_at),
                p.notes
            ))
        }
    }
}

fn line(p: &Patient) -> String {
    format!(
        "{}\t{}\t{}\t{} notes\n",
        p.id.as_str(),
        or_dash(p.name.as_deref()),
        or_dash(p.birth_date.as_ref().map(|d| d.as_str())),
        p.notes
    )
}
