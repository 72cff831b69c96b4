//! The record envelope: every value Carnet stores (except the keyring) is one.
//! Specified in docs/format.md, "Record envelope" and "Associated data".

use crate::crypto::{self, LABEL_RECORD_AAD, NONCE_LEN, TAG_LEN};
use crate::secret::SecretKey;
use crate::Error;

/// `"CN"`: the first two bytes of every record.
pub(crate) const MAGIC: [u8; 2] = *b"CN";
/// The record format this code writes; it reads this one only.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// XChaCha20-Poly1305 with a 24-byte random nonce.
pub(crate) const ALG_XCHACHA20POLY1305: u8 = 1;
/// magic (2) + format (1) + kind (1) + algorithm (1) + key version (4) + nonce (24).
pub(crate) const HEADER_LEN: usize = 9 + NONCE_LEN;

/// What a record holds; also fixes what its associated data binds it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// The vault keys, wrapped under the master epoch. Binding: nothing.
    VaultKeys = 1,
    /// One patient key version, wrapped under the master epoch. Binding: blind, key version.
    PatientKey = 2,
    /// The patient registry (count and chain head). Binding: nothing.
    Registry = 3,
    /// A patient's identity. Binding: blind.
    Patient = 4,
    /// A patient's manifest (chain head of its notes). Binding: blind.
    Manifest = 5,
    /// One version of one note. Binding: blind, note id, note version.
    Note = 6,
    /// A long operation under way (a rotation, an import, a revocation). Binding: its key.
    Job = 7,
    /// The users and their roles. Binding: its key.
    Users = 8,
    /// One access-log entry. Binding: sequence number, chain value before it.
    LogEntry = 9,
    /// The access log's head (count, chain value). Binding: its key.
    LogHead = 10,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::VaultKeys,
            2 => Kind::PatientKey,
            3 => Kind::Registry,
            4 => Kind::Patient,
            5 => Kind::Manifest,
            6 => Kind::Note,
            7 => Kind::Job,
            8 => Kind::Users,
            9 => Kind::LogEntry,
            10 => Kind::LogHead,
            _ => return None,
        })
    }
}

/// A parsed envelope whose ciphertext has not been opened yet.
pub(crate) struct Sealed<'a> {
    header: &'a [u8],
    pub(crate) kind: Kind,
    /// The version of the key that sealed it (master epoch, or patient key version).
    pub(crate) key_version: u32,
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
}

/// Why an envelope could not be parsed. Not secret: describes structure only.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Not a Carnet record.
    Foreign,
    /// A Carnet record of a format newer than this code.
    FutureVersion(u8),
    /// A known format with bad fields.
    Malformed(&'static str),
}

impl<'a> Sealed<'a> {
    /// Parses the header of `bytes` (no cryptography yet).
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() < 3 || bytes[0..2] != MAGIC {
            return Err(ParseError::Foreign);
        }
        if bytes[2] != FORMAT_VERSION {
            return if bytes[2] > FORMAT_VERSION {
                Err(ParseError::FutureVersion(bytes[2]))
            } else {
                Err(ParseError::Malformed("unknown format version"))
            };
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(ParseError::Malformed("record too short"));
        }
        let kind = Kind::from_byte(bytes[3]).ok_or(ParseError::Malformed("unknown record kind"))?;
        if bytes[4] != ALG_XCHACHA20POLY1305 {
            return Err(ParseError::Malformed("unknown algorithm"));
        }
        let key_version = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[9..HEADER_LEN]);
        Ok(Sealed {
            header: &bytes[..9],
            kind,
            key_version,
            nonce,
            ciphertext: &bytes[HEADER_LEN..],
        })
    }

    /// Opens the record if it is of `kind`, was sealed under `key`, and belongs where
    /// `vault_id` and `binding` say. Every failure is `None`: wrong key, moved, or altered.
    pub(crate) fn open(
        &self,
        kind: Kind,
        key: &SecretKey,
        vault_id: &[u8; 16],
        binding: &[u8],
    ) -> Option<crate::secret::SecretBytes> {
        if self.kind != kind {
            return None;
        }
        let aad = aad(self.header, vault_id, binding);
        crypto::open(key, &self.nonce, &aad, self.ciphertext)
    }

    /// [`Sealed::open`], with the one integrity error every failure becomes, naming `location`.
    pub(crate) fn open_at(
        &self,
        location: impl std::fmt::Display,
        kind: Kind,
        key: &SecretKey,
        vault_id: &[u8; 16],
        binding: &[u8],
    ) -> Result<crate::secret::SecretBytes, Error> {
        self.open(kind, key, vault_id, binding).ok_or_else(|| {
            crate::IntegrityError::new(
                location.to_string(),
                "failed authentication (altered, moved or foreign)",
            )
            .into()
        })
    }
}

