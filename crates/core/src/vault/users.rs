//! Users and their slots: listing and adding users, passphrases, the recovery key, and
//! revocation (docs/key-management.md, "Users, roles and revocation").

use carnet_storage::{Batch, Store};

use super::fence::KeyOp;
use super::rotate_master::MasterRotation;
use super::Vault;
use crate::access::{check_user_name, Duty, Role, User};
use crate::access_log::Action;
use crate::envelope::{
    decode_meta, malformed_payload, open_record, parse_error, seal_as, seal_frame, seal_frame_as,
    Sealed, FORMAT_1, FORMAT_2,
};
use crate::error::{integrity, ProblemKind};
use crate::keyring::KdfParams;
use crate::keyring::{SlotSecret, RECOVERY_SLOT};
use crate::keys::SealingKey;
use crate::records::{
    space, JobSlot, UserV1, UsersV1, UsersV2, META_REGISTRY, META_USERS, REVOKED_AN_ADMIN,
};
use crate::recovery::RecoveryKey;
use crate::sealing::{JobRecord, RegistryRecord, UsersRecord};
use crate::secret::Passphrase;
use crate::Error;

impl<S: Store> Vault<S> {
    /// [`Vault::load_users_serial`] before a change of the users record: if the record is one
    /// serial ahead of the keyring (a crash between the two writes), the keyring catches up
    /// first, so that the changed record is one ahead again, never two.
    pub(super) fn load_users_for_change(&mut self) -> Result<(UsersV1, u64, Vec<u8>), Error> {
        let (users, serial, stored) = self.load_users_serial()?;
        self.keys.catch_up_users_serial(&self.store, serial)?;
        Ok((users, serial, stored))
    }

    /// The users record and its stored bytes.
    pub(super) fn load_users(&self) -> Result<(UsersV1, Vec<u8>), Error> {
        self.load_users_serial().map(|(u, _, s)| (u, s))
    }

    /// The users record, its serial number (format 2; 0 in format 1) and its stored bytes.
    ///
    /// In format 2 the keyring holds the serial of the users record: a record of an older
    /// serial (put back from an older copy) is a rollback. The record is written before the
    /// keyring, so it may be one ahead of it (a crash in between).
    pub(super) fn load_users_serial(&self) -> Result<(UsersV1, u64, Vec<u8>), Error> {
        let stored = self
            .store
            .get(space::META, META_USERS)?
            .ok_or_else(|| integrity("users", ProblemKind::Missing, "missing"))?;
        let (format, plain) = open_record::<UsersRecord>(
            "users",
            &stored,
            self.registry_key_of("users", &stored)?,
            self.vault_id(),
            &(),
        )?;
        let (users, serial) = if format == FORMAT_1 {
            (decode_meta::<UsersV1>("users", &plain)?, None)
        } else if format != FORMAT_2 {
            return Err(malformed_payload("users"));
        } else {
            let u = decode_meta::<UsersV2>("users", &plain)?;
            (UsersV1 { users: u.users }, Some(u.serial))
        };
        if self.keys.format() >= 2 {
            let want = self.keys.users_serial();
            let ok = serial.is_some_and(|s| s == want || s == want.saturating_add(1));
            if !ok {
                return Err(integrity(
                    "users",
                    ProblemKind::RolledBack,
                    format!(
                        "serial {} where the keyring holds {want}: an older users record was put back",
                        serial.map_or_else(|| "none (format 1)".to_string(), |s| s.to_string())
                    ),
                ));
            }
        }
        Ok((users, serial.unwrap_or(0), stored))
    }

    /// Adds to `b` the users record `users`, replacing `stored` (of `serial`); returns the new
    /// record's serial, for [`Keychain::set_users_serial`] once the batch is committed.
    fn stage_users(
        &self,
        b: &mut Batch,
        users: &UsersV1,
        serial: u64,
        stored: Vec<u8>,
    ) -> Result<u64, Error> {
        self.stage_users_as(b, users, serial, stored, self.keys.format())
    }

