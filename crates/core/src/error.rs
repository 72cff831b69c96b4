//! Errors. No message ever contains a key, a passphrase, a patient identifier, a name or any
//! note content: locations are given as storage positions (blinded indexes, note ids).

use carnet_storage::StoreError;

/// An integrity failure: a stored record failed authentication, is missing, is out of place,
/// or contradicts another record. A wrong key and an altered record look the same here, by
/// design.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrityError {
    location: String,
    problem: String,
}

impl IntegrityError {
    pub(crate) fn new(location: impl Into<String>, problem: impl Into<String>) -> Self {
        IntegrityError {
            location: location.into(),
            problem: problem.into(),
        }
    }

    /// Where the problem is: a record kind and its storage position (never a secret).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What is wrong.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl std::fmt::Display for IntegrityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.problem)
    }
}

/// Everything a [`crate::Vault`] operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not open this user's key slot, or the slot is damaged (the two
    /// cannot be told apart before the key commitment is checked). Nothing was changed.
    #[error("wrong passphrase (or a damaged key slot)")]
    WrongPassphrase,
    /// The vault has no key slot for this user.
    #[error("no such user in this vault")]
    UnknownUser,
    /// The store holds no Carnet vault.
    #[error("no Carnet vault here")]
    NotAVault,
    /// The store already holds a vault.
    #[error("a Carnet vault already exists here")]
    AlreadyAVault,
    /// The store holds data that is not a Carnet vault.
    #[error("this is not a Carnet vault (unrecognized data)")]
    Foreign,
    /// The vault was written by a newer Carnet, in a format this version cannot read.
    #[error("this vault uses format version {found}, newer than this Carnet supports ({supported}); upgrade Carnet")]
    UnsupportedFormat {
        /// The version found.
        found: u32,
        /// The newest version this code reads.
        supported: u32,
    },
    /// No patient with this identifier.
    #[error("no such patient")]
    NoSuchPatient,
    /// The unlocking user's role does not allow this operation.
    #[error("not permitted for the {0} role")]
    NotPermitted(&'static str),
    /// The patient has no note with this id.
    #[error("no such note for this patient")]
    NoSuchNote,
    /// A patient with this identifier is already registered.
    #[error("a patient with this identifier already exists")]
    PatientExists,
    /// An argument is invalid (the message says which rule it breaks, never its value).
    #[error("{0}")]
    InvalidArgument(String),
    /// An input is larger than Carnet accepts.
    #[error("{0}")]
    TooLarge(String),
    /// A stored record failed authentication, is missing, or is out of place.
    #[error("integrity check failed: {0}")]
    Integrity(IntegrityError),
    /// The storage backend failed (including "in use by another process").
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The operating system's random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A bug: an internal invariant did not hold.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<IntegrityError> for Error {
    fn from(e: IntegrityError) -> Self {
        Error::Integrity(e)
    }
}