/// The associated data: label || header[0..9] || vault id || kind-specific binding.
fn aad(header: &[u8], vault_id: &[u8; 16], binding: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(LABEL_RECORD_AAD.len() + 9 + 16 + binding.len());
    a.extend_from_slice(LABEL_RECORD_AAD);
    a.extend_from_slice(header);
    a.extend_from_slice(vault_id);
    a.extend_from_slice(binding);
    a
}

/// Seals `plaintext` into a new envelope of `kind` under `key` (a fresh random nonce).
pub(crate) fn seal(
    kind: Kind,
    key_version: u32,
    key: &SecretKey,
    vault_id: &[u8; 16],
    binding: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let nonce = crypto::random_nonce()?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out.push(ALG_XCHACHA20POLY1305);
    out.extend_from_slice(&key_version.to_be_bytes());
    out.extend_from_slice(&nonce);
    let aad = aad(&out[..9], vault_id, binding);
    out.extend_from_slice(plaintext);
    crypto::seal_in_place(key, &nonce, &aad, &mut out, HEADER_LEN)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    #[test]
    fn round_trip_and_header_layout() {
        let vid = [7u8; 16];
        let rec = seal(Kind::Note, 3, &key(1), &vid, b"bind", b"hello").unwrap();
        assert_eq!(&rec[..5], &[b'C', b'N', 1, 6, 1]);
        assert_eq!(&rec[5..9], &3u32.to_be_bytes());
        assert_eq!(rec.len(), HEADER_LEN + 5 + TAG_LEN);
        let s = Sealed::parse(&rec).unwrap();
        assert_eq!(s.key_version, 3);
        assert_eq!(
            &*s.open(Kind::Note, &key(1), &vid, b"bind").unwrap(),
            b"hello"
        );
    }

    #[test]
    fn every_binding_input_is_authenticated() {
        let vid = [7u8; 16];
        let rec = seal(Kind::Note, 3, &key(1), &vid, b"bind", b"hello").unwrap();
        let s = Sealed::parse(&rec).unwrap();
        assert!(
            s.open(Kind::Note, &key(2), &vid, b"bind").is_none(),
            "other key"
        );
        assert!(
            s.open(Kind::Note, &key(1), &[8u8; 16], b"bind").is_none(),
            "other vault"
        );
        assert!(
            s.open(Kind::Note, &key(1), &vid, b"bine").is_none(),
            "other place"
        );
        assert!(
            s.open(Kind::Manifest, &key(1), &vid, b"bind").is_none(),
            "other kind"
        );
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x01;
            let opened = Sealed::parse(&bad)
                .ok()
                .and_then(|s| s.open(Kind::Note, &key(1), &vid, b"bind"));
            assert!(opened.is_none(), "a flipped bit at byte {i} is detected");
        }
    }

    #[test]
    fn foreign_and_future_records_are_told_apart() {
        assert_eq!(
            Sealed::parse(b"SQLite format 3\0").err(),
            Some(ParseError::Foreign)
        );
        let mut rec = seal(Kind::Note, 1, &key(1), &[0; 16], b"", b"x").unwrap();
        rec[2] = 2;
        assert_eq!(
            Sealed::parse(&rec).err(),
            Some(ParseError::FutureVersion(2))
        );
        assert!(Sealed::parse(&rec[..HEADER_LEN]).is_err());
    }
}
