//! `carnet key status|rotate-master|rotate-patient|change-passphrase`

use std::time::Instant;

use carnet_core::{KdfParams, MasterRotation, PatientRotation, Patients};
use serde_json::json;

use super::patient_id;
use crate::args::{Global, KeyCommand};
use crate::context;
use crate::error::CliError;
use crate::progress::Progress;
use crate::render;

fn master_json(r: &MasterRotation) -> serde_json::Value {
    json!({
        "from_epoch": r.from_epoch,
        "to_epoch": r.to_epoch,
        "keys_rewrapped": r.keys_rewrapped,
        "slots": r.slots,
        "notes_rewritten": r.notes_rewritten,
        "resumed": r.resumed,
    })
}

fn patient_json(r: &PatientRotation) -> serde_json::Value {
    json!({
        "patients": r.patients,
        "records_rewritten": r.records_rewritten,
        "keys_destroyed": r.keys_destroyed,
        "resumed": r.resumed,
    })
}

pub fn run(g: &Global, c: KeyCommand) -> Result<(), CliError> {
    match c {
        KeyCommand::Status => {
            let vault = context::unlock(g)?;
            let s = vault.key_status()?;
            if g.json {
                return render::print_json(&render::key_status_json(&s));
            }
            let mut out = format!(
                "format:         {}\nmaster epoch:   {}\nkey derivation: Argon2id, {} MiB, {} passes, {} lanes\nkey slots:      {}\n",
                s.format,
                s.epoch,
                s.kdf.memory_mib(),
                s.kdf.iterations(),
                s.kdf.parallelism(),
                s.slots
            );
            if s.format < 2 {
                out += "                (format 1: `carnet key upgrade` closes the holes format 2 closes)\n";
            }
            if s.legacy_slots > 0 {
                out += &format!(
                    "legacy slots:   {} (carried over from format 1; each is upgraded at its user's next unlock, and until then is open to master-key injection by whoever can write the storage)\n",
                    s.legacy_slots
                );
            }
            if s.slots_behind > 0 {
                out += &format!(
                    "slots behind:   {} (their users have not unlocked since the last revocation; until they do, the revoked user could still inject a master key against them)\n",
                    s.slots_behind
                );
            }
            for (e, n) in &s.keys_per_epoch {
                out += &format!("epoch {e}:        {n} wrapped keys\n");
            }
            for (v, n) in &s.records_per_patient_key_version {
                out += &format!("patient key v{v}: {n} records\n");
            }
            if s.unfinished.is_empty() {
                out += "unfinished:     none\n";
            }
            for u in &s.unfinished {
                out += &format!("UNFINISHED:     {}\n", render::unfinished_words(u));
            }
            render::print(&out)
        }
        KeyCommand::RotateMaster { plan } => {
            let mut vault = context::unlock(g)?;
            if plan {
                let p = vault.plan_rotate_master()?;
                return if g.json {
                    render::print_json(&master_json(&p))
                } else {
                    render::print(&format!(
                        "Would rotate the master key from epoch {} to {}{}: re-wrap {} keys and re-seal {} key slot(s); no note is rewritten.\n",
                        p.from_epoch,
                        p.to_epoch,
                        if p.resumed { " (finishing an interrupted rotation)" } else { "" },
                        p.keys_rewrapped,
                        p.slots
                    ))
                };
            }
            let started = Instant::now();
            let bar = Progress::new(g, "re-wrapping", 0);
            let r = vault.rotate_master(&mut |d, t| bar.set(d, t))?;
            bar.finish();
            if g.json {
                return render::print_json(&master_json(&r));
            }
            render::print(&format!(
                "Master key rotated{}: epoch {} → {}; {} wrapped keys re-wrapped, {} key slot(s) re-sealed, 0 notes rewritten, in {:.2} s. The old master key is destroyed.\n",
                if r.resumed { " (finished an interrupted rotation)" } else { "" },
                r.from_epoch,
                r.to_epoch,
                r.keys_rewrapped,
                r.slots,
                started.elapsed().as_secs_f64()
            ))
        }
        KeyCommand::RotatePatient { id, all, plan } => {
            let id = id.as_deref().map(patient_id).transpose()?;
            let which = match (&id, all) {
                (Some(id), false) => Patients::One(id),
                _ => Patients::All,
            };
            let mut vault = context::unlock(g)?;
            if plan {
                let p = vault.plan_rotate_patients(which)?;
                return if g.json {
                    render::print_json(&patient_json(&p))
                } else {
                    render::print(&format!(
                        "Would rotate {} patient key(s){}: re-encrypt about {} records.\n",
                        p.patients,
                        if p.resumed {
                            " (finishing an interrupted rotation)"
                        } else {
                            ""
                        },
                        p.records_rewritten
                    ))
                };
            }
            let started = Instant::now();
            let bar = Progress::new(g, "rotating", 0);
            let r = vault.rotate_patients(which, &mut |d, t| bar.set(d, t))?;
            bar.finish();
            if g.json {
                return render::print_json(&patient_json(&r));
            }
            render::print(&format!(
                "Patient keys rotated{}: {} patient(s), {} records re-encrypted, {} old key version(s) destroyed, in {:.2} s.\n",
                if r.resumed { " (finished an interrupted rotation)" } else { "" },
                r.patients,
                r.records_rewritten,
                r.keys_destroyed,
                started.elapsed().as_secs_f64()
            ))
        }
        KeyCommand::RotateRecovery { recovery_key_out } => {
            let mut vault = context::unlock(g)?;
            let key = vault.rotate_recovery_key()?;
            let shown = context::deliver_recovery_key(&key, recovery_key_out.as_deref())?;
            if g.json {
                return render::print_json(&json!({
                    "recovery_key": if recovery_key_out.is_some() { None } else { Some(key.to_text().to_string()) },
                }));
            }
            render::print(&format!(
                "Recovery key replaced: the old one no longer opens this vault.\n{shown}"
            ))
        }
        KeyCommand::Upgrade => {
            let mut vault = context::unlock(g)?;
            let bar = Progress::new(g, "recording", 0);
            let r = vault.upgrade(&mut |d, t| bar.set(d, t))?;
            bar.finish();
            let recovery_legacy = vault.has_recovery_key() && r.legacy_slots > 0;
            if g.json {
                return render::print_json(&json!({
                    "from_format": r.from_format,
                    "to_format": r.to_format,
                    "patients": r.patients,
                    "legacy_slots": r.legacy_slots,
                    "resumed": r.resumed,
                }));
            }
            if r.from_format >= 2 && !r.resumed {
                return render::print(&format!(
                    "The vault is already in format 2 ({} legacy slot(s) left).\n",
                    r.legacy_slots
                ));
            }
            let mut out = format!(
                "Vault upgraded to format 2: the state of {} patient(s) is recorded in the access log, and your key slot is upgraded.\n",
                r.patients
            );
            if r.legacy_slots > 0 {
                out += &format!(
                    "{} other slot(s) are upgraded at their users' next unlock; until then whoever can write the storage could still inject a master key against them, as in format 1 (`carnet key status` counts them).\n",
                    r.legacy_slots
                );
            }
            if recovery_legacy {
                out += "The recovery key's slot is upgraded when it is next used, or now with `carnet key rotate-recovery`.\n";
            }
            render::print(&out)
        }
        KeyCommand::ChangePassphrase {
            new_passphrase_file,
            kdf_memory_mib,
            kdf_iterations,
            kdf_parallelism,
        } => {
            let mut vault = context::unlock(g)?;
            let kdf = if kdf_memory_mib.is_some()
                || kdf_iterations.is_some()
                || kdf_parallelism.is_some()
            {
                let now = vault.kdf_params(&g.user).unwrap_or_default();
                Some(KdfParams::new(
                    kdf_memory_mib.unwrap_or(now.memory_mib()),
                    kdf_iterations.unwrap_or(now.iterations()),
                    kdf_parallelism.unwrap_or(now.parallelism()),
                )?)
            } else {
                None
            };
            let new = context::new_passphrase(new_passphrase_file.as_deref(), &g.user)?;
            let bar = Progress::new(g, "renewing", 0);
            let r = vault.change_passphrase_with(&new, kdf, &mut |d, t| bar.set(d, t))?;
            bar.finish();
            // Set only when this finished an interrupted replacement of the recovery key.
            let recovery_key = r.recovery_key.as_ref().map(|k| k.to_text().to_string());
            let shown = match (&r.recovery_key, g.json) {
                (Some(key), false) => Some(context::deliver_recovery_key(key, None)?),
                _ => None,
            };
            let r = r.rotation;
            let set = vault.kdf_params(&g.user).unwrap_or_default();
            if g.json {
                render::print_json(&json!({
                    "changed": true,
                    "epoch": r.to_epoch,
                    "recovery_key": recovery_key,
                    "kdf": {"memory_mib": set.memory_mib(), "iterations": set.iterations(), "parallelism": set.parallelism()},
                }))
            } else {
                let mut out = format!(
                    "Passphrase changed: the old passphrase no longer opens this vault, the master key is rotated \
                     (epoch {}), and every patient has a new key for all later notes. Argon2id: {} MiB, {} passes, {} lanes.\n",
                    r.to_epoch,
                    set.memory_mib(),
                    set.iterations(),
                    set.parallelism()
                );
                if let Some(shown) = shown {
                    out.push_str("It also finished replacing the recovery key:\n");
                    out.push_str(&shown);
                }
                render::print(&out)
            }
        }
    }
}
