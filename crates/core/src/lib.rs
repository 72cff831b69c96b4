//! # Carnet: clinicians' notes, encrypted at rest with a key per patient
//!
//! `carnet-core` is the library behind the `carnet` command line, for software vendors who
//! embed Carnet in their own products. It holds the key hierarchy, the on-disk format and the
//! [`Vault`] API; it does no terminal I/O and reaches the disk only through a
//! [`carnet_storage::Store`] you choose (sled on disk, or memory).
//!
//! What a vault guarantees: everything stored is ciphertext (patient identifiers, names, dates,
//! authors and note bodies included), every stored byte is authenticated and bound to its
//! place, and a removed, moved or replaced record is reported as an [`Error::Integrity`],
//! never returned as data.
//!
//! ## A tour
//!
//! Create a vault, register a patient, store a note, read it back:
//!
//! ```
//! use carnet_core::{KdfParams, NewNote, NewPatient, NoteBody, Passphrase, PatientId, Vault};
//! use carnet_storage::MemStore;
//!
//! # fn main() -> Result<(), carnet_core::Error> {
//! // Real vaults use `KdfParams::default()` (64 MiB, 3 passes, 4 lanes); this example is small.
//! let kdf = KdfParams::new(8, 1, 1)?;
//! let passphrase = Passphrase::new("correct horse battery staple".to_string());
//! let vault = Vault::create(MemStore::new(), "admin", &passphrase, kdf)?;
//!
//! let id = PatientId::new("FR-1984-00042")?;
//! let mut patient = NewPatient::new(id.clone());
//! patient.name = Some("Camille Martin".to_string());
//! vault.add_patient(patient)?;
//!
//! let mut note = NewNote::new(NoteBody::new(b"Follow-up in three weeks.".to_vec())?);
//! note.author = Some("Dr Leroy".to_string());
//! let note_id = vault.add_note(&id, note)?;
//!
//! let read = vault.note(&id, &note_id)?;
//! assert_eq!(read.body.as_ref().map(|b| b.as_bytes()), Some(&b"Follow-up in three weeks."[..]));
//!
//! // Amend it: the first version stays readable.
//! vault.amend_note(&id, &note_id, NoteBody::new(b"Follow-up in two weeks.".to_vec())?, None)?;
//! assert_eq!(vault.note_history(&id, &note_id)?.len(), 2);
//!
//! // Check every record and every link between records.
//! assert!(vault.verify(&mut |_, _| {})?.is_ok());
//! # Ok(()) }
//! ```
//!
//! On disk, use [`carnet_storage::SledStore`], and reopen with [`Vault::unlock`]:
//!
//! ```no_run
//! # use carnet_core::{Passphrase, Vault};
//! # use carnet_storage::SledStore;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SledStore::open(std::path::Path::new("/var/lib/carnet"))?;
//! let vault = Vault::unlock(store, "admin", &Passphrase::new("…".to_string()))?;
//! for p in vault.patients()? {
//!     println!("{} notes", p.notes);
//! }
//! # Ok(()) }
//! ```
//!
//! Bulk loads go through [`Vault::import`], which writes atomic batches with one flush each.
//!
//! ## Errors
//!
//! Every operation returns [`Error`]. Messages never contain a secret (no key, passphrase,
//! identifier, name or note text): integrity problems name records by their storage position.
//!
//! ## The format
//!
//! `docs/format.md` in the repository specifies every byte; `docs/key-management.md` the key
//! hierarchy. A vault written by this version is checked into the test suite, and every later
//! version must open it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod access;
mod access_log;
mod backup;
mod crypto;
mod envelope;
mod error;
mod frame;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
mod keyring;
mod keys;
mod keystore;
mod model;
mod par;
mod records;
mod recovery;
mod sealing;
mod secret;
mod unfinished;
mod vault;
#[cfg(test)]
mod vectors;

pub use access::{Role, User};
pub use access_log::{Action, AuditFilter, Checkpoint, LogEntry, ReadLog};
pub use backup::{restore_backup, write_backup, BackupSummary};
pub use error::{Error, IntegrityError, ProblemKind};
pub use frame::MAX_BODY_BYTES;
pub use keyring::KdfParams;
pub use model::{
    BirthDate, NewNote, NewPatient, Note, NoteBody, NoteId, Patient, PatientId, PatientRef,
    SearchHit, Timestamp, MAX_FIELD_BYTES, MAX_PATIENT_ID_BYTES,
};
pub use recovery::RecoveryKey;
pub use secret::{Passphrase, Strength};
pub use unfinished::Unfinished;

/// Every storage space a vault uses: what a store lent to other processes must carry
/// (`carnet_storage::RelayHost`), and nothing else.
pub const STORE_SPACES: &[carnet_storage::Space] = &records::space::ALL;

/// Every document a vault keeps beside its records (the keyring and the key store).
pub const STORE_DOCUMENTS: &[carnet_storage::DocName] = &[keystore::ROOT_DOC, keystore::KEYS_DOC];
pub use vault::{
    is_vault, vault_id, Expected, Import, ImportSummary, KeyStatus, MasterRotation,
    PatientRotation, Patients, Revocation, Upgrade, Vault, VerifyReport,
};
