//! Users' roles and what each may do. Roles are enforced by this library; any slot holder can
//! in principle derive the master key (docs/threat-model.md).

use crate::records::RECOVERY_SUFFIX;
use crate::Error;

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Everything a clinician does, plus users and keys.
    Admin,
    /// Patients, notes, import, search, export.
    Clinician,
    /// The access log only (and `verify`).
    Auditor,
}

impl Role {
    pub(crate) fn code(self) -> u8 {
        match self {
            Role::Admin => 1,
            Role::Clinician => 2,
            Role::Auditor => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Role> {
        Some(match c {
            1 => Role::Admin,
            2 => Role::Clinician,
            3 => Role::Auditor,
            _ => return None,
        })
    }

    /// The role's name: `admin`, `clinician` or `auditor`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clinician => "clinician",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Role, Error> {
        match s {
            "admin" => Ok(Role::Admin),
            "clinician" => Ok(Role::Clinician),
            "auditor" => Ok(Role::Auditor),
            _ => Err(Error::InvalidArgument(
                "a role is admin, clinician or auditor".into(),
            )),
        }
    }
}

/// A user of the vault. Its `Debug` output shows the role only (names are personal data).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct User {
    /// The user's name (what `--user` takes).
    pub name: String,
    /// What the user may do.
    pub role: Role,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What work a permission check is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Duty {
    /// Reading or writing patients and notes.
    Clinical,
    /// Users and keys.
    Administration,
    /// Listing users, reading the access log.
    Audit,
}

impl Duty {
    /// Whether `role` may do this work.
    pub(crate) fn allowed_for(self, role: Role) -> bool {
        match self {
            Duty::Clinical => matches!(role, Role::Admin | Role::Clinician),
            Duty::Administration => role == Role::Admin,
            Duty::Audit => matches!(role, Role::Admin | Role::Auditor),
        }
    }
}

/// Checks a new user name: 1 to 64 characters, no control characters, no surrounding spaces,
/// and not ending with what the access log appends for the recovery key (so that a name read
/// back from the log is never ambiguous).
pub(crate) fn check_user_name(name: &str) -> Result<(), Error> {
    let n = name.chars().count();
    if n == 0 || n > 64 || name.chars().any(char::is_control) || name.trim() != name {
        return Err(Error::InvalidArgument(
            "a user name is 1 to 64 characters, without control characters or surrounding spaces"
                .into(),
        ));
    }
    if name.ends_with(RECOVERY_SUFFIX) {
        return Err(Error::InvalidArgument(format!(
            "a user name cannot end with \"{RECOVERY_SUFFIX}\""
        )));
    }
    Ok(())
}
