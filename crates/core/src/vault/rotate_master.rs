//! Master-key rotation: a new epoch, every wrapped key re-wrapped under it, every slot
//! re-sealed, the old epoch destroyed; no record of the record store rewritten
//! (docs/key-management.md, "Rotating the master key"). The steps are `keychain`'s.

use carnet_storage::Store;

use super::fence::KeyOp;
use super::Vault;
use crate::access::Duty;
use crate::access_log::Action;
use crate::Error;

/// What a master-key rotation did (or, from [`Vault::plan_rotate_master`], would do).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MasterRotation {
    /// The epoch before.
    pub from_epoch: u32,
    /// The epoch after.
    pub to_epoch: u32,
    /// Wrapped keys re-wrapped (vault keys and patient keys): the records rewritten.
    pub keys_rewrapped: u64,
    /// Key slots re-sealed.
    pub slots: u64,
    /// Note records rewritten: always 0.
    pub notes_rewritten: u64,
    /// Whether this finished a rotation that an interruption had left unfinished.
    pub resumed: bool,
}

impl<S: Store> Vault<S> {
    /// What [`Vault::rotate_master`] would do now, without doing it.
    pub fn plan_rotate_master(&self) -> Result<MasterRotation, Error> {
        self.require(Duty::Administration)?;
        Ok(MasterRotation {
            from_epoch: self.keys.epoch(),
            to_epoch: self.keys.next_epoch(),
            keys_rewrapped: self.keys.keys_to_rewrap(),
            slots: self.keys.slot_count(),
            notes_rewritten: 0,
            resumed: self.keys.pending_epoch().is_some(),
        })
    }

    /// Rotates the master key: a new epoch, every wrapped key re-wrapped under it, every slot
    /// re-sealed, the old epoch destroyed. No record of the record store is rewritten; the cost
    /// grows with patients, not notes. If a previous rotation was interrupted, this finishes it
    /// instead of starting another. `progress` gets (keys re-wrapped, keys in all).
    pub fn rotate_master(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MasterRotation, Error> {
        let result = self
            .require(Duty::Administration)
            .and_then(|()| self.alone(KeyOp::RotateMaster, |v| v.rotate_master_unlogged(progress)));
        let logged = self.logged_result(Action::KeyRotateMaster, None, result);
        self.end_key_operation(logged)
    }

    fn rotate_master_unlogged(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MasterRotation, Error> {
        self.require(Duty::Administration)?;
        self.rotate_master_steps(progress)
    }

    /// The steps of a master-key rotation, for any role: a revocation of one's own passphrase
    /// needs them too.
    pub(super) fn rotate_master_steps(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<MasterRotation, Error> {
        let from = self.keys.epoch();
        // Step 1: a new master sealed to every slot, beside the current one.
        let resumed = self.keys.seal_next_epoch(&self.store)?;
        let next = self.keys.next_epoch();
        // Step 2: the key store re-wrapped under the new epoch, and replaced whole.
        let rewrapped = self.keys.rewrap_for_next_epoch(&self.store, progress)?;
        // Step 3: the new epoch made current, the old one destroyed in every slot.
        self.keys.finish_next_epoch(&self.store)?;
        Ok(MasterRotation {
            from_epoch: if resumed { next - 1 } else { from },
            to_epoch: next,
            keys_rewrapped: rewrapped,
            slots: self.keys.slot_count(),
            notes_rewritten: 0,
            resumed,
        })
    }
}
