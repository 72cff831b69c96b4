//! A vault's place named by its user (a directory, or a PostgreSQL URI), and a store of either
//! kind behind one type, for programs (the command line, the service) that open what they are
//! told to.

use std::path::{Path, PathBuf};

use crate::{
    is_postgres_uri, Batch, DocName, EntryIter, PgAddress, PgStore, RelayStore, SledStore, Space,
    SpacedEntry, Store, StoreError, StoreLock,
};

/// Where a vault is.
#[derive(Clone, Debug)]
pub enum Location {
    /// A directory holding a sled store (the embedded default).
    Dir(PathBuf),
    /// A vault in a PostgreSQL database.
    Postgres(Box<PgAddress>),
}

impl Location {
    /// `text` as a location: a `postgres://` or `postgresql://` URI, else a directory.
    pub fn parse(text: &Path) -> Result<Location, StoreError> {
        match text.to_str() {
            Some(t) if is_postgres_uri(t) => Ok(Location::Postgres(Box::new(PgAddress::parse(t)?))),
            _ => Ok(Location::Dir(text.to_path_buf())),
        }
    }

    /// The location for messages: the directory, or the URI without any secret.
    pub fn describe(&self) -> String {
        match self {
            Location::Dir(d) => d.display().to_string(),
            Location::Postgres(a) => a.location(),
        }
    }
}

/// A sled or a PostgreSQL store, or a sled store reached through the server that holds it.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one value per open vault: its size does not matter
pub enum AnyStore {
    /// A sled store.
    Sled(SledStore),
    /// A PostgreSQL vault.
    Postgres(PgStore),
    /// A sled store held by a running `carnet serve`, reached through its local relay.
    Relay(RelayStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sled($s) => $e,
            AnyStore::Postgres($s) => $e,
            AnyStore::Relay($s) => $e,
        }
    };
}

impl Store for AnyStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        each!(self, s => s.get(space, key))
    }
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> EntryIter<'_> {
        each!(self, s => s.scan_prefix(space, prefix))
    }
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        each!(self, s => s.commit(batch))
    }
    fn flush(&self) -> Result<(), StoreError> {
        each!(self, s => s.flush())
    }
    fn read_doc(&self, name: DocName) -> Result<Option<Vec<u8>>, StoreError> {
        each!(self, s => s.read_doc(name))
    }
    fn replace_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        each!(self, s => s.replace_doc(name, bytes))
    }
    fn append_doc(&self, name: DocName, bytes: &[u8]) -> Result<(), StoreError> {
        each!(self, s => s.append_doc(name, bytes))
    }
    fn replace_all(
        &self,
        records: &mut dyn Iterator<Item = Result<SpacedEntry, StoreError>>,
    ) -> Result<(), StoreError> {
        each!(self, s => s.replace_all(records))
    }
    fn lock_key_operations(&self) -> Result<Option<StoreLock>, StoreError> {
        each!(self, s => s.lock_key_operations())
    }
    fn key_operations_locked(&self) -> Result<Option<bool>, StoreError> {
        each!(self, s => s.key_operations_locked())
    }
    fn writer_turn(&self) -> Result<Option<StoreLock>, StoreError> {
        each!(self, s => s.writer_turn())
    }
}
