//! The CLI's error: a one-line message, a hint on how to fix it, and the exit code.
//! `main` is the one place that turns it into output and an exit status.

use carnet_core::Error as CoreError;
use carnet_storage::StoreError;

/// Exit codes of docs/cli.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success without a word: the reader of stdout went away (a broken pipe).
    Quiet = 0,
    Failure = 1,
    Usage = 2,
    Auth = 3,
    NotFound = 4,
    Integrity = 5,
    InUse = 6,
    NotPermitted = 7,
}

#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(Exit::Failure, message)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The one line printed on stderr.
    pub fn line(&self) -> String {
        match &self.hint {
            Some(h) => format!("carnet: {} ({h})", self.message),
            None => format!("carnet: {}", self.message),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Locked => {
                CliError::new(Exit::InUse, "the vault is in use by another process")
                    .hint("wait for the other carnet command to finish, then try again")
            }
            StoreError::Conflict => CliError::new(
                Exit::InUse,
                "other writers kept changing the vault while this command ran; nothing of it was written",
            )
            .hint("try again"),
            StoreError::NotFound(dir) => CliError::failure(format!("no vault at {dir}"))
                .hint("run `carnet init` first, or pass --vault DIR|URI"),
            StoreError::Denied(why) => CliError::new(Exit::Auth, why).hint(
                "check the user in the URI, its rights in the database (docs/postgresql-hosting.md), and the password in ~/.pgpass, PGPASSFILE or --db-password-file",
            ),
            StoreError::NotEmpty(dir) => CliError::failure(format!("{dir} is not empty"))
                .hint("choose an empty or new directory for a new vault"),
            StoreError::Io { context, source } => {
                let hint = match source.kind() {
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                        "check that the vault directory is writable by you: every command writes to it"
                    }
                    std::io::ErrorKind::StorageFull => "free some disk space; nothing was lost",
                    _ => "check the disk and the vault directory",
                };
                CliError::failure(format!("{context}: {source}")).hint(hint)
            }
            StoreError::Corrupt(_) => CliError::new(Exit::Integrity, e.to_string()).hint(
                "nothing was changed; keep a copy of the vault directory and restore your latest backup (`carnet restore`)",
            ),
            other => CliError::failure(other.to_string()),
        }
    }
}

impl From<CoreError> for CliError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::WrongPassphrase => CliError::new(Exit::Auth, "wrong passphrase")
                .hint("nothing was changed; a damaged key slot also looks like this"),
            CoreError::UnknownUser => CliError::new(Exit::Auth, "no such user in this vault")
                .hint("check --user or CARNET_USER"),
            CoreError::NoSuchPatient => CliError::new(Exit::NotFound, "no such patient")
                .hint("`carnet patient list` shows the registered patients"),
            CoreError::NoSuchNote => CliError::new(Exit::NotFound, "no such note for this patient")
                .hint("`carnet note list ID` shows the patient's notes"),
            CoreError::Integrity(i) => CliError::new(Exit::Integrity, format!("integrity check failed: {i}"))
                .hint("the vault was damaged or tampered with; run `carnet verify` and restore from a backup"),
            CoreError::InvalidArgument(m) => CliError::usage(m),
            CoreError::NotPermitted(role) => {
                CliError::new(Exit::NotPermitted, format!("not permitted for the {role} role"))
                    .hint("ask an administrator, or use --user with an account that has this right")
            }
            CoreError::Storage(s) => s.into(),
            CoreError::Busy { operation, for_at_most } => CliError::new(
                Exit::InUse,
                format!("another administrator's {operation} is under way: it runs alone, and nothing of this command was written"),
            )
            .hint(format!(
                "try again when it is done (at most {} min), or raise --wait",
                for_at_most.as_secs().div_ceil(60)
            )),
            CoreError::KeysChanged => CliError::new(
                Exit::InUse,
                "an administrator changed the vault's keys while this command ran; nothing of it was written",
            )
            .hint("run it again"),
            CoreError::NotAVault => CliError::failure("no vault here")
                .hint("run `carnet init` first, or pass --vault DIR|URI"),
            CoreError::Foreign => CliError::failure("this directory does not hold a Carnet vault (unrecognized files)"),
            CoreError::Unfinished(u) => CliError::failure(format!(
                "{u} is unfinished: nothing new may be written until it is, as it would be sealed under keys it retires"
            ))
            .hint(format!("an administrator must finish it first: {}", crate::render::finish_command(&u))),
            other => CliError::failure(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError::failure(format!("cannot write JSON output: {e}"))
    }
}
