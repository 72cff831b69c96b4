//! The storage error type.

use std::io;

/// What can go wrong in a [`crate::Store`].
///
/// Messages name files and spaces, never record contents (which are opaque here anyway).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the store open.
    #[error("the vault is in use by another process")]
    Locked,
    /// There is no store at the given place.
    #[error("no vault store found at {0}")]
    NotFound(String),
    /// The place for a new store already holds something.
    #[error("{0} is not empty")]
    NotEmpty(String),
    /// A batch's precondition did not hold: another writer changed a record first.
    #[error("a concurrent write changed the vault; try again")]
    Conflict,
    /// A database server is unreachable, refused the connection or the credentials, or failed
    /// a statement (the message names no stored value).
    #[error("{0}")]
    Unavailable(String),
    /// A database server refused the credentials (a wrong or missing password, a role it does
    /// not admit).
    #[error("{0}")]
    Denied(String),
    /// The store was written by a newer Carnet (its tables' version), or is not Carnet's.
    #[error("{0}")]
    Unsupported(String),
    /// The backend's own files are damaged.
    #[error("the storage files are damaged: {0}")]
    Corrupt(String),
    /// An operating-system error (full disk, permissions, failing device...).
    #[error("storage I/O failed: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}
