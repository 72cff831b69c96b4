//! The domain: patients, notes, identifiers and timestamps.

use std::fmt;
use std::str::FromStr;

use crate::frame::MAX_BODY_BYTES;
use crate::Error;

/// Largest patient identifier, in bytes.
pub const MAX_PATIENT_ID_BYTES: usize = 256;
/// Largest name, author or kind, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

/// A patient's identifier (as the clinic knows it): 1 to 256 bytes of UTF-8.
///
/// It is a secret: its `Debug` output is redacted, and it never appears in an error.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PatientId(String);

impl PatientId {
    /// Validates an identifier: 1 to [`MAX_PATIENT_ID_BYTES`] bytes, not only blanks.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = Self::from_stored(id.into())?;
        if id.0.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "a patient id cannot be blank (only spaces)".into(),
            ));
        }
        Ok(id)
    }

    /// An identifier read back from the vault: only its length is checked (vaults made before
    /// blank identifiers were refused may hold one).
    pub(crate) fn from_stored(id: String) -> Result<Self, Error> {
        if id.is_empty() || id.len() > MAX_PATIENT_ID_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a patient id must be 1 to {MAX_PATIENT_ID_BYTES} bytes of UTF-8"
            )));
        }
        Ok(PatientId(id))
    }

    /// The identifier's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PatientId(<redacted>)")
    }
}

/// A note's id: 16 bytes, written as 32 lowercase hex digits. New ids are the note's position
/// in its patient's chain when it was created (8 bytes, big-endian) then 8 random bytes
/// (ADR 0011), so that a patient's new notes sort after the old ones in the store; readers
/// treat ids as opaque. Not secret: an id reveals nothing about the patient or the date, only
/// how many note versions the patient had before it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NoteId(pub(crate) [u8; 16]);

impl NoteId {
    /// A new id for the note created at chain position `seq` of its patient.
    pub(crate) fn at_position(seq: u64) -> Result<Self, Error> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&seq.to_be_bytes());
        crate::crypto::fill_random(&mut b[8..])?;
        Ok(NoteId(b))
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for NoteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl FromStr for NoteId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        parse_hex16(s).map(NoteId).ok_or(Error::NoSuchNote)
    }
}

/// 16 bytes as 32 lowercase hex digits.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 16]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// 32 hex digits as 16 bytes.
fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A patient's reference (ADR 0021): 16 random bytes drawn when the patient is registered,
/// stored only inside the patient's encrypted record, shown as 32 lowercase hex digits. It
/// names the patient where an identifier must not appear (URLs of `carnet serve`), reveals
/// nothing about the patient, and is derived from no key: someone who held the vault's keys
/// once cannot tell from a reference which patient it names without reading that record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PatientRef(pub(crate) [u8; 16]);

impl PatientRef {
    /// A new random reference.
    pub(crate) fn random() -> Result<Self, Error> {
        let mut b = [0u8; 16];
        crate::crypto::fill_random(&mut b)?;
        Ok(PatientRef(b))
    }

    /// The reference's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl FromStr for PatientRef {
    type Err = Error;
    /// 32 hex digits; anything else names no patient ([`Error::NoSuchPatient`]).
    fn from_str(s: &str) -> Result<Self, Error> {
        parse_hex16(s).map(PatientRef).ok_or(Error::NoSuchPatient)
    }
}

/// A point in time: milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time from the system clock.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
    /// From milliseconds since the Unix epoch.
    pub fn from_unix_millis(ms: i64) -> Self {
        Timestamp(ms)
    }
    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        self.0
    }
}

/// A date of birth, `YYYY-MM-DD`, checked to be a real calendar date.
#[derive(Clone, PartialEq, Eq)]
pub struct BirthDate(String);

