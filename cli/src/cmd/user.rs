//! `carnet user add|list|remove`

use carnet_core::Role;
use serde_json::{json, Value};

use crate::args::{Global, UserCommand};
use crate::context;
use crate::error::CliError;
use crate::progress::Progress;
use crate::render;

pub fn run(g: &Global, c: UserCommand) -> Result<(), CliError> {
    match c {
        UserCommand::Add {
            name,
            role,
            new_passphrase_file,
        } => {
            let role = Role::parse(&role)?;
            let mut vault = context::unlock(g)?;
            if vault.role() != Role::Admin {
                return Err(carnet_core::Error::NotPermitted(vault.role().name()).into());
            }
            let pass = context::new_passphrase(new_passphrase_file.as_deref(), &name)?;
            vault.add_user(&name, role, &pass)?;
            if g.json {
                render::print_json(&json!({"name": name, "role": role.name()}))
            } else {
                render::print(&format!(
                    "User {name} added with the {} role.\n",
                    role.name()
                ))
            }
        }
        UserCommand::List => {
            let vault = context::unlock(g)?;
            let users = vault.users()?;
            if g.json {
                return render::print_json(&Value::Array(
                    users
                        .iter()
                        .map(|u| json!({"name": u.name, "role": u.role.name()}))
                        .collect(),
                ));
            }
            let mut out = String::new();
            for u in &users {
                out.push_str(&format!("{}\t{}\n", u.name, u.role.name()));
            }
            render::print(&out)
        }
        UserCommand::Remove {
            name,
            recovery_key_out,
        } => {
            let mut vault = context::unlock(g)?;
            let bar = Progress::new(g, "renewing", 0);
            let r = vault.remove_user(&name, &mut |d, t| bar.set(d, t))?;
            bar.finish();
            let shown = match &r.recovery_key {
                Some(key) => Some(context::deliver_recovery_key(
                    key,
                    recovery_key_out.as_deref(),
                )?),
                None => None,
            };
            if g.json {
                let key = match (&r.recovery_key, &recovery_key_out) {
                    (Some(k), None) => Some(k.to_text().to_string()),
                    _ => None,
                };
                render::print_json(&json!({
                    "removed": name,
                    "epoch": r.rotation.to_epoch,
                    "recovery_key_replaced": r.recovery_key.is_some(),
                    "recovery_key": key,
                }))
            } else {
                let mut out = format!(
                    "User {name} removed: their key slot is gone, the master key is rotated (epoch {}), \
                     and every patient has a new key for all later notes.\n",
                    r.rotation.to_epoch
                );
                if let Some(shown) = shown {
                    out.push_str(
                        "They were an administrator: the recovery key is replaced (the old one no longer opens this vault).\n",
                    );
                    out.push_str(&shown);
                }
                render::print(&out)
            }
        }
    }
}
