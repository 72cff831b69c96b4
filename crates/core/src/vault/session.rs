//! Who unlocked the vault and with which role; every operation checks its duty here first.

use carnet_storage::Store;

use super::Vault;
use crate::access::{Duty, Role};
use crate::Error;

/// The user a vault was unlocked as.
pub(super) struct Session {
    user: String,
    role: Role,
    via_recovery: bool,
}

impl Session {
    /// `user`, with `role`, unlocked with the recovery key or not.
    pub(super) fn new(user: &str, role: Role, via_recovery: bool) -> Self {
        Session {
            user: user.to_string(),
            role,
            via_recovery,
        }
    }

    pub(super) fn user(&self) -> &str {
        &self.user
    }

    /// Whether the recovery key (not a passphrase) unlocked the vault.
    pub(super) fn via_recovery(&self) -> bool {
        self.via_recovery
    }
}

impl<S: Store> Vault<S> {
    /// The role of the user who unlocked the vault.
    pub fn role(&self) -> Role {
        self.session.role
    }

    /// The user who unlocked the vault.
    pub fn user(&self) -> &str {
        &self.session.user
    }

    /// Whether the vault was unlocked with the recovery key (acting as [`Vault::user`]).
    pub fn via_recovery_key(&self) -> bool {
        self.session.via_recovery
    }

    /// Fails with [`Error::NotPermitted`] unless the unlocking user's role allows `duty`.
    pub(super) fn require(&self, duty: Duty) -> Result<(), Error> {
        if duty.allowed_for(self.session.role) {
            Ok(())
        } else {
            Err(Error::NotPermitted(self.session.role.name()))
        }
    }
}
