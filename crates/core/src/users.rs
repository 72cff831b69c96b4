//! Users and roles: each user has a key slot (their own passphrase) and a role, kept in an
//! encrypted users record. Roles are enforced by this library; any slot holder can in principle
//! derive the master key (docs/threat-model.md).

use carnet_storage::{Batch, Store};

use crate::envelope::{self, Kind};
use crate::frame;
use crate::keyring::{Slot, SlotSecret, RECOVERY_SLOT};
use crate::keystore::ROOT_DOC;
use crate::lifecycle::MasterRotation;
use crate::records::{space, UserV1, UsersV1, META_USERS};
use crate::recovery::RecoveryKey;
use crate::secret::Passphrase;
use crate::vault::{integrity, open_frame, REGISTRY_KEY_VERSION};
use crate::{Error, Vault};

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything a clinician does, plus users and keys.
    Admin,
    /// Patients, notes, import, search, export.
    Clinician,
    /// The access log only (and `verify`).
    Auditor,
}

impl Role {
    pub(crate) fn code(self) -> u8 {
        match self {
            Role::Admin => 1,
            Role::Clinician => 2,
            Role::Auditor => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Role> {
        Some(match c {
            1 => Role::Admin,
            2 => Role::Clinician,
            3 => Role::Auditor,
            _ => return None,
        })
    }

    /// The role's name: `admin`, `clinician` or `auditor`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clinician => "clinician",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Role, Error> {
        match s {
            "admin" => Ok(Role::Admin),
            "clinician" => Ok(Role::Clinician),
            "auditor" => Ok(Role::Auditor),
            _ => Err(Error::InvalidArgument(
                "a role is admin, clinician or auditor".into(),
            )),
        }
    }
}

/// A user of the vault. Its `Debug` output shows the role only (names are personal data).
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The user's name (what `--user` takes).
    pub name: String,
    /// What the user may do.
    pub role: Role,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What work a permission check is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Duty {
    /// Reading or writing patients and notes.
    Clinical,
    /// Users and keys.
    Administration,
    /// Listing users, reading the access log.
    Audit,
}

/// Checks a user name: 1 to 64 characters, no control characters, no surrounding spaces.
pub(crate) fn check_user_name(name: &str) -> Result<(), Error> {
    let n = name.chars().count();
    if n == 0 || n > 64 || name.chars().any(char::is_control) || name.trim() != name {
        return Err(Error::InvalidArgument(
            "a user name is 1 to 64 characters, without control characters or surrounding spaces"
                .into(),
        ));
    }
    Ok(())
}

/// Seals the users record.
pub(crate) fn seal_users(
    registry_key: &crate::secret::SecretKey,
    vault_id: &[u8; 16],
    users: &UsersV1,
) -> Result<Vec<u8>, Error> {
    envelope::seal(
        Kind::Users,
        REGISTRY_KEY_VERSION,
        registry_key,
        vault_id,
        META_USERS,
        &frame::encode(users, &[])?,
    )
}

impl<S: Store> Vault<S> {
    /// The role of the user who unlocked the vault.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The user who unlocked the vault.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Fails with [`Error::NotPermitted`] unless the unlocking user's role allows `duty`.
    pub(crate) fn require(&self, duty: Duty) -> Result<(), Error> {
        let ok = match duty {
            Duty::Clinical => matches!(self.role, Role::Admin | Role::Clinician),
            Duty::Administration => self.role == Role::Admin,
            Duty::Audit => matches!(self.role, Role::Admin | Role::Auditor),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::NotPermitted(self.role.name()))
        }
    }

    pub(crate) fn load_users(&self) -> Result<(UsersV1, Vec<u8>), Error> {
        let stored = self
            .store
            .get(space::META, META_USERS)?
            .ok_or_else(|| integrity("users", "missing"))?;
        let (users, _) = open_frame::<UsersV1>(
            "users",
            &stored,
            Kind::Users,
            &self.registry_key,
            self.vault_id(),
            META_USERS,
        )?;
        Ok((users, stored))
    }

    /// Every user and role (administrators and auditors).
    pub fn users(&self) -> Result<Vec<User>, Error> {
        let result = self.users_unlogged();
        self.logged_result("user list", None, result)
    }

    fn users_unlogged(&self) -> Result<Vec<User>, Error> {
        self.require(Duty::Audit)?;
        let (users, _) = self.load_users()?;
        users
            .users
            .iter()
            .map(|u| {
                Ok(User {
                    name: u.name.clone(),
                    role: Role::from_code(u.role)
                        .ok_or_else(|| integrity("users", "unknown role"))?,
                })
            })
            .collect()
    }

    /// Adds a user with their own key slot (administrators). Nothing is re-encrypted: the
    /// master key is sealed to the new slot's public key.
    pub fn add_user(
        &mut self,
        name: &str,
        role: Role,
        passphrase: &Passphrase,
    ) -> Result<(), Error> {
        let result = self.add_user_unlogged(name, role, passphrase);
        self.logged_result("user add", None, result)
    }

