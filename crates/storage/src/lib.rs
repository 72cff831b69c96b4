//! Carnet's storage layer: a small trait over **opaque bytes**.
//!
//! Nothing in this crate can name a key, a patient or a note: it stores byte strings under byte
//! keys in a few named [`Space`]s, plus one small *root* document that is replaced whole. The
//! encryption, the meaning of every byte and the integrity checks live in `carnet-core`.
//!
//! A backend implements [`Store`]:
//!
//! - [`Store::get`] and [`Store::scan_prefix`] read;
//! - [`Store::commit`] applies a [`Batch`] of puts and deletes **atomically**, after checking its
//!   preconditions (compare-and-swap on a record's current value), so that a writer that lost a
//!   race fails with [`StoreError::Conflict`] instead of overwriting someone else's update;
//! - [`Store::flush`] makes every committed batch durable: a write is acknowledged only after it;
//! - [`Store::read_doc`], [`Store::replace_doc`] and [`Store::append_doc`] keep a few small
//!   named **documents** (Carnet's keyring and key store) outside the record store: a document is
//!   replaced atomically and without leaving older versions in the backend's files, or appended
//!   to durably.
//!
//! Three backends ship: [`MemStore`] (tests, embedding), [`SledStore`] (the embedded default,
//! sled 0.34.7) and [`PgStore`] (PostgreSQL: several processes on one vault, many vaults in one
//! database; [`pg_cluster`] starts a throwaway server for tests). [`conformance::run`] is the suite every backend must pass, and
//! [`FaultyStore`] wraps a backend to fail the N-th write, for crash and fault tests.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::Arc;

mod any;
mod batch;
pub mod conformance;
mod error;
mod faulty;
mod memory;
mod pg_address;
pub mod pg_cluster;
mod pg_tls;
mod postgres_store;
pub mod relay;
mod sled_store;

pub use any::{AnyStore, Location};
pub use batch::{Batch, DocName, Op, Precondition, Space};
pub use error::StoreError;
pub use faulty::FaultyStore;
pub use memory::MemStore;
pub use pg_address::{is_postgres_uri, PgAddress, TlsMode};
pub use postgres_store::{PgStore, SCHEMA_VERSION};
pub use relay::{RelayHost, RelayStore};
pub use sled_store::{SledDocuments, SledStore};

/// One stored record: its key and its value, both opaque.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A record with its space, for [`Store::replace_all`].
pub type SpacedEntry = (Space, Vec<u8>, Vec<u8>);

/// An iterator over the records of a space, in ascending key order.
pub type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + Send + 'a>;

/// A key-value store of opaque bytes with atomic, conditional batches.
///
/// Implementations must pass [`conformance::run`]. All methods take `&self`: a store is shared
/// between threads, and [`Store::commit`] is what serializes writers.
pub trait Store: Send + Sync {
    /// The value stored under `key` in `space`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every record of `space` whose key starts with `prefix`, in ascending key order.
    ///
    /// The iterator may observe batches committed after it was created; callers that need a
    /// consistent view check their own invariants (Carnet's manifests do).
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_>;

    /// Applies `batch` atomically: either every precondition holds and every operation is
    /// applied, or nothing changes. A failed precondition is [`StoreError::Conflict`].
    ///
    /// A committed batch is visible to later reads at once, but durable only after
    /// [`Store::flush`] returns.
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;

    /// Makes every committed batch durable (written and fsynced).
    fn flush(&self) -> Result<(), StoreError>;

    /// The document `name`, if it exists.
    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError>;

    /// Replaces (or creates) the document `name` atomically and durably: after a crash either
    /// the old or the new content is read back, whole, and the old content leaves no copy in the
    /// backend's files.
    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError>;

    /// Replaces every record of every space with `records`, atomically and durably, leaving no
    /// copy of the old records in the backend's files (documents are untouched). This is how a
    /// patient is erased from a log-structured store: rare, and O(size of the store).
    ///
    /// `records` may read from this store: they are consumed before the switch. An error from
    /// the iterator aborts the replacement and leaves the store as it was.
    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError>;

