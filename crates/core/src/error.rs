//! Errors. No message ever contains a key, a passphrase, a patient identifier, a name or any
//! note content: locations are given as storage positions (blinded indexes, note ids).

use carnet_storage::StoreError;

/// What kind of integrity problem was found: something callers can act on without parsing the
/// message. Every authentication failure is one kind ([`ProblemKind::FailedAuthentication`]):
/// an altered record, a record moved to another place and one sealed under another key cannot
/// be told apart, by design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A record that must exist is not stored (a deleted patient record, manifest, key, log
    /// head...).
    Missing,
    /// A record is stored under a place or a position it does not belong to: out of place in
    /// its chain, sealed under the wrong key version for where it is, or naming another patient.
    Moved,
    /// A record belongs to nothing registered (a note or manifest of no patient).
    Orphan,
    /// A record failed authentication: altered, moved to another storage key, sealed under
    /// another key, or from another vault.
    FailedAuthentication,
    /// A record is not a well-formed Carnet record (or authenticated but malformed: a bug or a
    /// forged key).
    Malformed,
    /// Records disagree with the count or chain that covers them: one was removed, added or
    /// replaced.
    Inconsistent,
    /// The vault is older than a state it must contain (a checkpoint kept off the server).
    RolledBack,
}

/// An integrity failure: a stored record failed authentication, is missing, is out of place,
/// or contradicts another record. A wrong key and an altered record look the same here, by
/// design.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrityError {
    location: String,
    kind: ProblemKind,
    problem: String,
}

impl IntegrityError {
    pub(crate) fn new(
        location: impl Into<String>,
        kind: ProblemKind,
        problem: impl Into<String>,
    ) -> Self {
        IntegrityError {
            location: location.into(),
            kind,
            problem: problem.into(),
        }
    }

    /// Where the problem is: a record kind and its storage position (never a secret).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What kind of problem it is.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// What is wrong, in words (never a secret).
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl std::fmt::Display for IntegrityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.problem)
    }
}

/// An [`Error::Integrity`] of `kind` at `location`.
pub(crate) fn integrity(
    location: impl Into<String>,
    kind: ProblemKind,
    problem: impl Into<String>,
) -> Error {
    Error::Integrity(IntegrityError::new(location, kind, problem))
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
    /// A key operation left unfinished (a user's revocation, a master-key rotation) must be
    /// finished before anything new is written: until then, new records would be sealed under
    /// keys that the operation retires (a removed user may hold them). Running the same
    /// operation again finishes it. Nothing was changed.
    #[error("{0} is unfinished: finish it before anything new is written")]
    Unfinished(crate::unfinished::Unfinished),
    /// A stored record failed authentication, is missing, or is out of place.
    #[error("integrity check failed: {0}")]
    Integrity(IntegrityError),

    /// Another process changed the vault's keys (a rotation, a revocation, a new or removed
    /// user, an erasure, an upgrade) since this `Vault` read them: nothing of this call was
    /// written. Call [`crate::Vault::reload`], then try again.
    #[error("another process changed the vault's keys while this ran; nothing of it was written")]
    KeysChanged,

    /// A key operation of another process (a rotation, a revocation, a user added or removed,
    /// an erasure, an upgrade) is under way: it runs alone. Try again when it is done, then
    /// [`crate::Vault::reload`].
    #[error("another administrator's {operation} is under way (it runs alone)")]
    Busy {
        /// What is under way, in words.
        operation: &'static str,
        /// How long, at most, it holds the vault before its lease runs out (it renews it while
        /// it works).
        for_at_most: std::time::Duration,
    },
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
