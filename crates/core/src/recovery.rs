//! The recovery key: 256 random bits, written for people as 55 Crockford base-32 characters in
//! 11 groups of 5, with a 16-bit checksum so that a typo is caught before any key derivation.
//! Specified in docs/format.md, "Recovery key".

use zeroize::Zeroizing;

use crate::crypto::{self, LABEL_RECOVERY_CHECKSUM};
use crate::secret::SecretKey;
use crate::Error;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 32 key bytes and 2 checksum bytes: 272 bits in 55 characters of 5 bits.
const CHARS: usize = 55;

/// A recovery key. Zeroized on drop; no `Debug` output.
pub struct RecoveryKey(SecretKey);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

fn checksum(key: &[u8; 32]) -> [u8; 2] {
    let h = crypto::sha256(&[LABEL_RECOVERY_CHECKSUM, key]);
    [h[0], h[1]]
}

impl RecoveryKey {
    /// A fresh recovery key from the operating system's generator.
    pub(crate) fn random() -> Result<Self, Error> {
        Ok(RecoveryKey(crypto::random_key()?))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// The key as a person copies it: `XXXXX-XXXXX-…` (11 groups of 5).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(34));
        bytes.extend_from_slice(self.expose());
        bytes.extend_from_slice(&checksum(self.expose()));
        let mut out = Zeroizing::new(String::with_capacity(CHARS + 10));
        for i in 0..CHARS {
            if i > 0 && i % 5 == 0 {
                out.push('-');
            }
            let mut v = 0u8;
            for b in 0..5 {
                let bit = i * 5 + b;
                let set = bit < 272 && (bytes[bit / 8] >> (7 - bit % 8)) & 1 == 1;
                v = (v << 1) | u8::from(set);
            }
            out.push(char::from(ALPHABET[usize::from(v)]));
        }
        out
    }

    /// Parses a key as printed (case, spaces and dashes do not matter; `I` and `L` read as `1`,
    /// `O` as `0`). A mistyped key is refused here, before any key derivation.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad =
            |why: &str| Error::InvalidArgument(format!("this is not a valid recovery key: {why}"));
        let mut values = Zeroizing::new(Vec::with_capacity(CHARS));
        for c in text.chars().filter(|c| !c.is_whitespace() && *c != '-') {
            let c = match c.to_ascii_uppercase() {
                'I' | 'L' => '1',
                'O' => '0',
                c => c,
            };
            let v = ALPHABET
                .iter()
                .position(|a| char::from(*a) == c)
                .ok_or_else(|| bad("it contains a character that recovery keys never use"))?;
            values.push(v as u8);
        }
        if values.len() != CHARS {
            return Err(bad("it must have 55 characters (11 groups of 5)"));
        }
        let mut bytes = Zeroizing::new([0u8; 35]);
        for (i, v) in values.iter().enumerate() {
            for b in 0..5 {
                if (v >> (4 - b)) & 1 == 1 {
                    let bit = i * 5 + b;
                    bytes[bit / 8] |= 1 << (7 - bit % 8);
                }
            }
        }
        if bytes[34] != 0 {
            return Err(bad("a character is mistyped"));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[..32]);
        if checksum(&key) != [bytes[32], bytes[33]] {
            return Err(bad("a character is mistyped (the checksum does not match)"));
        }
        Ok(RecoveryKey(SecretKey::from_bytes(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_typos_are_caught() {
        let k = RecoveryKey::random().unwrap();
        let text = k.to_text();
        assert_eq!(RecoveryKey::parse(&text).unwrap().expose(), k.expose());
        // A fixed key, so that the typo sweep below is deterministic.
        let k = RecoveryKey(SecretKey::from_bytes([7; 32]));
        let text = k.to_text();
        assert_eq!(text.len(), 55 + 10);
        assert_eq!(text.split('-').count(), 11);
        let back = RecoveryKey::parse(&text.to_lowercase().replace('-', " ")).unwrap();
        assert_eq!(back.expose(), k.expose());
        // Every single-character substitution is caught by the checksum (or the padding).
        let chars: Vec<char> = text.chars().collect();
        let mut caught = 0;
        for i in (0..chars.len()).filter(|i| chars[*i] != '-') {
            let mut t = chars.clone();
            t[i] = if t[i] == 'Z' { 'Y' } else { 'Z' };
            let typo: String = t.into_iter().collect();
            if RecoveryKey::parse(&typo).is_err() {
                caught += 1;
            }
        }
        assert_eq!(caught, 55);
        assert!(RecoveryKey::parse("ABC").is_err());
        assert!(
            RecoveryKey::parse(&format!("{}U", &text[..text.len() - 1])).is_err(),
            "U is never used"
        );
    }
}
