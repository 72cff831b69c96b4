//! An in-memory backend, for tests and for embedding Carnet where persistence is handled elsewhere.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::{Batch, DocName, Entry, EntryIter, Op, Space, SpacedEntry, Store, StoreError};

#[derive(Default)]
struct Inner {
    records: BTreeMap<(Space, Vec<u8>), Vec<u8>>,
    docs: std::collections::HashMap<DocName, Vec<u8>>,
}

/// A [`Store`] kept in memory; everything is lost when it is dropped.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    key_ops: crate::LocalKeyOpLock,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held cannot leave `Inner` half-updated: every mutation
        // below is a single map operation, so the data behind a poisoned lock is still valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore").finish_non_exhaustive()
    }
}

impl Store for MemStore {
    fn lock_key_operations(&self) -> Result<Option<crate::StoreLock>, StoreError> {
        self.key_ops.lock()
    }
    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        self.key_ops.held()
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().records.get(&(space, key.to_vec())).cloned())
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
        let inner = self.lock();
        let found: Vec<Entry> = inner
            .records
            .range((space, prefix.to_vec())..)
            .take_while(|((s, k), _)| *s == space && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        Box::new(found.into_iter().map(Ok))
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for p in &batch.preconditions {
            if inner.records.get(&(p.space, p.key.clone())) != p.expected.as_ref() {
                return Err(StoreError::Conflict);
            }
        }
        for op in batch.ops {
            match op {
                Op::Put { space, key, value } => {
                    inner.records.insert((space, key), value);
                }
                Op::Delete { space, key } => {
                    inner.records.remove(&(space, key));
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().docs.get(&name).cloned())
    }

    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        self.lock().docs.insert(name, bytes.to_vec());
        Ok(())
    }

    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut next = BTreeMap::new();
        for r in records {
            let (space, k, v) = r?;
            next.insert((space, k), v);
        }
        self.lock().records = next;
        Ok(())
    }

    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        self.lock()
            .docs
            .entry(name)
            .or_default()
            .extend_from_slice(bytes);
        Ok(())
    }
}
