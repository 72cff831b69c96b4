//! `carnet verify`

use carnet_core::Checkpoint;

use crate::args::{Global, VerifyArgs};
use crate::context;
use crate::error::{CliError, Exit};
use crate::progress::Progress;
use crate::render;

pub fn run(g: &Global, a: VerifyArgs) -> Result<(), CliError> {
    let checkpoint = match &a.checkpoint {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                CliError::usage(format!("cannot read the checkpoint {}: {e}", f.display()))
            })?;
            Some(Checkpoint::parse(text.trim())?)
        }
        None => None,
    };
    let vault = context::unlock(g)?;
    let bar = Progress::new(g, "verifying", 0);
    let report =
        vault.verify_against(checkpoint.as_ref(), &mut |done, total| bar.set(done, total))?;
    bar.finish();
    let n = report.problems.len();
    if g.json {
        render::print_json(&render::verify_json(&report))?;
    } else {
        let mut out = String::new();
        for p in &report.problems {
            out.push_str(&format!("PROBLEM  {}: {}\n", p.location(), p.problem()));
        }
        for u in &report.unfinished {
            out.push_str(&format!(
                "UNFINISHED  {} (no new record may be written until it is)\n",
                render::unfinished_words(u)
            ));
        }
        if report.is_ok() {
            out.push_str(&format!(
                "OK: {} records checked, no problem found.\n",
                report.records_checked
            ));
        } else {
            out.push_str(&format!(
                "FAILED: {} records checked, {n} problem(s) found.\n",
                report.records_checked
            ));
        }
        render::print(&out)?;
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(
            CliError::new(Exit::Integrity, format!("verify found {n} problem(s)"))
                .hint("restore the vault from a backup taken before the damage"),
        )
    }
}