impl BirthDate {
    /// Parses `YYYY-MM-DD` (years 0001 to 9999), refusing a date after today (UTC).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let date = Self::from_stored(s)?;
        // Same-width, zero-padded dates compare as text.
        if date.0.as_str() > today().as_str() {
            return Err(Error::InvalidArgument(
                "a birth date cannot be in the future".into(),
            ));
        }
        Ok(date)
    }

    /// A date read back from the vault: a real calendar date (vaults made before dates in the
    /// future were refused may hold one).
    pub(crate) fn from_stored(s: &str) -> Result<Self, Error> {
        let bad =
            || Error::InvalidArgument("a birth date must be a real date written YYYY-MM-DD".into());
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u32, Error> {
            let part = &s[r];
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let days = match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return Err(bad()),
        };
        if y == 0 || d == 0 || d > days {
            return Err(bad());
        }
        Ok(BirthDate(s.to_string()))
    }

    /// The date as `YYYY-MM-DD`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BirthDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BirthDate(<redacted>)")
    }
}

/// Today's date in UTC, `YYYY-MM-DD` (the civil calendar of days since 1970-01-01, after Howard
/// Hinnant's `civil_from_days`).
fn today() -> String {
    civil_date(Timestamp::now().unix_millis().div_euclid(86_400_000))
}

/// The date `days` after 1970-01-01, `YYYY-MM-DD`.
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

pub(crate) fn check_field(what: &str, v: &Option<String>) -> Result<(), Error> {
    match v {
        Some(s) if s.len() > MAX_FIELD_BYTES => Err(Error::InvalidArgument(format!(
            "{what} must be at most {MAX_FIELD_BYTES} bytes"
        ))),
        _ => Ok(()),
    }
}

/// A patient to register: [`NewPatient::new`], then set the fields known. Its `Debug` output
/// shows no field (they are secrets).
#[derive(Clone)]
#[non_exhaustive]
pub struct NewPatient {
    /// The identifier.
    pub id: PatientId,
    /// Full name, if known.
    pub name: Option<String>,
    /// Date of birth, if known.
    pub birth_date: Option<BirthDate>,
}

impl NewPatient {
    /// A patient known only by its identifier.
    pub fn new(id: PatientId) -> Self {
        NewPatient {
            id,
            name: None,
            birth_date: None,
        }
    }
}

/// A registered patient, decrypted.
#[non_exhaustive]
pub struct Patient {
    /// The identifier.
    pub id: PatientId,
    /// Full name, if recorded.
    pub name: Option<String>,
    /// Date of birth, if recorded.
    pub birth_date: Option<BirthDate>,
    /// When the patient was registered.
    pub created_at: Timestamp,
    /// How many notes (not versions) the patient has.
    pub notes: u64,
    /// The patient's reference: `None` in a format-1 vault, and for a patient registered
    /// before references until [`crate::Vault::assign_references`] gives it one.
    pub reference: Option<PatientRef>,
}

impl fmt::Debug for Patient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Patient")
            .field("notes", &self.notes)
            .finish_non_exhaustive()
    }
}

/// A note body: bytes, zeroized when dropped.
pub struct NoteBody(crate::secret::SecretBytes);

impl NoteBody {
    /// Wraps a body, checking it is at most 16 MiB.
    pub fn new(bytes: Vec<u8>) -> Result<Self, Error> {
        if bytes.len() > MAX_BODY_BYTES {
            return Err(Error::TooLarge(format!(
                "the note is {} bytes; the limit is {} bytes (16 MiB)",
                bytes.len(),
                MAX_BODY_BYTES
            )));
        }
        Ok(NoteBody(crate::secret::SecretBytes::new(bytes)))
    }
    /// The body's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the body is empty or only blanks (ASCII spaces, tabs, line breaks): a note a
    /// clinician would not mean to write, refused by every write.
    pub fn is_blank(&self) -> bool {
        self.0.iter().all(u8::is_ascii_whitespace)
    }
}

impl fmt::Debug for NoteBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteBody(<{} bytes>)", self.0.len())
    }
}

/// A note to store: [`NewNote::new`], then set the fields known. Its `Debug` output shows only
/// the body's size.
#[non_exhaustive]
pub struct NewNote {
    /// The text (any bytes, at most 16 MiB).
    pub body: NoteBody,
    /// Who wrote it.
    pub author: Option<String>,
    /// What kind of note it is (consultation, lab result...).
    pub kind: Option<String>,
    /// When it was written; `None`: now. Imports carry the original date.
    pub created_at: Option<Timestamp>,
}

impl fmt::Debug for NewPatient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPatient(<redacted>)")
    }
}

