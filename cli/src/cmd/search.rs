//! `carnet search`

use serde_json::Value;

use super::patient_id;
use crate::args::{Global, SearchArgs};
use crate::context;
use crate::error::CliError;
use crate::render;

pub fn run(g: &Global, a: SearchArgs) -> Result<(), CliError> {
    if a.text.is_empty() {
        return Err(CliError::usage("the search text is empty"));
    }
    let patient = a.patient.as_deref().map(patient_id).transpose()?;
    let hits = context::unlock(g)?.again(|v| v.search(&a.text, patient.as_ref()))?;
    if g.json {
        return render::print_json(&Value::Array(
            hits.iter().map(carnet_json::search_hit_json).collect(),
        ));
    }
    let mut out = String::new();
    for h in &hits {
        out.push_str(&format!(
            "{}\t{}\t{}\n",
            h.patient_id.as_str(),
            h.note_id,
            h.snippet
        ));
    }
    if hits.is_empty() && !g.quiet {
        eprintln!("No note matches.");
    }
    render::print(&out)
}