    /// [`Vault::stage_users`] in `format` (an upgrade writes format 2 before the keyring is).
    pub(super) fn stage_users_as(
        &self,
        b: &mut Batch,
        users: &UsersV1,
        serial: u64,
        stored: Vec<u8>,
        format: u16,
    ) -> Result<u64, Error> {
        b.require(space::META, META_USERS, Some(stored));
        // The record is at the keyring's serial (callers catch the keyring up first).
        let next = serial.max(self.keys.users_serial()) + 1;
        let sealed = if format >= 2 {
            let record = UsersV2 {
                serial: next,
                users: users.users.clone(),
            };
            seal_frame_as::<UsersRecord, _>(
                2,
                self.keys.registry()?,
                self.vault_id(),
                &(),
                &record,
            )?
        } else {
            seal_frame::<UsersRecord, _>(self.keys.registry()?, self.vault_id(), &(), users)?
        };
        b.put(space::META, META_USERS, sealed);
        Ok(next)
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
        let result = self.require(Duty::Administration).and_then(|()| {
            self.alone(KeyOp::AddUser, |v| {
                v.add_user_unlogged(name, role, passphrase)
            })
        });
        let logged = self.logged_about(Action::UserAdd, name, result);
        self.end_key_operation(logged)
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
        let (mut users, serial, stored) = self.load_users_for_change()?;
        users.users.retain(|u| u.name != name);
        users.users.push(UserV1 {
            name: name.to_string(),
            role: role.code(),
        });
        let mut b = Batch::new();
        let serial = self.stage_users(&mut b, &users, serial, stored)?;
        self.require_fence(&mut b);
        self.store.commit(b)?;
        self.store.flush()?;
        // Written with the slot's keyring below.
        self.keys.set_users_serial(serial);
        let kdf = self
            .keys
            .slot_kdf(self.session.user())
            .ok_or(Error::UnknownUser)?;
        self.keys
            .put_slot(&self.store, name, SlotSecret::Passphrase(passphrase, kdf))
    }

    /// Changes the unlocking user's passphrase, keeping the slot's KDF settings: see
    /// [`Vault::change_passphrase_with`].
    pub fn change_passphrase(&mut self, new: &Passphrase) -> Result<(), Error> {
        self.change_passphrase_with(new, None, &mut |_, _| {})
            .map(|_| ())
    }

