//! A wrapper that makes the N-th write fail, for fault-injection and crash tests.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Batch, DocName, EntryIter, Space, SpacedEntry, Store, StoreError};

/// Wraps a [`Store`] and fails the N-th write (counting [`Store::commit`], [`Store::flush`],
/// [`Store::replace_doc`], [`Store::append_doc`] and [`Store::replace_all`] calls from 1), and every write after it, as a
/// crashed process would. The failing write changes nothing. Reads always pass through.
pub struct FaultyStore<S> {
    inner: S,
    writes: AtomicU64,
    fail_at: u64,
}

impl<S: Store> FaultyStore<S> {
    /// Fails the `fail_at`-th write and all later ones; `u64::MAX` never fails.
    pub fn new(inner: S, fail_at: u64) -> Self {
        FaultyStore {
            inner,
            writes: AtomicU64::new(0),
            fail_at,
        }
    }

    /// How many writes were attempted so far (failed ones included).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// The wrapped store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn tick(&self) -> Result<(), StoreError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.fail_at {
            Err(StoreError::io(
                "injected fault",
                std::io::Error::other("injected write failure"),
            ))
        } else {
            Ok(())
        }
    }
}

impl<S> std::fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("fail_at", &self.fail_at)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
        self.inner.scan_prefix(space, prefix)
    }
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.tick()?;
        self.inner.commit(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.tick()?;
        self.inner.flush()
    }
    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read_doc(name)
    }
    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        self.tick()?;
        self.inner.replace_doc(name, bytes)
    }
    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        self.tick()?;
        self.inner.replace_all(records)
    }
    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        self.tick()?;
        self.inner.append_doc(name, bytes)
    }
    fn lock_key_operations(&self) -> Result<Option<crate::StoreLock>, StoreError> {
        self.inner.lock_key_operations()
    }
    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        self.inner.key_operations_locked()
    }
    fn writer_turn(&self) -> Result<Option<crate::StoreLock>, StoreError> {
        self.inner.writer_turn()
    }
}
