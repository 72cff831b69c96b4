//! The fence of key operations (ADR 0019): a rotation, a revocation, a user added or removed,
//! an erasure or an upgrade runs alone among every process sharing the vault, and no write of
//! another process lands on keys it retires.
//!
//! The fence is a job record (`"fence"`, kind [`JOB_FENCE`]). A key operation first moves it
//! from the state this `Vault` read to "under way" (compare-and-swap: of two administrators,
//! one wins; the other is told [`Error::Busy`]), does its work, renewing a lease while it works,
//! and moves it to a new idle state at its end, whatever the outcome. Every ordinary write
//! (a note, a patient, an import batch, an access-log entry) commits only if the fence is still
//! what its `Vault` read when it read its keys; otherwise the write is refused with
//! [`Error::KeysChanged`] (or [`Error::Busy`] while the operation runs) and the caller calls
//! [`Vault::reload`]. A key operation killed before its end leaves its lease to run out:
//! then the others go on, and what the operation left unfinished refuses writes by itself
//! (`Error::Unfinished`), as it always did.

use std::time::Duration;

use carnet_storage::{Batch, Store};

use super::keychain::Keychain;
use super::logging::Event;
use super::{ChainCache, Vault};
use crate::access_log::Action;
use crate::error::Error;
use crate::model::Timestamp;
use crate::records::{space, JobSlot, JobV1, JOB_FENCE};

/// How long a key operation holds the fence without renewing it.
pub(super) const LEASE: Duration = Duration::from_secs(10 * 60);

/// How often a key operation renews its lease, at most.
const RENEW_AFTER: Duration = Duration::from_secs(60);

/// The key operations, as the fence names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyOp {
    RotateMaster = 1,
    RotatePatients = 2,
    AddUser = 3,
    RemoveUser = 4,
    ChangePassphrase = 5,
    RotateRecovery = 6,
    Erase = 7,
    Upgrade = 8,
}

impl KeyOp {
    fn from_code(code: u32) -> &'static str {
        match code {
            1 => "master-key rotation",
            2 => "patient-key rotation",
            3 => "addition of a user",
            4 => "removal of a user",
            5 => "change of passphrase",
            6 => "recovery-key rotation",
            7 => "erasure of a patient",
            8 => "upgrade",
            _ => "key operation",
        }
    }
}

/// How long to wait for another process's key operation ([`Vault::set_patience`]).
#[derive(Default)]
pub(super) struct Patience {
    wait: Duration,
    waiting: Option<Box<dyn Fn(&'static str) + Send + Sync>>,
}

/// What this `Vault` knows of the fence: its stored bytes when the keys were read (`None`:
/// no fence yet), and, while this `Vault` runs a key operation, when it last renewed its lease.
#[derive(Default)]
pub(super) struct FenceSeen {
    pub(super) stored: Option<Vec<u8>>,
    /// Another's operation held it then, with a lease to this time (Unix ms; 0: none).
    busy_until: u64,
    renewed: Option<std::time::Instant>,
    source: [u8; 32],
    /// The store's key-operation lock, while this `Vault` runs one: others tell a running
    /// operation from a killed one by it.
    held: std::sync::Mutex<Option<carnet_storage::StoreLock>>,
}

fn now_ms() -> u64 {
    Timestamp::now().unix_millis().max(0) as u64
}

impl<S: Store> Vault<S> {
    /// The fence as stored now, opened.
    fn fence_now(&self) -> Result<Option<(JobV1, Vec<u8>)>, Error> {
        self.load_job_named(JobSlot::Fence, "fence")
    }

    /// The fence as stored now, for a `Vault` that has just read its keys.
    pub(super) fn read_fence(&self) -> Result<FenceSeen, Error> {
        Ok(match self.fence_now()? {
            None => FenceSeen::default(),
            Some((job, stored)) => FenceSeen {
                stored: Some(stored),
                busy_until: if job.target != 0 { job.done } else { 0 },
                ..FenceSeen::default()
            },
        })
    }

    /// Refuses to go on ([`Error::Busy`], [`Error::KeysChanged`]) while another process's key
    /// operation holds the fence, or after one changed the keys this `Vault` read.
    ///
    /// While an operation runs, waits for it up to this `Vault`'s patience
    /// ([`Vault::set_patience`]), saying so once.
    pub(super) fn require_fence_free(&self) -> Result<(), Error> {
        self.wait_fence_free()
    }