    fn add_user_unlogged(
        &mut self,
        name: &str,
        role: Role,
        passphrase: &Passphrase,
    ) -> Result<(), Error> {
        self.require(Duty::Administration)?;
        check_user_name(name)?;
        if !passphrase.is_strong_enough() {
            return Err(Error::InvalidArgument(format!(
                "the passphrase is too short: use at least {} characters",
                Passphrase::MIN_CHARS
            )));
        }
        if self.keyring.slot(name).is_some() {
            return Err(Error::InvalidArgument(
                "a user with this name already exists".into(),
            ));
        }
        // The role first, then the slot: a crash in between leaves a role without a slot,
        // which opens nothing; adding the user again completes it.
        let (mut users, stored) = self.load_users()?;
        users.users.retain(|u| u.name != name);
        users.users.push(UserV1 {
            name: name.to_string(),
            role: role.code(),
        });
        let mut b = Batch::new();
        b.require(space::META, META_USERS, Some(stored));
        b.put(
            space::META,
            META_USERS,
            seal_users(&self.registry_key, self.vault_id(), &users)?,
        );
        self.store.commit(b)?;
        self.store.flush()?;
        let kdf = self
            .keyring
            .slot(&self.user)
            .ok_or(Error::UnknownUser)?
            .kdf();
        self.put_slot(name, SlotSecret::Passphrase(passphrase, kdf))
    }

    /// Writes a new slot named `name` opened by `secret`, replacing any slot of that name: the
    /// master of the current epoch (and of a pending one) sealed to it, the keyring replaced.
    pub(crate) fn put_slot(&mut self, name: &str, secret: SlotSecret<'_>) -> Result<(), Error> {
        let vault_id = *self.vault_id();
        let mut slot = Slot::create(&vault_id, name, secret, self.keyring.epoch, &self.master)?;
        if let Some((e, m)) = &self.pending {
            slot.add_seal(&vault_id, *e, m)?;
        }
        let mut keyring = self.keyring.clone();
        keyring.add_slot(slot);
        self.store
            .replace_doc(ROOT_DOC, &keyring.encode(&self.master))?;
        self.keyring = keyring;
        Ok(())
    }

    /// Creates or replaces the recovery key (administrators) and returns it: show it once, then
    /// forget it. The old recovery key stops working. No copy is kept in the vault in any form
    /// that opens without it.
    pub fn rotate_recovery_key(&mut self) -> Result<RecoveryKey, Error> {
        let result = self.rotate_recovery_key_unlogged();
        self.logged_result("key rotate-recovery", None, result)
    }

    fn rotate_recovery_key_unlogged(&mut self) -> Result<RecoveryKey, Error> {
        self.require(Duty::Administration)?;
        let key = RecoveryKey::random()?;
        self.put_slot(RECOVERY_SLOT, SlotSecret::Recovery(&key))?;
        Ok(key)
    }

    /// Whether the vault has a recovery key.
    pub fn has_recovery_key(&self) -> bool {
        self.keyring.slot(RECOVERY_SLOT).is_some()
    }

    /// Revokes a user (administrators): the slot is removed, the master key rotated, and every
    /// patient gets a new key version that all later writes use, so a copy of the vault taken
    /// before, opened with the removed user's passphrase, opens nothing written afterwards.
    /// Notes already written are not re-encrypted (the user could read them). Resumable: if
    /// interrupted, run it again. A name that is not (or no longer) a user is
    /// [`Error::InvalidArgument`].
    pub fn remove_user(
        &mut self,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MasterRotation, Error> {
        let result = self.remove_user_unlogged(name, progress);
        self.logged_result("user remove", None, result)
    }

    fn remove_user_unlogged(
        &mut self,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MasterRotation, Error> {
        self.require(Duty::Administration)?;
        if name == self.user {
            return Err(Error::InvalidArgument(
                "you cannot remove yourself: another administrator must do it".into(),
            ));
        }
        let (mut users, stored) = self.load_users()?;
        let listed = users.users.iter().any(|u| u.name == name);
        let has_slot = self.keyring.slot(name).is_some();
        let pending = self.revocation_pending()?;
        if !listed && !has_slot && !pending {
            return Err(Error::InvalidArgument(
                "there is no user of that name".into(),
            ));
        }
        if listed {
            // 1. The role goes, with a job record saying that keys must still be renewed.
            users.users.retain(|u| u.name != name);
            let mut b = Batch::new();
            b.require(space::META, META_USERS, Some(stored));
            b.put(
                space::META,
                META_USERS,
                seal_users(&self.registry_key, self.vault_id(), &users)?,
            );
            self.stage_revocation_job(&mut b)?;
            self.store.commit(b)?;
            self.store.flush()?;
        }
        if has_slot {
            // 2. The slot goes: the removed passphrase opens nothing in the vault's files.
            let mut keyring = self.keyring.clone();
            keyring.remove_slot(name)?;
            self.store
                .replace_doc(ROOT_DOC, &keyring.encode(&self.master))?;
            self.keyring = keyring;
        }
        // 3. A new master key, sealed only to the remaining slots.
        let rotation = self.rotate_master(&mut |_, _| {})?;
        // 4. A new key version for every patient, used by all later writes.
        self.renew_patient_keys(progress)?;
        // 5. A new access-log key: later entries are closed to the removed user.
        self.add_log_key_version()?;
        self.finish_revocation_job()?;
        Ok(rotation)
    }
}