    /// Changes the unlocking user's passphrase, and with `kdf` its Argon2id settings (raised,
    /// or any within range). A passphrase change is the revocation of the old passphrase: the
    /// slot gets a fresh key pair protected by `new`, the master key is rotated, every patient
    /// gets a new key version, and (format 2) the log, registry and keyring keys are renewed,
    /// so that an old copy of the keyring and key store, opened with the old passphrase, opens
    /// nothing written afterwards. Resumable: if interrupted, run it again (with the new
    /// passphrase); it also finishes any other revocation left unfinished, and then returns
    /// the new recovery key that one made, if it made one. `progress` gets (patients renewed,
    /// patients).
    pub fn change_passphrase_with(
        &mut self,
        new: &Passphrase,
        kdf: Option<KdfParams>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Revocation, Error> {
        let result = self.alone(KeyOp::ChangePassphrase, |v| {
            v.change_passphrase_unlogged(new, kdf, progress)
        });
        let logged = self.logged_result(Action::KeyChangePassphrase, None, result);
        self.end_key_operation(logged)
    }

    fn change_passphrase_unlogged(
        &mut self,
        new: &Passphrase,
        kdf: Option<KdfParams>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Revocation, Error> {
        let user = self.session.user().to_string();
        new.check_new(&user)?;
        let kdf = match kdf {
            Some(k) => k,
            None => self.keys.slot_kdf(&user).ok_or(Error::UnknownUser)?,
        };
        // 1. The job record: keys are to be renewed.
        let target = self.start_revocation(false)?;
        // 2. The keyring records the revocation under way (format 2), then the new slot: the
        //    old passphrase opens nothing in the vault's files.
        self.keys.mark_revocation(&self.store, Some(target))?;
        self.keys
            .put_slot(&self.store, &user, SlotSecret::Passphrase(new, kdf))?;
        // 3. to 6.: as for a removed user.
        self.finish_revocation(target, progress)
    }

    /// Creates or replaces the recovery key (administrators) and returns it: show it once, then
    /// forget it. The old recovery key stops working. In format 2, replacing one is the
    /// revocation of the old one (as a passphrase change is): its slot goes, the master key is
    /// rotated, every patient gets a new key version, and the vault keys are renewed, so that
    /// an old copy of the key files, opened with the old recovery key, opens nothing written
    /// afterwards. No copy of the key is kept in the vault in any form that opens without it.
    pub fn rotate_recovery_key(&mut self) -> Result<RecoveryKey, Error> {
        let result = self
            .require(Duty::Administration)
            .and_then(|()| self.alone(KeyOp::RotateRecovery, |v| v.rotate_recovery_key_unlogged()));
        let logged = self.logged_result(Action::KeyRotateRecovery, None, result);
        self.end_key_operation(logged)
    }

    fn rotate_recovery_key_unlogged(&mut self) -> Result<RecoveryKey, Error> {
        self.require(Duty::Administration)?;
        let pending = self.revocation_target()?.is_some();
        if self.keys.format() < 2 || (!self.has_recovery_key() && !pending) {
            // The first recovery key (or format 1): a new slot.
            let key = RecoveryKey::random()?;
            self.keys
                .put_slot(&self.store, RECOVERY_SLOT, SlotSecret::Recovery(&key))?;
            return Ok(key);
        }
        let target = self.start_revocation(true)?;
        // The old recovery slot goes with the keyring's mark: the new master is never sealed
        // to it. The new one is made at the end.
        self.keys.remove_slot(&self.store, None, target, true)?;
        self.finish_revocation(target, &mut |_, _| {})?
            .recovery_key
            .ok_or(Error::Internal("a recovery-key replacement made no key"))
    }

    /// Whether the vault has a recovery key.
    pub fn has_recovery_key(&self) -> bool {
        self.keys.has_slot(RECOVERY_SLOT)
    }

    /// Revokes a user (administrators): the slot is removed, the master key rotated, and every
    /// patient gets a new key version that all later writes use, so a copy of the vault taken
    /// before, opened with the removed user's passphrase, opens nothing written afterwards. In
    /// format 2 the log, registry and keyring keys are renewed too, and revoking an
    /// administrator replaces the recovery key (returned: show it once). Notes already written
    /// are not re-encrypted (the user could read them). Resumable: if interrupted, run it
    /// again. A name that is not (or no longer) a user is [`Error::InvalidArgument`].
    pub fn remove_user(
        &mut self,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Revocation, Error> {
        let result = self.require(Duty::Administration).and_then(|()| {
            self.alone(KeyOp::RemoveUser, |v| {
                v.remove_user_unlogged(name, progress)
            })
        });
        let logged = self.logged_about(Action::UserRemove, name, result);
        self.end_key_operation(logged)
    }

    fn remove_user_unlogged(
        &mut self,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Revocation, Error> {
        self.require(Duty::Administration)?;
        if name == self.session.user() {
            return Err(Error::InvalidArgument(
                "you cannot remove yourself: another administrator must do it".into(),
            ));
        }
        let (mut users, serial, stored) = self.load_users_for_change()?;
        let listed = users.users.iter().find(|u| u.name == name).cloned();
        let has_slot = self.keys.has_slot(name);
        let pending = self.revocation_target()?.is_some();
        if listed.is_none() && !has_slot && !pending {
            return Err(Error::InvalidArgument(
                "there is no user of that name".into(),
            ));
        }
        // Whether the user was an administrator, who may have kept the recovery key: from the
        // users record, else from the job record the first step wrote, else (both gone, an
        // interrupted revocation whose job record was deleted) assumed.
        let admin = match &listed {
            Some(u) => Role::from_code(u.role) == Some(Role::Admin),
            None => self
                .load_job(JobSlot::Revoke)?
                .is_none_or(|(job, _)| job.done == REVOKED_AN_ADMIN),
        };
        if let Some(user) = &listed {
            // 1. The role goes, with a job record saying that keys must still be renewed (and
            //    whether the user was an administrator).
            users.users.retain(|u| u.name != user.name);
            let mut b = Batch::new();
            let serial = self.stage_users(&mut b, &users, serial, stored)?;
            if !pending {
                self.stage_revocation_job_of(&mut b, admin)?;
            }
            self.require_fence(&mut b);
            self.store.commit(b)?;
            self.store.flush()?;
            // Written with the keyring in step 2.
            self.keys.set_users_serial(serial);
        }
        let target = self
            .revocation_target()?
            .ok_or(Error::Internal("a revocation without its target"))?;
        // 2. The slot goes: the removed passphrase opens nothing in the vault's files. In
        //    format 2 the keyring records the revocation under way, authenticated, and, when an
        //    administrator goes, the recovery key's slot goes too, to be replaced at the end.
        let replace_recovery = self.keys.format() >= 2 && admin && self.has_recovery_key();
        if has_slot || replace_recovery || self.keys.revocation_marked() != Some(target) {
            self.keys.remove_slot(
                &self.store,
                has_slot.then_some(name),
                target,
                replace_recovery,
            )?;
        }
        self.finish_revocation(target, progress)
    }

    /// Step 1 of a revocation (unless one is under way): a job record of it. Returns its
    /// target patient-key version.
    fn start_revocation(&mut self, admin: bool) -> Result<u32, Error> {
        if let Some(target) = self.revocation_target()? {
            return Ok(target);
        }
        let mut b = Batch::new();
        self.stage_revocation_job_of(&mut b, admin)?;
        self.require_fence(&mut b);
        self.store.commit(b)?;
        self.store.flush()?;
        self.revocation_target()?
            .ok_or(Error::Internal("a revocation without its target"))
    }

    /// Steps 3 to 7 of a revocation, once the slot is gone (or replaced): a new master key,
    /// sealed only to the remaining slots; a new key version for every patient, used by all
    /// later writes; new vault keys (the log's, and in format 2 the registry's, with every
    /// registry record re-sealed, and the keyring's); the job record deleted; then, in one
    /// keyring write (format 2), the end of the mark, the patient-key floor raised to the
    /// target (a patient record put back from before is refused), and the new recovery key's
    /// slot if the keyring says one is to be made.
    fn finish_revocation(
        &mut self,
        target: u32,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Revocation, Error> {
        let rotation = self.rotate_master_steps(&mut |_, _| {});
        let rotation = self.logged_result(Action::KeyRotateMaster, None, rotation)?;
        self.renew_patient_keys(progress)?;
        self.keys.renew_vault_keys(&self.store)?;
        let mut recovery_key = None;
        if self.keys.format() >= 2 {
            self.reseal_registry_records()?;
            self.keys.retire_old_vault_keys(&self.store)?;
            // The job record first: the keyring's mark alone says the revocation is under way
            // until the end (a job record left behind the floor would look put back).
            self.finish_job(JobSlot::Revoke)?;
            if self.keys.replacing_recovery() {
                recovery_key = Some(RecoveryKey::random()?);
            }
            self.keys
                .end_revocation(&self.store, target, recovery_key.as_ref())?;
        } else {
            self.finish_job(JobSlot::Revoke)?;
        }
        Ok(Revocation {
            rotation,
            recovery_key,
        })
    }

    /// Re-seals under the newest registry key every record sealed under an older one: the
    /// registry, the users record and the job records, in one atomic batch. O(1).
    fn reseal_registry_records(&mut self) -> Result<(), Error> {
        let newest = self.keys.registry()?.version();
        let mut fence = None;
        let mut b = Batch::new();
        let mut keys: Vec<&[u8]> = vec![META_REGISTRY, META_USERS];
        keys.extend(JobSlot::ALL.iter().map(|s| s.meta_key()));
        for key in keys {
            let Some(stored) = self.store.get(space::META, key)? else {
                continue;
            };
            let location = String::from_utf8_lossy(key).into_owned();
            let sealed = Sealed::parse(&stored).map_err(|e| parse_error(&location, e))?;
            if sealed.key_version == newest {
                continue;
            }
            let old = self.keys.registry_key(sealed.key_version)?;
            let format = sealed.format;
            let resealed = match JobSlot::ALL.iter().find(|s| s.meta_key() == key) {
                Some(slot) => {
                    let plain =
                        sealed.open_at::<JobRecord>(&location, old, self.vault_id(), slot)?;
                    seal_as::<JobRecord>(
                        format,
                        self.keys.registry()?,
                        self.vault_id(),
                        slot,
                        &plain,
                    )?
                }
                None if key == META_USERS => {
                    let plain =
                        sealed.open_at::<UsersRecord>(&location, old, self.vault_id(), &())?;
                    seal_as::<UsersRecord>(
                        format,
                        self.keys.registry()?,
                        self.vault_id(),
                        &(),
                        &plain,
                    )?
                }
                None => {
                    let plain =
                        sealed.open_at::<RegistryRecord>(&location, old, self.vault_id(), &())?;
                    seal_as::<RegistryRecord>(
                        format,
                        self.keys.registry()?,
                        self.vault_id(),
                        &(),
                        &plain,
                    )?
                }
            };
            if key == JobSlot::Fence.meta_key() {
                fence = Some(resealed.clone());
            }
            b.require(space::META, key, Some(stored.clone()));
            b.put(space::META, key, resealed);
        }
        if !b.is_empty() {
            self.require_fence(&mut b);
            self.store.commit(b)?;
            self.store.flush()?;
        }
        if let Some(f) = fence {
            // The fence this operation holds, sealed again: still its own.
            self.fence.stored = Some(f);
        }
        Ok(())
    }
}

/// What a revocation did: a user's removal, or a passphrase change (the revocation of the old
/// passphrase).
#[derive(Debug)]
#[non_exhaustive]
pub struct Revocation {
    /// The master-key rotation it made.
    pub rotation: MasterRotation,
    /// The new recovery key, when the revocation replaced it (format 2: an administrator was
    /// removed and the vault had one, or an interrupted replacement of the recovery key was
    /// finished): show it once, then forget it. The old one no longer opens the vault.
    pub recovery_key: Option<RecoveryKey>,
}
