//! The record envelope: every value Carnet stores (except the keyring) is one.
//! Specified in docs/format.md, "Record envelope" and "Associated data". Which key seals each
//! kind and what it is bound to is `sealing.rs`; every function here is generic over it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crypto::{self, LABEL_RECORD_AAD, NONCE_LEN, TAG_LEN};
use crate::error::{integrity, ProblemKind};
use crate::frame;
use crate::keys::SealingKey;
use crate::sealing::{Kind, RecordKind};
use crate::secret::SecretBytes;
use crate::Error;

/// `"CN"`: the first two bytes of every record.
pub(crate) const MAGIC: [u8; 2] = *b"CN";
/// The newest record format this code reads and writes: 3. A record's format byte names the
/// format of its payload: kinds whose payload format 2 changed (notes, users, log entries) are
/// written with 2 by a format-2 vault; patient records that carry a reference (ADR 0021) with
/// 3; every other kind keeps format 1's payload and byte. Each kind reads only the formats it
/// has, so an older program finds a newer payload "unsupported", never damaged.
pub(crate) const FORMAT_VERSION: u8 = 3;
/// The first record format.
pub(crate) const FORMAT_1: u8 = 1;
/// The record format of format 2's payloads.
pub(crate) const FORMAT_2: u8 = 2;
/// The record format of patient records with a reference.
pub(crate) const FORMAT_3: u8 = 3;
/// XChaCha20-Poly1305 with a 24-byte random nonce.
pub(crate) const ALG_XCHACHA20POLY1305: u8 = 1;
/// magic (2) + format (1) + kind (1) + algorithm (1) + key version (4) + nonce (24).
pub(crate) const HEADER_LEN: usize = 9 + NONCE_LEN;

/// A parsed envelope whose ciphertext has not been opened yet.
pub(crate) struct Sealed<'a> {
    header: &'a [u8],
    /// The record's format (1 or 2): which payload it holds.
    pub(crate) format: u8,
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
        let format = bytes[2];
        if format > FORMAT_VERSION {
            return Err(ParseError::FutureVersion(format));
        }
        if format < FORMAT_1 {
            return Err(ParseError::Malformed("unknown format version"));
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
            format,
            kind,
            key_version,
            nonce,
            ciphertext: &bytes[HEADER_LEN..],
        })
    }

    /// Opens the record if it is of kind `R`, was sealed under `key`, and belongs at `place`
    /// of the vault `vault_id`. Every failure is `None`: wrong key, moved, or altered.
    pub(crate) fn open<R: RecordKind>(
        &self,
        key: &R::Key,
        vault_id: &[u8; 16],
        place: &R::Place,
    ) -> Option<SecretBytes> {
        if self.kind != R::KIND {
            return None;
        }
        let aad = aad::<R>(self.header, vault_id, place);
        crypto::open(key.aead(), &self.nonce, &aad, self.ciphertext)
    }

    /// [`Sealed::open`], with the one integrity error every failure becomes, naming `location`.
    pub(crate) fn open_at<R: RecordKind>(
        &self,
        location: impl std::fmt::Display,
        key: &R::Key,
        vault_id: &[u8; 16],
        place: &R::Place,
    ) -> Result<SecretBytes, Error> {
        self.open::<R>(key, vault_id, place).ok_or_else(|| {
            integrity(
                location.to_string(),
                ProblemKind::FailedAuthentication,
                "failed authentication (altered, moved or foreign)",
            )
        })
    }
}

/// The associated data: label || header[0..9] || vault id || the place's binding.
fn aad<R: RecordKind>(header: &[u8], vault_id: &[u8; 16], place: &R::Place) -> Vec<u8> {
    // The longest binding is a note's storage key.
    let mut a = Vec::with_capacity(LABEL_RECORD_AAD.len() + 9 + 16 + 52);
    a.extend_from_slice(LABEL_RECORD_AAD);
    a.extend_from_slice(header);
    a.extend_from_slice(vault_id);
    R::bind(place, &mut a);
    a
}

/// Seals `plaintext` into a new envelope of kind `R` under `key`, bound to `place` (a fresh
/// random nonce; the header carries the key's version), as a record of format 1.
pub(crate) fn seal<R: RecordKind>(
    key: &R::Key,
    vault_id: &[u8; 16],
    place: &R::Place,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    seal_as::<R>(FORMAT_1, key, vault_id, place, plaintext)
}

/// [`seal`], as a record of `format` (whose payload `plaintext` must be).
pub(crate) fn seal_as<R: RecordKind>(
    format: u8,
    key: &R::Key,
    vault_id: &[u8; 16],
    place: &R::Place,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let nonce = crypto::random_nonce()?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(format);
    out.push(R::KIND as u8);
    out.push(ALG_XCHACHA20POLY1305);
    out.extend_from_slice(&key.version().to_be_bytes());
    out.extend_from_slice(&nonce);
    let aad = aad::<R>(&out[..9], vault_id, place);
    out.extend_from_slice(plaintext);
    crypto::seal_in_place(key.aead(), &nonce, &aad, &mut out, HEADER_LEN)?;
    Ok(out)
}

/// Seals `meta` (with no body) in a frame, as a record of kind `R`.
pub(crate) fn seal_frame<R: RecordKind, M: Serialize>(
    key: &R::Key,
    vault_id: &[u8; 16],
    place: &R::Place,
    meta: &M,
) -> Result<Vec<u8>, Error> {
    seal::<R>(key, vault_id, place, &frame::encode(meta, &[])?)
}

