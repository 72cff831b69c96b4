//! Key operations that an interruption left unfinished, as the vault reports them.

/// A long operation that an interruption left unfinished. Each is finished by running the same
/// operation again; nothing is lost meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unfinished {
    /// A master-key rotation to this epoch ([`crate::Vault::rotate_master`]).
    MasterRotation {
        /// The epoch the rotation goes to.
        to_epoch: u32,
    },
    /// A rotation of every patient's key ([`crate::Vault::rotate_patients`] with
    /// [`crate::Patients::All`]).
    AllPatientsRotation,
    /// A revocation: a user's removal ([`crate::Vault::remove_user`] of the same user) or a
    /// passphrase change, which revokes the old passphrase
    /// ([`crate::Vault::change_passphrase_with`] again).
    Revocation,
    /// An upgrade to format 2 ([`crate::Vault::upgrade`] again): the vault is in format 2,
    /// and the entries recording every patient's state are still being written.
    Upgrade,
    /// Rotations of single patients' keys ([`crate::Vault::rotate_patients`], one patient or all).
    PatientRotations {
        /// How many patients.
        patients: u64,
    },
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfinished::MasterRotation { to_epoch } => {
                write!(f, "a master-key rotation to epoch {to_epoch}")
            }
            Unfinished::AllPatientsRotation => f.write_str("a rotation of every patient's key"),
            Unfinished::Revocation => {
                f.write_str("a revocation (a user's removal or a passphrase change)")
            }
            Unfinished::Upgrade => f.write_str("an upgrade to format 2"),
            Unfinished::PatientRotations { patients } => {
                write!(f, "the key rotation of {patients} patient(s)")
            }
        }
    }
}
