//! Many threads (and, on a shared store, many processes) on one vault: a writer that loses a
//! compare-and-swap race does its work again on the state that won, and a read that saw a
//! patient at two moments (its manifest, then another writer's commit, then its notes) reads
//! again, so that concurrent use never reports a healthy vault as damaged (docs/architecture.md,
//! "Concurrency").
//!
//! The witness of "a write landed while reading" is the patient's manifest: every write to a
//! patient replaces it in the same atomic batch, sealed with a fresh nonce, so equal bytes before
//! and after a read mean that no write to that patient landed in between, and an integrity
//! problem seen then is real.

use std::time::Duration;

use carnet_storage::{Store, StoreError};

use super::patients::PatientState;
use super::Vault;
use crate::records::space;
use crate::Error;

/// How many times an operation is tried before it gives up with [`StoreError::Conflict`]
/// ("a concurrent write changed the vault; try again": exit 6 at the command line).
pub(super) const ATTEMPTS: u32 = 200;

/// Whether `e` is a lost compare-and-swap race (nothing was written).
pub(super) fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Storage(StoreError::Conflict))
}

/// Waits before attempt `attempt + 1`: a random time up to 0.5 ms doubled per attempt (at most
/// 64 ms), so that writers that collided do not collide again in step.
pub(super) fn backoff(attempt: u32) {
    let ceiling_us = 500u64 << attempt.min(7);
    let mut r = [0u8; 8];
    // Without randomness the wait is the ceiling: still correct, only less spread.
    let jitter = match crate::crypto::fill_random(&mut r) {
        Ok(()) => u64::from_le_bytes(r) % ceiling_us,
        Err(_) => ceiling_us,
    };
    std::thread::sleep(Duration::from_micros(jitter + 50));
}

thread_local! {
    /// Whether this thread holds a store's writers' turn (a write that logs, or a log entry
    /// inside a write, does not ask for it twice).
    static HOLDING_TURN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread holds a store's writers' turn: then it must not wait for a key
/// operation, which needs the turn for its own writes (it would wait for the waiter).
pub(super) fn holding_turn() -> bool {
    HOLDING_TURN.with(|h| h.get())
}

/// A writers' turn held by this thread ([`Vault::store_turn`]).
pub(super) struct TurnGuard(Option<carnet_storage::StoreLock>, bool);

impl Drop for TurnGuard {
    fn drop(&mut self) {
        if self.1 {
            HOLDING_TURN.with(|h| h.set(false));
        }
        self.0.take();
    }
}

impl<S: Store> Vault<S> {
    /// The store's turn among the processes sharing it (PostgreSQL), once per thread. Taken
    /// before the `Vault`'s own write lock, never after it (the order every writer follows).
    pub(super) fn store_turn(&self) -> Result<TurnGuard, Error> {
        if HOLDING_TURN.with(|h| h.get()) {
            return Ok(TurnGuard(None, false));
        }
        let held = self.store.writer_turn()?;
        HOLDING_TURN.with(|h| h.set(true));
        Ok(TurnGuard(held, true))
    }
}

impl<S: Store> Vault<S> {
    /// Runs the write `op` (which reads what it needs and commits one transaction) until it
    /// does not lose a race: a lost compare-and-swap wrote nothing, so doing it again on the
    /// new state is safe. Writers of this `Vault` take turns (they would only collide), so the
    /// races left are with imports and with other processes.
    pub(super) fn retrying<T>(&self, mut op: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            let result = {
                let _turn = self.txn_turn();
                // And the turn among the processes sharing the store (PostgreSQL): writers
                // queue there instead of losing races to each other.
                let _store_turn = self.store_turn()?;
                op()
            };
            match result {
                // Refused without waiting, under the turn: waited for here, the turn given
                // back (unless an outer call of this thread holds it: then there).
                Err(Error::Busy { .. }) if !holding_turn() => {
                    if let Some(instead) = self.fence_moved_waiting()? {
                        return Err(instead);
                    }
                    if attempt + 1 >= ATTEMPTS {
                        return Err(StoreError::Conflict.into());
                    }
                    attempt += 1;
                }
                Err(e) if is_conflict(&e) => {
                    // A key operation since this `Vault` read its keys: no retry can succeed.
                    if let Some(instead) = self.fence_moved_waiting()? {
                        return Err(instead);
                    }
                    if attempt + 1 >= ATTEMPTS {
                        return Err(e);
                    }
                    backoff(attempt);
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Runs the read `op` on `st`; if it finds an integrity problem while the patient's
    /// manifest changed since `st` was read (a write landed between reading the manifest and
    /// reading the notes: the manifest read again opens and lists more note versions), reads the
    /// patient again and runs `op` again. A problem seen while the manifest stayed the same, or
    /// changed to anything but a newer authentic one, is reported; a patient that really kept
    /// being written for every attempt is [`StoreError::Conflict`].
    pub(super) fn settled<T>(
        &self,
        st: &PatientState,
        mut op: impl FnMut(&PatientState) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut reread: Option<PatientState> = None;
        let mut attempt = 0;
        loop {
            let current = reread.as_ref().unwrap_or(st);
            match op(current) {
                Err(Error::Integrity(e)) => {
                    let now = self.store.get(space::MANIFESTS, &current.blind.0)?;
                    if now == current.manifest_stored {
                        // Read with keys another process's key operation replaced since: not
                        // the store's doing.
                        return Err(self.unless_fence_moved(Error::Integrity(e)));
                    }
                    // Read again only for a write that landed: a manifest that opens and lists
                    // more note versions (writes only add them). Bytes that do not open, or an
                    // older or equal manifest, are the store's doing: the problem is reported.
                    let fresh = self
                        .reload_patient(&current.blind)
                        .map_err(|e| self.unless_fence_moved(e))?;
                    if fresh.manifest.next_seq <= current.manifest.next_seq {
                        return Err(self.unless_fence_moved(Error::Integrity(e)));
                    }
                    if fresh.info.id != current.info.id {
                        return Err(crate::error::integrity(
                            fresh.location(),
                            crate::error::ProblemKind::Moved,
                            "identifier mismatch",
                        ));
                    }
                    if attempt + 1 >= ATTEMPTS {
                        return Err(Error::Storage(StoreError::Conflict));
                    }
                    backoff(attempt);
                    attempt += 1;
                    reread = Some(fresh);
                }
                r => return r,
            }
        }
    }

    /// The patient stored under `blind`, read again.
    pub(super) fn reload_patient(
        &self,
        blind: &crate::records::Blind,
    ) -> Result<PatientState, Error> {
        let stored = self
            .store
            .get(space::PATIENTS, &blind.0)?
            .ok_or(Error::NoSuchPatient)?;
        self.load_patient(blind, &stored)
    }
}