/// The error an envelope that does not parse becomes, naming `location`.
pub(crate) fn parse_error(location: &str, e: ParseError) -> Error {
    match e {
        ParseError::FutureVersion(v) => Error::UnsupportedFormat {
            found: u32::from(v),
            supported: u32::from(FORMAT_VERSION),
        },
        ParseError::Foreign => integrity(location, ProblemKind::Malformed, "not a Carnet record"),
        ParseError::Malformed(what) => integrity(location, ProblemKind::Malformed, what),
    }
}

/// [`seal_frame`], as a record of `format`.
pub(crate) fn seal_frame_as<R: RecordKind, M: Serialize>(
    format: u8,
    key: &R::Key,
    vault_id: &[u8; 16],
    place: &R::Place,
    meta: &M,
) -> Result<Vec<u8>, Error> {
    seal_as::<R>(format, key, vault_id, place, &frame::encode(meta, &[])?)
}

/// Parses and opens a record of kind `R` and format 1 (the only payload of kinds format 2 left
/// alone), decoding its frame's metadata; returns it with the whole frame. Every failure is an
/// integrity error naming `location`.
pub(crate) fn open_frame<R: RecordKind, M: DeserializeOwned>(
    location: &str,
    bytes: &[u8],
    key: &R::Key,
    vault_id: &[u8; 16],
    place: &R::Place,
) -> Result<(M, SecretBytes), Error> {
    let (format, plain) = open_record::<R>(location, bytes, key, vault_id, place)?;
    if format != FORMAT_1 {
        return Err(malformed_payload(location));
    }
    let (meta, _) = frame::decode::<M>(&plain).ok_or_else(|| malformed_payload(location))?;
    Ok((meta, plain))
}

/// Parses and opens a record of kind `R`; returns its format and its plaintext, for the kinds
/// whose payload depends on the format.
pub(crate) fn open_record<R: RecordKind>(
    location: &str,
    bytes: &[u8],
    key: &R::Key,
    vault_id: &[u8; 16],
    place: &R::Place,
) -> Result<(u8, SecretBytes), Error> {
    let sealed = Sealed::parse(bytes).map_err(|e| parse_error(location, e))?;
    let plain = sealed.open_at::<R>(location, key, vault_id, place)?;
    Ok((sealed.format, plain))
}

/// Decodes a frame's metadata as `M`, or the malformed-payload error naming `location`.
pub(crate) fn decode_meta<M: DeserializeOwned>(location: &str, plain: &[u8]) -> Result<M, Error> {
    frame::decode::<M>(plain)
        .map(|(m, _)| m)
        .ok_or_else(|| malformed_payload(location))
}

/// The error for a record that authenticated but whose payload does not decode.
pub(crate) fn malformed_payload(location: impl Into<String>) -> Error {
    integrity(
        location,
        ProblemKind::Malformed,
        "authenticated but malformed payload",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{ManifestKey, NoteKey};
    use crate::records::{Blind, NoteAt};
    use crate::sealing::{ManifestRecord, NoteRecord};

    fn key(b: u8) -> NoteKey {
        NoteKey::for_tests(3, b)
    }

    fn at(n: u8) -> NoteAt {
        NoteAt {
            blind: Blind([n; 32]),
            note: [n; 16],
            version: 1,
        }
    }

    #[test]
    fn round_trip_and_header_layout() {
        let vid = [7u8; 16];
        let rec = seal::<NoteRecord>(&key(1), &vid, &at(1), b"hello").unwrap();
        assert_eq!(&rec[..5], &[b'C', b'N', 1, 6, 1]);
        assert_eq!(&rec[5..9], &3u32.to_be_bytes());
        assert_eq!(rec.len(), HEADER_LEN + 5 + TAG_LEN);
        let s = Sealed::parse(&rec).unwrap();
        assert_eq!(s.key_version, 3);
        assert_eq!(
            &*s.open::<NoteRecord>(&key(1), &vid, &at(1)).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn every_binding_input_is_authenticated() {
        let vid = [7u8; 16];
        let rec = seal::<NoteRecord>(&key(1), &vid, &at(1), b"hello").unwrap();
        let s = Sealed::parse(&rec).unwrap();
        assert!(
            s.open::<NoteRecord>(&key(2), &vid, &at(1)).is_none(),
            "other key"
        );
        assert!(
            s.open::<NoteRecord>(&key(1), &[8u8; 16], &at(1)).is_none(),
            "other vault"
        );
        assert!(
            s.open::<NoteRecord>(&key(1), &vid, &at(2)).is_none(),
            "other place"
        );
        // The same key bytes under another kind's role: the kind byte is checked too.
        assert!(
            s.open::<ManifestRecord>(&ManifestKey::for_tests(3, 1), &vid, &Blind([1; 32]))
                .is_none(),
            "other kind"
        );
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x01;
            let opened = Sealed::parse(&bad)
                .ok()
                .and_then(|s| s.open::<NoteRecord>(&key(1), &vid, &at(1)));
            assert!(opened.is_none(), "a flipped bit at byte {i} is detected");
        }
    }

    #[test]
    fn foreign_and_future_records_are_told_apart() {
        assert_eq!(
            Sealed::parse(b"SQLite format 3\0").err(),
            Some(ParseError::Foreign)
        );
        let mut rec = seal::<NoteRecord>(&key(1), &[0; 16], &at(0), b"x").unwrap();
        rec[2] = 2;
        assert_eq!(Sealed::parse(&rec).ok().map(|s| s.format), Some(2));
        rec[2] = 3;
        assert_eq!(Sealed::parse(&rec).ok().map(|s| s.format), Some(3));
        rec[2] = 4;
        assert_eq!(
            Sealed::parse(&rec).err(),
            Some(ParseError::FutureVersion(4))
        );
        rec[2] = 0;
        assert!(Sealed::parse(&rec).is_err());
        assert!(Sealed::parse(&rec[..HEADER_LEN]).is_err());
    }
}
