//! `carnet init`

use carnet_core::{KdfParams, Vault};
use carnet_storage::{AnyStore, Location, PgStore, SledStore};

use crate::args::{Global, InitArgs};
use crate::context;
use crate::error::CliError;
use crate::render;

pub fn run(g: &Global, a: InitArgs) -> Result<(), CliError> {
    let kdf = KdfParams::new(a.kdf_memory_mib, a.kdf_iterations, a.kdf_parallelism)?;
    let location = context::vault_location(g)?;
    if a.tables_only {
        let Location::Postgres(address) = &location else {
            return Err(CliError::usage(
                "--tables-only is for a vault on PostgreSQL (--vault postgresql://…)",
            ));
        };
        PgStore::prepare_tables(address)?;
        if g.json {
            return render::print_json(&serde_json::json!({"tables": "ready"}));
        }
        return if g.quiet {
            Ok(())
        } else {
            render::print("Carnet's tables are ready in this database (no vault was created).\n")
        };
    }
    let already = || {
        CliError::failure(format!("{} already holds a vault", location.describe()))
            .hint("nothing was changed; use another --vault DIR|URI for a new vault")
    };
    match &location {
        Location::Dir(dir) if SledStore::exists(dir) => {
            if carnet_core::is_vault(&SledStore::documents(dir))? {
                return Err(already());
            }
            return Err(CliError::failure(format!(
                "{} holds an incomplete vault (an interrupted init?)",
                dir.display()
            ))
            .hint("it holds no data: remove the directory and run init again"));
        }
        Location::Postgres(address) if PgStore::exists_at(address)? => return Err(already()),
        _ => {}
    }
    let pass = context::new_passphrase(g.passphrase_file.as_deref(), &a.admin)?;
    if kdf.is_below_default() && !g.quiet {
        eprintln!(
            "carnet: warning: key derivation below the recommended 64 MiB / 3 passes / 4 lanes; \
             use these settings only for tests or very weak hardware"
        );
    }
    let store = match &location {
        Location::Dir(dir) => AnyStore::Sled(SledStore::create(dir)?),
        // One transaction: a vault is in the database whole, or not at all.
        Location::Postgres(address) => {
            AnyStore::Postgres(PgStore::begin_create(address).map_err(|e| match e {
                carnet_storage::StoreError::NotEmpty(_) => already(),
                other => other.into(),
            })?)
        }
    };
    let mut vault = Vault::create(store, &a.admin, &pass, kdf)?;
    let recovery = vault.rotate_recovery_key()?;
    if let AnyStore::Postgres(pg) = vault.store() {
        pg.finish()?;
    }
    // This machine remembers the new vault from its first state on.
    if let Some(m) = crate::state::Memory::of(vault.id(), &location) {
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
            "vault": location.describe(),
            "recovery_key": if a.recovery_key_out.is_some() { None } else { Some(recovery.to_text().to_string()) },
            "user": a.admin,
            "kdf": {"memory_mib": kdf.memory_mib(), "iterations": kdf.iterations(), "parallelism": kdf.parallelism()},
        }))
    } else {
        render::print(&format!(
            "Created a vault at {} for user {}.\nKeep the passphrase safe: without it (or the recovery key), nothing in the vault can be read.\n{shown}",
            location.describe(),
            a.admin
        ))
    }
}
