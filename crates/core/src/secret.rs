//! Secret values: zeroized on drop, never printed, exposed only through named calls.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// 256 bits of key material, of no particular role: what the primitives in `crypto.rs` take.
/// Everything else holds a key typed by its role (`keys.rs`), which wraps one of these.
/// Zeroized on drop; no `Debug`, `Clone` or `PartialEq`. A fresh one comes from
/// `crypto::random_key`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct SecretKey([u8; 32]);

impl SecretKey {
    /// Wraps raw key bytes (from the OS generator, a KDF or a decrypted payload).
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(bytes)
    }

    /// The key bytes, for handing to a primitive.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Secret bytes (a decrypted payload, a frame before sealing, a note body), zeroized when
/// dropped. Like `Zeroizing<Vec<u8>>`, but zeroized through zeroize's bulk slice path:
/// `Zeroize for Vec<u8>` writes one volatile byte at a time (zeroize 1.9), which was most of
/// `open_note`'s own time in `verify` (perf). No `Debug`, `Clone` or `PartialEq`.
pub(crate) struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes` (they are zeroized when this drops).
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    /// An empty buffer with room for `n` bytes (growing past it would leave a copy behind).
    pub(crate) fn with_capacity(n: usize) -> Self {
        SecretBytes(Vec::with_capacity(n))
    }
}

impl std::ops::Deref for SecretBytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for SecretBytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
        self.0.spare_capacity_mut().zeroize();
    }
}

/// A passphrase. Zeroized on drop; no `Debug` output; compared only in constant time.
///
/// Build one with [`Passphrase::new`] from the text a user typed (without its line ending).
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// The shortest passphrase accepted for a new key slot, in characters.
    pub const MIN_CHARS: usize = 12;

    /// Wraps a passphrase. The `String` is moved in and zeroized when the passphrase drops.
    pub fn new(text: String) -> Self {
        Passphrase(Zeroizing::new(text))
    }

    /// Whether this passphrase is long enough to protect a new key slot.
    pub fn is_strong_enough(&self) -> bool {
        self.0.chars().count() >= Self::MIN_CHARS
    }

    /// Checks a passphrase for a new key slot of `user`: at least [`Passphrase::MIN_CHARS`]
    /// characters, and not among the easiest to guess. The estimate is zxcvbn's (ADR 0014),
    /// which knows common passwords, names, keyboard rows, repeats and dates, and is told the
    /// user's name: under 10^6 guesses (`aaaaaaaaaaaa`, `password1234`) is refused
    /// ([`Error::InvalidArgument`]); under 10^8 is [`Strength::Weak`]: accepted, but say so.
    pub fn check_new(&self, user: &str) -> Result<Strength, crate::Error> {
        if !self.is_strong_enough() {
            return Err(crate::Error::InvalidArgument(format!(
                "the passphrase is too short: use at least {} characters",
                Self::MIN_CHARS
            )));
        }
        let estimate = zxcvbn::zxcvbn(&self.0, &[user]);
        match estimate.score() {
            zxcvbn::Score::Zero | zxcvbn::Score::One => Err(crate::Error::InvalidArgument(
                "the passphrase is too easy to guess (a repeat, a keyboard row, a common word or password)"
                    .into(),
            )),
            zxcvbn::Score::Two => Ok(Strength::Weak),
            _ => Ok(Strength::Strong),
        }
    }

    /// Whether the passphrase is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time comparison (for "type it again" checks).
    pub fn ct_eq(&self, other: &Passphrase) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// How hard a new passphrase is to guess ([`Passphrase::check_new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strength {
    /// Guessable with some effort (fewer than about 10^8 guesses): accepted, but a longer one
    /// (a few unrelated words) is better.
    Weak,
    /// Safely unguessable by that estimate.
    Strong,
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}