    /// [`Vault::require_fence_free`] for an access-log entry, which decrypts nothing before
    /// its commit: when the fence was idle at this `Vault`'s read, the entry's own condition
    /// on it finds any key operation since (explained by `fence_moved_waiting`), so there is
    /// nothing to read first.
    pub(super) fn require_fence_free_to_log(&self) -> Result<(), Error> {
        if self.fence.renewed.is_none() && self.fence.busy_until <= now_ms() {
            return Ok(());
        }
        self.wait_fence_free()
    }

    /// [`Vault::require_fence_free`] without its shortcut: reads the fence, and waits (up to
    /// the patience) while an operation holds it, unless this thread holds the writers' turn
    /// (the operation needs it: the caller waits once it gave the turn back).
    fn wait_fence_free(&self) -> Result<(), Error> {
        let start = std::time::Instant::now();
        let mut said = false;
        loop {
            match self.fence_moved()? {
                None => return Ok(()),
                Some(Error::Busy { operation, .. })
                    if start.elapsed() < self.patience.wait
                        && !super::contention::holding_turn() =>
                {
                    if !said {
                        if let Some(say) = &self.patience.waiting {
                            say(operation);
                        }
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Some(e) => return Err(e),
            }
        }
    }

    /// How long a read or a write waits for another process's key operation before it fails
    /// with [`Error::Busy`] (none by default), and what to call, once, when it must wait.
    pub fn set_patience(
        &mut self,
        wait: Duration,
        waiting: Option<Box<dyn Fn(&'static str) + Send + Sync>>,
    ) {
        self.patience = Patience { wait, waiting };
    }

    /// Adds to `b` the condition that the fence is what this `Vault` read with its keys.
    pub(super) fn require_fence(&self, b: &mut Batch) {
        b.require(
            space::META,
            JobSlot::Fence.meta_key(),
            self.fence.stored.clone(),
        );
    }

    /// Whether another process changed the vault's keys (ran a key operation, or runs one) since
    /// this `Vault` read them: if so, [`Vault::reload`] before writing again.
    pub fn keys_changed(&self) -> Result<bool, Error> {
        let now = self.store.get(space::META, JobSlot::Fence.meta_key())?;
        Ok(now != self.fence.stored)
    }

    /// Why a write or read failed when the fence moved since this `Vault` read its keys
    /// ([`Error::Busy`] while an operation holds it, else [`Error::KeysChanged`]); `None` when
    /// it did not move (the failure is the failure).
    pub(super) fn fence_moved(&self) -> Result<Option<Error>, Error> {
        if self.fence.renewed.is_some() {
            // This `Vault` runs the operation.
            return Ok(None);
        }
        let changed = self.keys_changed()?;
        if !changed && self.fence.busy_until <= now_ms() {
            return Ok(None);
        }
        Ok(match self.fence_now() {
            Ok(Some((job, _))) => self.busy(&job)?.or(changed.then_some(Error::KeysChanged)),
            // Sealed under a registry key this `Vault` does not hold yet: changed.
            _ => Some(Error::KeysChanged),
        })
    }

    /// [`Vault::fence_moved`], having waited (up to this `Vault`'s patience) for an operation
    /// under way to end: then the keys changed under this call.
    pub(super) fn fence_moved_waiting(&self) -> Result<Option<Error>, Error> {
        Ok(match self.fence_moved()? {
            Some(Error::Busy { .. }) => Some(match self.wait_fence_free() {
                Ok(()) => Error::KeysChanged,
                Err(e) => e,
            }),
            other => other,
        })
    }

    /// `e`, or what the fence says instead when it moved (see [`Vault::fence_moved_waiting`]).
    pub(super) fn unless_fence_moved(&self, e: Error) -> Error {
        match self.fence_moved_waiting() {
            Ok(Some(instead)) => instead,
            _ => e,
        }
    }

    /// Reads the vault's keys again (the keyring, the key store, the users) with the slot
    /// this `Vault` opened, after another process changed them ([`Error::KeysChanged`]): no
    /// passphrase is asked again. Fails with [`Error::Busy`] while a key operation runs, and
    /// with [`Error::WrongPassphrase`] if this user's passphrase was changed meanwhile (or the
    /// user removed: [`Error::UnknownUser`]).
    pub fn reload(&mut self) -> Result<(), Error> {
        let result = self.read_keys_and_fence().and_then(|fence| {
            self.fence = fence;
            self.chains = ChainCache::default();
            self.reread_role()
        });
        if result.is_err() {
            // Half read: this `Vault` refuses every write and key operation (no stored fence
            // has these bytes) until a reload succeeds.
            self.fence.stored = Some(Vec::new());
            self.fence.busy_until = 0;
        }
        result?;
        self.require_fence_free()
    }

    /// Waits, up to `wait`, for another process's key operation to end (`waiting` is called
    /// once, with what is under way, if it must wait), then reads the keys again if one ran
    /// since this `Vault` read them. [`Error::Busy`] if it is still under way after `wait`.
    pub fn wait_for_key_operations(
        &mut self,
        wait: Duration,
        waiting: &mut dyn FnMut(&'static str),
    ) -> Result<(), Error> {
        let start = std::time::Instant::now();
        let mut said = false;
        loop {
            match self.fence_moved()? {
                None => return Ok(()),
                Some(Error::KeysChanged) => match self.reload() {
                    Ok(()) => return Ok(()),
                    Err(Error::Busy { .. }) => {}
                    Err(e) => return Err(e),
                },
                Some(busy @ Error::Busy { .. }) if start.elapsed() >= wait => return Err(busy),
                Some(Error::Busy { operation, .. }) => {
                    if !said {
                        waiting(operation);
                        said = true;
                    }
                }
                Some(e) => return Err(e),
            }
            if start.elapsed() >= wait {
                return self.require_fence_free();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reads the keys again with the slot this `Vault` opened, between two reads of the fence
    /// that agree: keys read while a key operation moved it are read again. (The fence is
    /// opened with the new keys: a revocation seals it under a new registry key.)
    pub(super) fn read_keys_and_fence(&mut self) -> Result<FenceSeen, Error> {
        let mut attempt = 0;
        loop {
            let before = self.store.get(space::META, JobSlot::Fence.meta_key())?;
            match Keychain::reload(&self.store, &self.keys) {
                Ok(keys) => self.keys = keys,
                // Two documents read between two steps of a key operation (see unlock).
                Err(Error::Integrity(_)) if attempt < 50 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Err(e) => return Err(e),
            }
            match self.read_fence() {
                Ok(f) if f.stored == before => return Ok(f),
                Ok(_) | Err(Error::Integrity(_)) if attempt < 20 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(20 * attempt));
                }
                Ok(_) => return Err(Error::KeysChanged),
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the key operation `op`: moves the fence from what this `Vault` read to "under
    /// way", or fails with [`Error::Busy`] (another runs) or [`Error::KeysChanged`] (another
    /// ran since this `Vault` read its keys: reload, then try again).
    pub(super) fn fence_begin(&mut self, op: KeyOp) -> Result<(), Error> {
        let held = self.take_key_operations_lock()?;
        let mut source = [0u8; 32];
        crate::crypto::fill_random(&mut source)?;
        let job = JobV1 {
            kind: JOB_FENCE,
            target: op as u32,
            source,
            done: now_ms() + LEASE.as_millis() as u64,
        };
        self.fence_put(&job)?;
        self.fence.renewed = Some(std::time::Instant::now());
        self.fence.source = source;
        *self.fence.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
        // What others changed without moving the fence (patients added, their keys appended
        // to the key store; a slot re-protected at an unlock) is read again, now that nobody
        // else changes keys: the operation rewrites the key store from what it holds.
        let reread = Keychain::reload(&self.store, &self.keys).and_then(|keys| {
            self.keys = keys;
            self.chains = ChainCache::default();
            self.reread_role()
        });
        if let Err(e) = reread {
            let _ = self.fence_end();
            return Err(e);
        }
        Ok(())
    }

    /// The store's key-operation lock, once the fence is free (another's operation whose
    /// lease ran out, or whose process ended, is taken over). Another administrator's
    /// operation, found running or starting, is waited for up to this `Vault`'s patience;
    /// the keys it changed are then read again (this operation has done nothing yet). Keys
    /// that were stale already are [`Error::KeysChanged`], as for any write.
    fn take_key_operations_lock(&mut self) -> Result<Option<carnet_storage::StoreLock>, Error> {
        if let Some(Error::KeysChanged) = self.fence_moved()? {
            return Err(Error::KeysChanged);
        }
        let start = std::time::Instant::now();
        let (mut said, mut reloads) = (false, 0);
        loop {
            match self.require_fence_free() {
                Ok(()) => {}
                // The operation waited for ended (a few times at most: a fence that keeps
                // moving is not waited for forever).
                Err(Error::KeysChanged) if reloads < 10 => {
                    reloads += 1;
                    self.reload()?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            match self.store.lock_key_operations() {
                Ok(held) => return Ok(held),
                // Another's operation took the lock and has not moved the fence yet.
                Err(carnet_storage::StoreError::Conflict)
                    if start.elapsed() < self.patience.wait =>
                {
                    if !said {
                        if let Some(say) = &self.patience.waiting {
                            say(KeyOp::from_code(0));
                        }
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(carnet_storage::StoreError::Conflict) => {
                    return Err(Error::Busy {
                        operation: KeyOp::from_code(0),
                        for_at_most: LEASE,
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Renews the lease of the key operation this `Vault` runs, if a minute passed since.
    pub(super) fn fence_renew(&mut self) -> Result<(), Error> {
        match self.fence.renewed {
            Some(at) if at.elapsed() >= RENEW_AFTER => {}
            _ => return Ok(()),
        }
        let mut job = self.own_fence()?;
        job.done = now_ms() + LEASE.as_millis() as u64;
        self.fence_put(&job)?;
        self.fence.renewed = Some(std::time::Instant::now());
        Ok(())
    }

    /// Ends the key operation this `Vault` runs (whatever its outcome): the fence idle again,
    /// in a state no `Vault` read before. Nothing to do if none runs.
    pub(super) fn fence_end(&mut self) -> Result<(), Error> {
        if self.fence.renewed.is_none() {
            return Ok(());
        }
        let mut job = self.own_fence()?;
        crate::crypto::fill_random(&mut job.source)?;
        job.target = 0;
        job.done = 0;
        let put = self.fence_put(&job);
        self.fence.renewed = None;
        // Given back even if the fence could not be written: its lease then runs out.
        self.fence
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        put
    }

    /// The fence, which must still be this `Vault`'s operation's (its lease may have run out
    /// and another taken it: then this one stops, [`Error::KeysChanged`]).
    fn own_fence(&mut self) -> Result<JobV1, Error> {
        let (job, stored) = self.fence_now()?.ok_or(Error::KeysChanged)?;
        if job.source != self.fence.source || job.target == 0 {
            return Err(Error::KeysChanged);
        }
        // Sealed again under a newer registry key by this operation itself (a revocation):
        // the same state.
        self.fence.stored = Some(stored);
        Ok(job)
    }

    /// Replaces the fence with `job`, if it is still what this `Vault` knows, durably.
    fn fence_put(&mut self, job: &JobV1) -> Result<(), Error> {
        let sealed = self.seal_job(JobSlot::Fence, job)?;
        let _writing = self.writing();
        let mut b = Batch::new();
        self.require_fence(&mut b);
        b.put(space::META, JobSlot::Fence.meta_key(), sealed.clone());
        if self.fence.stored.is_none() {
            // The log says from now on that the fence exists: its deletion is then found.
            self.stage_log(&mut b, &Event::new(Action::KeyFence, None, "ok"))?;
        }
        match self.store.commit(b) {
            Ok(()) => {}
            Err(carnet_storage::StoreError::Conflict) => {
                return Err(self
                    .fence_moved()?
                    .unwrap_or(Error::Storage(carnet_storage::StoreError::Conflict)))
            }
            Err(e) => return Err(e.into()),
        }
        self.store.flush()?;
        drop(_writing);
        self.fence.stored = Some(sealed);
        Ok(())
    }

    /// Runs the key operation `op` alone: the fence taken first, and kept until
    /// [`Vault::end_key_operation`] (after the outcome is logged, inside the fence, so that
    /// no other operation comes between the two).
    pub(super) fn alone<T>(
        &mut self,
        op: KeyOp,
        run: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.fence_begin(op)?;
        run(self)
    }

    /// Gives the fence back after a key operation and its log entry, whatever the outcome (an
    /// error in giving it back is reported only if the operation succeeded). Nothing to do if
    /// the operation never took it.
    pub(super) fn end_key_operation<T>(&mut self, logged: Result<T, Error>) -> Result<T, Error> {
        let ended = self.fence_end();
        let value = logged?;
        ended?;
        Ok(value)
    }
}

impl<S: Store> Vault<S> {
    /// [`Error::Busy`] if `fence` says an operation holds it, its lease has not run out, and
    /// the store does not know its process gone (its key-operation lock free).
    fn busy(&self, fence: &JobV1) -> Result<Option<Error>, Error> {
        let now = now_ms();
        if fence.target == 0 || fence.done <= now {
            return Ok(None);
        }
        if self.store.key_operations_locked()? == Some(false) {
            return Ok(None);
        }
        Ok(Some(Error::Busy {
            operation: KeyOp::from_code(fence.target),
            for_at_most: Duration::from_millis(fence.done - now),
        }))
    }
}
