//! `carnet init`

use carnet_core::{KdfParams, Vault};
use carnet_storage::SledStore;

use crate::args::{Global, InitArgs};
use crate::context;
use crate::error::CliError;
use crate::render;

pub fn run(g: &Global, a: InitArgs) -> Result<(), CliError> {
    let kdf = KdfParams::new(a.kdf_memory_mib, a.kdf_iterations, a.kdf_parallelism)?;
    let dir = context::vault_dir(g)?;
    if SledStore::exists(&dir) {
        if carnet_core::is_vault(&SledStore::documents(&dir))? {
            return Err(
                CliError::failure(format!("{} already holds a vault", dir.display()))
                    .hint("nothing was changed; use another --vault DIR for a new vault"),
            );
        }
        return Err(CliError::failure(format!(
            "{} holds an incomplete vault (an interrupted init?)",
            dir.display()
        ))
        .hint("it holds no data: remove the directory and run init again"));
    }
    let pass = context::new_passphrase(g.passphrase_file.as_deref(), &a.admin)?;
    if kdf.is_below_default() && !g.quiet {
        eprintln!(
            "carnet: warning: key derivation below the recommended 64 MiB / 3 passes / 4 lanes; \
             use these settings only for tests or very weak hardware"
        );
    }
    let store = SledStore::create(&dir)?;
    let mut vault = Vault::create(store, &a.admin, &pass, kdf)?;
    let recovery = vault.rotate_recovery_key()?;
    // This machine remembers the new vault from its first state on.
    if let Some(m) = crate::state::Memory::of(vault.id(), &dir) {
        if let Err(why) = vault
            .durable_head()
            .map_err(|e| e.to_string())
            .and_then(|h| {
                // Both slots it made hold the keyring key (format 2).
                let mut seen = context::seen_now(&vault);
                if vault.keyring_key_version() > 0 {
                    seen.keyed.insert(
                        crate::state::slot_tag(&vault.id(), "\0recovery"),
                        vault.keyring_key_version(),
                    );
                }
                m.remember(&h, &seen)
            })
        {
            eprintln!("carnet: warning: {why}: this machine cannot remember the vault's state, so a rollback of it would go unnoticed here");
        }
    }
    let shown = context::deliver_recovery_key(&recovery, a.recovery_key_out.as_deref())?;
    if g.json {
        render::print_json(&serde_json::json!({
            "vault": dir.display().to_string(),
            "recovery_key": if a.recovery_key_out.is_some() { None } else { Some(recovery.to_text().to_string()) },
            "user": a.admin,
            "kdf": {"memory_mib": kdf.memory_mib(), "iterations": kdf.iterations(), "parallelism": kdf.parallelism()},
        }))
    } else {
        render::print(&format!(
            "Created a vault at {} for user {}.\nKeep the passphrase safe: without it (or the recovery key), nothing in the vault can be read.\n{shown}",
            dir.display(),
            a.admin
        ))
    }
}
