//! Users and their slots: listing and adding users, passphrases, the recovery key, and
//! revocation (docs/key-management.md, "Users, roles and revocation").

use carnet_storage::{Batch, Store};

use super::rotate_master::MasterRotation;
use super::Vault;
use crate::access::{check_user_name, Duty, Role, User};
use crate::access_log::Action;
use crate::envelope::{open_frame, seal_frame};
use crate::error::{integrity, ProblemKind};
use crate::keyring::{SlotSecret, RECOVERY_SLOT};
use crate::records::{space, JobSlot, UserV1, UsersV1, META_USERS};
use crate::recovery::RecoveryKey;
use crate::sealing::UsersRecord;
use crate::secret::Passphrase;
use crate::Error;

impl<S: Store> Vault<S> {
    /// The users record and its stored bytes.
    pub(super) fn load_users(&self) -> Result<(UsersV1, Vec<u8>), Error> {
        let stored = self
            .store
            .get(space::META, META_USERS)?
            .ok_or_else(|| integrity("users", ProblemKind::Missing, "missing"))?;
        let (users, _) = open_frame::<UsersRecord, UsersV1>(
            "users",
            &stored,
            self.keys.registry(),
            self.vault_id(),
            &(),
        )?;
        Ok((users, stored))
    }

    /// Adds to `b` the users record `users`, replacing `stored`.
    fn stage_users(&self, b: &mut Batch, users: &UsersV1, stored: Vec<u8>) -> Result<(), Error> {
        b.require(space::META, META_USERS, Some(stored));
        b.put(
            space::META,
            META_USERS,
            seal_frame::<UsersRecord, _>(self.keys.registry(), self.vault_id(), &(), users)?,
        );
        Ok(())
    }

    /// Every user and role (administrators and auditors).
    pub fn users(&self) -> Result<Vec<User>, Error> {
        let result = self.users_unlogged();
        self.logged_result(Action::UserList, None, result)
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
                    role: Role::from_code(u.role).ok_or_else(|| {
                        integrity("users", ProblemKind::Malformed, "unknown role")
                    })?,
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
        self.logged_result(Action::UserAdd, None, result)
    }

    fn add_user_unlogged(
        &mut self,
        name: &str,
        role: Role,
        passphrase: &Passphrase,
    ) -> Result<(), Error> {
        self.require(Duty::Administration)?;
        check_user_name(name)?;
        passphrase.check_new(name)?;
        if self.keys.has_slot(name) {
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
        self.stage_users(&mut b, &users, stored)?;
        self.store.commit(b)?;
        self.store.flush()?;
        let kdf = self
            .keys
            .slot_kdf(self.session.user())
            .ok_or(Error::UnknownUser)?;
        self.keys
            .put_slot(&self.store, name, SlotSecret::Passphrase(passphrase, kdf))
    }

    /// Gives the unlocking user's slot a fresh key pair protected by `new` (same KDF
    /// parameters) and seals the master to it. O(1). The old passphrase stops working, and a
    /// copy of the old slot opens nothing sealed afterwards.
    pub fn change_passphrase(&mut self, new: &Passphrase) -> Result<(), Error> {
        let result = self.change_passphrase_unlogged(new);
        self.logged_result(Action::KeyChangePassphrase, None, result)
    }

    fn change_passphrase_unlogged(&mut self, new: &Passphrase) -> Result<(), Error> {
        let user = self.session.user().to_string();
        new.check_new(&user)?;
        let kdf = self.keys.slot_kdf(&user).ok_or(Error::UnknownUser)?;
        self.keys
            .put_slot(&self.store, &user, SlotSecret::Passphrase(new, kdf))
    }

    /// Creates or replaces the recovery key (administrators) and returns it: show it once, then
    /// forget it. The old recovery key stops working. No copy is kept in the vault in any form
    /// that opens without it.
    pub fn rotate_recovery_key(&mut self) -> Result<RecoveryKey, Error> {
        let result = self.rotate_recovery_key_unlogged();
        self.logged_result(Action::KeyRotateRecovery, None, result)
    }

    fn rotate_recovery_key_unlogged(&mut self) -> Result<RecoveryKey, Error> {
        self.require(Duty::Administration)?;
        let key = RecoveryKey::random()?;
        self.keys
            .put_slot(&self.store, RECOVERY_SLOT, SlotSecret::Recovery(&key))?;
        Ok(key)
    }

    /// Whether the vault has a recovery key.
    pub fn has_recovery_key(&self) -> bool {
        self.keys.has_slot(RECOVERY_SLOT)
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
        self.logged_result(Action::UserRemove, None, result)
    }

    fn remove_user_unlogged(
        &mut self,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MasterRotation, Error> {
        self.require(Duty::Administration)?;
        if name == self.session.user() {
            return Err(Error::InvalidArgument(
                "you cannot remove yourself: another administrator must do it".into(),
            ));
        }
        let (mut users, stored) = self.load_users()?;
        let listed = users.users.iter().any(|u| u.name == name);
        let has_slot = self.keys.has_slot(name);
        let pending = self.revocation_target()?.is_some();
        if !listed && !has_slot && !pending {
            return Err(Error::InvalidArgument(
                "there is no user of that name".into(),
            ));
        }
        if listed {
            // 1. The role goes, with a job record saying that keys must still be renewed.
            users.users.retain(|u| u.name != name);
            let mut b = Batch::new();
            self.stage_users(&mut b, &users, stored)?;
            self.stage_revocation_job(&mut b)?;
            self.store.commit(b)?;
            self.store.flush()?;
        }
        let target = self
            .revocation_target()?
            .ok_or(Error::Internal("a revocation without its target"))?;
        if has_slot {
            // 2. The slot goes: the removed passphrase opens nothing in the vault's files. In
            //    format 2 the keyring records the revocation under way, authenticated.
            self.keys.remove_slot(&self.store, name, target)?;
        } else {
            self.keys.mark_revocation(&self.store, Some(target))?;
        }
        // 3. A new master key, sealed only to the remaining slots.
        let rotation = self.rotate_master(&mut |_, _| {})?;
        // 4. A new key version for every patient, used by all later writes.
        self.renew_patient_keys(progress)?;
        // 5. A new access-log key: later entries are closed to the removed user.
        self.keys.add_log_key_version(&self.store)?;
        // 6. Done: the keyring's record of it, then the job record.
        self.keys.mark_revocation(&self.store, None)?;
        self.finish_job(JobSlot::Revoke)?;
        Ok(rotation)
    }
}