impl fmt::Debug for NewNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewNote")
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl NewNote {
    /// A note with just a body.
    pub fn new(body: NoteBody) -> Self {
        NewNote {
            body,
            author: None,
            kind: None,
            created_at: None,
        }
    }
}

/// One version of a note, decrypted.
#[non_exhaustive]
pub struct Note {
    /// The note's id.
    pub id: NoteId,
    /// The version: 1 for the original, then one more per amendment.
    pub version: u32,
    /// When the note was first written.
    pub created_at: Timestamp,
    /// When this version was written.
    pub updated_at: Timestamp,
    /// Who wrote this version, as given (free text; an amendment given none keeps the
    /// previous version's).
    pub author: Option<String>,
    /// The note's kind.
    pub kind: Option<String>,
    /// The user whose name unlocked the vault that wrote this version: recorded by format 2,
    /// `None` for versions written by format 1.
    pub written_by: Option<String>,
    /// Whether that vault was unlocked with the recovery key.
    pub written_via_recovery_key: bool,
    /// The body's length in bytes.
    pub bytes: u64,
    /// The body, when it was asked for (listings leave it out).
    pub body: Option<NoteBody>,
}

impl fmt::Debug for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Note")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// One search hit.
#[non_exhaustive]
pub struct SearchHit {
    /// The patient.
    pub patient_id: PatientId,
    /// The note.
    pub note_id: NoteId,
    /// The note's current version.
    pub version: u32,
    /// A short piece of the body around the first match.
    pub snippet: String,
    /// The patient's reference (ADR 0021), when it has one.
    pub patient_ref: Option<PatientRef>,
}

impl fmt::Debug for SearchHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchHit")
            .field("note_id", &self.note_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birth_dates_must_be_real() {
        assert!(BirthDate::parse("1984-02-29").is_ok());
        assert!(BirthDate::parse("1900-02-29").is_err());
        assert!(BirthDate::parse("2000-02-29").is_ok());
        for bad in [
            "1984-13-01",
            "1984-00-10",
            "84-01-01",
            "1984-1-1",
            "1984-01-32",
            "abcd-ef-gh",
            "+984-01-01",
        ] {
            assert!(BirthDate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn today_is_the_civil_date() {
        for (days, date) in [
            (0, "1970-01-01"),
            (-1, "1969-12-31"),
            (11_016, "2000-02-29"),
            (20_788, "2026-12-01"),
            (47_541, "2100-03-01"),
        ] {
            assert_eq!(civil_date(days), date);
        }
        let t = today();
        assert!(BirthDate::from_stored(&t).is_ok(), "{t}");
        assert!(BirthDate::parse(&t).is_ok(), "today is not in the future");
        assert!(BirthDate::parse("9999-12-31").is_err(), "the future");
        assert!(BirthDate::from_stored("9999-12-31").is_ok(), "as stored");
    }

    #[test]
    fn patient_ids_are_bounded_and_redacted() {
        assert!(PatientId::new("").is_err());
        assert!(PatientId::new("   ").is_err(), "blank");
        assert!(PatientId::new(" \t").is_err(), "blank");
        assert!(PatientId::from_stored("   ".into()).is_ok(), "as stored");
        assert!(PatientId::new("x".repeat(256)).is_ok());
        assert!(PatientId::new("x".repeat(257)).is_err());
        assert_eq!(
            format!("{:?}", PatientId::new("secret").unwrap()),
            "PatientId(<redacted>)"
        );
    }

    #[test]
    fn inputs_print_no_secret() {
        let mut p = NewPatient::new(PatientId::new("secret-id").unwrap());
        p.name = Some("Secret Name".into());
        let mut n = NewNote::new(NoteBody::new(b"secret body".to_vec()).unwrap());
        n.author = Some("Secret Author".into());
        let shown = format!("{p:?} {n:?}");
        assert!(!shown.contains("ecret"), "{shown}");
    }

    #[test]
    fn note_ids_round_trip_as_hex() {
        let id = NoteId([0xab; 16]);
        assert_eq!(id.to_string().parse::<NoteId>().unwrap(), id);
        assert!("zz".parse::<NoteId>().is_err());
    }
}
