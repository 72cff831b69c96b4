//! Thin wrappers over the primitives (RustCrypto and dalek): AEAD, HKDF, HMAC, SHA-256, the OS
//! generator. Every label of the format is a named constant here, versioned `carnet/v1/...`
//! (docs/format.md, "Labels"); the keys that use them are typed by role in `keys.rs`.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::secret::{SecretBytes, SecretKey};
use crate::Error;

pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;

// HKDF info labels (docs/format.md, "Labels").
pub(crate) const LABEL_SLOT_KEK: &[u8] = b"carnet/v1/slot/kek";
pub(crate) const LABEL_SLOT_COMMIT: &[u8] = b"carnet/v1/slot/commit";
pub(crate) const LABEL_SEAL_KEY: &[u8] = b"carnet/v1/seal/key";
pub(crate) const LABEL_SEAL_COMMIT: &[u8] = b"carnet/v1/seal/commit";
pub(crate) const LABEL_KEYRING_MAC: &[u8] = b"carnet/v1/master/keyring-mac";
pub(crate) const LABEL_WRAP_VAULT_KEYS: &[u8] = b"carnet/v1/master/wrap-vault-keys";
pub(crate) const LABEL_WRAP_PATIENT_KEY: &[u8] = b"carnet/v1/master/wrap-patient-key";
pub(crate) const LABEL_PATIENT_RECORD: &[u8] = b"carnet/v1/patient/record";
pub(crate) const LABEL_PATIENT_MANIFEST: &[u8] = b"carnet/v1/patient/manifest";
pub(crate) const LABEL_PATIENT_NOTE: &[u8] = b"carnet/v1/patient/note";
// Domain-separation prefixes for HMAC and SHA-256 inputs.
pub(crate) const LABEL_BLIND: &[u8] = b"carnet/v1/blind/patient-id";
pub(crate) const LABEL_SLOT_NAME: &[u8] = b"carnet/v1/slot/name";
pub(crate) const LABEL_REGISTRY_CHAIN: &[u8] = b"carnet/v1/chain/registry";
pub(crate) const LABEL_NOTE_CHAIN: &[u8] = b"carnet/v1/chain/notes";
pub(crate) const LABEL_LOG_CHAIN: &[u8] = b"carnet/v1/chain/log";
pub(crate) const LABEL_RECORD_AAD: &[u8] = b"carnet/v1/record";
pub(crate) const LABEL_SLOT_AAD: &[u8] = b"carnet/v1/slot";
pub(crate) const LABEL_SEAL_AAD: &[u8] = b"carnet/v1/seal";
// Format 2's keyring (docs/format.md, "Keyring", version 2).
pub(crate) const LABEL_SLOT_AAD_V2: &[u8] = b"carnet/v2/slot";
pub(crate) const LABEL_KEYRING_KEY_MAC: &[u8] = b"carnet/v2/keyring/mac";
// The recovery key (docs/format.md, "Recovery key").
pub(crate) const LABEL_RECOVERY_KDF: &[u8] = b"carnet/v1/recovery/kdf";
pub(crate) const LABEL_RECOVERY_CHECKSUM: &[u8] = b"carnet/v1/recovery/checksum";

/// Fills `buf` from the operating system's generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::getrandom(buf).map_err(|_| Error::Random)
}

/// A fresh 256-bit key from the operating system's generator.
pub(crate) fn random_key() -> Result<SecretKey, Error> {
    let mut k = [0u8; 32];
    fill_random(&mut k)?;
    Ok(SecretKey::from_bytes(k))
}

/// A fresh random nonce.
pub(crate) fn random_nonce() -> Result<[u8; NONCE_LEN], Error> {
    let mut n = [0u8; NONCE_LEN];
    fill_random(&mut n)?;
    Ok(n)
}

/// HKDF-SHA-256 (extract with `salt`, expand with `info`) to one 32-byte key.
pub(crate) fn hkdf(salt: Option<&[u8]>, ikm: &[u8], info: &[&[u8]]) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    let mut okm = [0u8; 32];
    // Invariant: HKDF-SHA-256 can expand up to 255 * 32 bytes; 32 always fits.
    #[allow(clippy::expect_used)]
    hk.expand_multi_info(info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    SecretKey::from_bytes(okm)
}

/// A subkey of `key` for one purpose: HKDF-SHA-256 with no salt and `label` as info.
pub(crate) fn subkey(key: &SecretKey, label: &[u8]) -> SecretKey {
    hkdf(None, key.expose(), &[label])
}

/// HMAC-SHA-256 of the concatenated `parts` under `key`.
pub(crate) fn hmac(key: &SecretKey, parts: &[&[u8]]) -> [u8; 32] {
    // Invariant: HMAC accepts keys of any length.
    #[allow(clippy::expect_used)]
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// SHA-256 of the concatenated `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Encrypts `buf[start..]` in place under `key` with `aad`, appending the 16-byte tag.
pub(crate) fn seal_in_place(
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut Vec<u8>,
    start: usize,
) -> Result<(), Error> {
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut buf[start..])
        .map_err(|_| Error::Internal("encryption failed"))?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// Decrypts `ct_and_tag` under `key` with `aad`. Any failure is the one opaque
/// [`crate::IntegrityError`]-worthy outcome: `None`.
pub(crate) fn open(
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ct_and_tag: &[u8],
) -> Option<SecretBytes> {
    if ct_and_tag.len() < TAG_LEN {
        return None;
    }
    let (ct, tag) = ct_and_tag.split_at(ct_and_tag.len() - TAG_LEN);
    let mut out = SecretBytes::new(ct.to_vec());
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            aad,
            &mut out,
            Tag::from_slice(tag),
        )
        .ok()?;
    Some(out)
}