    /// Takes the lock that marks a key operation under way among the processes sharing this
    /// store, released when the returned guard is dropped **or its process ends** (a killed
    /// process holds nothing): how the others tell a running key operation from a dead one.
    /// `Ok(None)`: this backend has no such lock (callers then rely on a lease).
    fn lock_key_operations(&self) -> Result<Option<StoreLock>, StoreError> {
        Ok(None)
    }

    /// Takes this store's turn for one write among the processes sharing it, released when
    /// the guard is dropped: writers of several processes queue for it instead of losing
    /// compare-and-swap races to each other. `Ok(None)`: the backend needs none (one process
    /// opens it; within a process, a `Vault`'s writers take turns already). A write must not
    /// ask for it twice at once.
    fn writer_turn(&self) -> Result<Option<StoreLock>, StoreError> {
        Ok(None)
    }

    /// Whether [`Store::lock_key_operations`]'s lock is held now (by anyone): `Ok(None)` when
    /// this backend cannot tell.
    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        Ok(None)
    }

    /// Appends `bytes` to the document `name` (creating it if absent) and makes them durable.
    /// A crash during the append may leave a prefix of `bytes` at the end: callers frame their
    /// appends so that a torn tail is recognizable.
    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError>;
}

/// A held lock of a store ([`Store::lock_key_operations`], [`Store::writer_turn`]): released
/// when dropped.
pub struct StoreLock(#[allow(dead_code)] Box<dyn Send>);

impl StoreLock {
    /// A guard that releases the lock when dropped (whatever `held` does on drop).
    pub fn new(held: Box<dyn Send>) -> Self {
        StoreLock(held)
    }
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLock")
    }
}

/// The in-process form of the key-operation lock, for backends that only one process opens at
/// a time (sled) or that live in one process (memory): a flag shared by every user of the
/// store.
#[derive(Default, Debug)]
pub(crate) struct LocalKeyOpLock(Arc<std::sync::atomic::AtomicBool>);

struct LocalHeld(Arc<std::sync::atomic::AtomicBool>);

impl Drop for LocalHeld {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl LocalKeyOpLock {
    /// Takes it (it is held by one key operation at a time: a second is `Conflict`).
    pub(crate) fn lock(&self) -> Result<Option<StoreLock>, StoreError> {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .map_err(|_| StoreError::Conflict)?;
        Ok(Some(StoreLock::new(Box::new(LocalHeld(Arc::clone(
            &self.0,
        ))))))
    }

    /// Whether it is held.
    pub(crate) fn held(&self) -> Result<Option<bool>, StoreError> {
        Ok(Some(self.0.load(std::sync::atomic::Ordering::SeqCst)))
    }
}

/// Reading a store's documents without opening (or locking) its records: what a caller needs to
/// tell whether a store holds a vault before taking its lock. Every [`Store`] is one, and
/// [`SledStore::documents`] gives one for a directory without opening sled.
pub trait DocReader {
    /// The document `name`, if it exists.
    fn document(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError>;
}

impl<S: Store + ?Sized> DocReader for S {
    fn document(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_doc(name)
    }
}

/// Forwards every [`Store`] method through a smart pointer.
macro_rules! forward_store {
    ($ptr:ident) => {
        impl<S: Store + ?Sized> Store for $ptr<S> {
            fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
                (**self).get(space, key)
            }
            fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
                (**self).scan_prefix(space, prefix)
            }
            fn commit(&self, batch: Batch) -> Result<(), StoreError> {
                (**self).commit(batch)
            }
            fn flush(&self) -> Result<(), StoreError> {
                (**self).flush()
            }
            fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
                (**self).read_doc(name)
            }
            fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
                (**self).replace_doc(name, bytes)
            }
            fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
                (**self).append_doc(name, bytes)
            }
            fn replace_all(
                &self,
                records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
            ) -> Result<(), StoreError> {
                (**self).replace_all(records)
            }
            fn lock_key_operations(&self) -> Result<Option<StoreLock>, StoreError> {
                (**self).lock_key_operations()
            }
            fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
                (**self).key_operations_locked()
            }
            fn writer_turn(&self) -> Result<Option<StoreLock>, StoreError> {
                (**self).writer_turn()
            }
        }
    };
}
forward_store!(Box);
forward_store!(Arc);
