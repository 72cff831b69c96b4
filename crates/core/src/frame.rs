//! The plaintext inside an envelope: a bincode-encoded metadata struct, an optional raw body,
//! and zero padding to a size bucket. Specified in docs/format.md, "Plaintext frame".

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::secret::SecretBytes;
use crate::Error;

/// Largest note body accepted: 16 MiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest metadata struct accepted when decoding (names, authors, kinds are bounded well below).
const MAX_META_BYTES: usize = 64 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_META_BYTES>()
}

/// The padded size of a frame of `n` bytes: 256 bytes at least; above that, rounded up to a
/// multiple of 1/16 of the largest power of two not above `n`, so padding costs under 6.25%.
pub fn padded_len(n: usize) -> usize {
    if n <= 256 {
        return 256;
    }
    let e = usize::BITS - 1 - n.leading_zeros();
    let step = 1usize << (e - 4);
    n.div_ceil(step) * step
}

/// Encodes `meta` and `body` into a padded frame:
/// `u32 BE meta_len || meta || u32 BE body_len || body || zeros`.
pub(crate) fn encode<M: Serialize>(meta: &M, body: &[u8]) -> Result<SecretBytes, Error> {
    let meta_bytes = SecretBytes::new(
        bincode::serde::encode_to_vec(meta, bincode::config::standard())
            .map_err(|_| Error::Internal("metadata encoding failed"))?,
    );
    if meta_bytes.len() > MAX_META_BYTES || body.len() > MAX_BODY_BYTES {
        return Err(Error::Internal("frame part too large"));
    }
    let n = 8 + meta_bytes.len() + body.len();
    let mut out = SecretBytes::with_capacity(padded_len(n));
    // Both lengths were bounded above, far below u32::MAX.
    out.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta_bytes);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(padded_len(n), 0);
    Ok(out)
}

/// Decodes a frame made by [`encode`]: checks both lengths, that bincode consumed every byte of
/// the metadata, and that the padding is all zeros and no longer than the bucket requires.
/// `None` means the (authenticated!) plaintext is not a valid frame: a bug or a forged key.
pub(crate) fn decode<M: DeserializeOwned>(frame: &[u8]) -> Option<(M, &[u8])> {
    let meta_len = u32::from_be_bytes(frame.get(0..4)?.try_into().ok()?) as usize;
    if meta_len > MAX_META_BYTES {
        return None;
    }
    let meta_bytes = frame.get(4..4 + meta_len)?;
    let body_at = 4 + meta_len;
    let body_len = u32::from_be_bytes(frame.get(body_at..body_at + 4)?.try_into().ok()?) as usize;
    if body_len > MAX_BODY_BYTES {
        return None;
    }
    let body = frame.get(body_at + 4..body_at + 4 + body_len)?;
    let used = body_at + 4 + body_len;
    if frame.len() != padded_len(used) || frame[used..].iter().any(|&b| b != 0) {
        return None;
    }
    let (meta, consumed) = bincode::serde::decode_from_slice(meta_bytes, bincode_config()).ok()?;
    if consumed != meta_len {
        return None;
    }
    Some((meta, body))
}

/// Encodes a structured body (format 2's access-log lists) with bincode, as [`encode`]'s body.
pub(crate) fn encode_body<B: Serialize>(body: &B) -> Result<SecretBytes, Error> {
    let bytes = SecretBytes::new(
        bincode::serde::encode_to_vec(body, bincode::config::standard())
            .map_err(|_| Error::Internal("body encoding failed"))?,
    );
    if bytes.len() > MAX_BODY_BYTES {
        return Err(Error::TooLarge(
            "the access-log entry would name too many patients".into(),
        ));
    }
    Ok(bytes)
}

/// Decodes a body made by [`encode_body`]: every byte consumed, at most [`MAX_BODY_BYTES`].
pub(crate) fn decode_body<B: DeserializeOwned>(body: &[u8]) -> Option<B> {
    let config = bincode::config::standard().with_limit::<MAX_BODY_BYTES>();
    let (b, consumed) = bincode::serde::decode_from_slice(body, config).ok()?;
    (consumed == body.len()).then_some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug, Clone)]
    struct M {
        a: u64,
        s: Option<String>,
    }

    #[test]
    fn buckets_cost_little_and_reveal_only_the_bucket() {
        assert_eq!(padded_len(1), 256);
        assert_eq!(padded_len(256), 256);
        assert_eq!(padded_len(257), 272);
        assert_eq!(padded_len(2048), 2048);
        assert_eq!(padded_len(2049), 2176);
        for n in (1..200_000).step_by(97) {
            let p = padded_len(n);
            assert!(p >= n);
            assert!(
                n <= 256 || (p - n) * 16 < n,
                "padding of {n} is under 6.25%"
            );
            assert_eq!(padded_len(p), p, "a bucket size is its own bucket");
        }
    }

    #[test]
    fn trailing_bytes_and_bad_padding_are_refused() {
        let f = encode(&M { a: 1, s: None }, b"body").unwrap();
        assert!(decode::<M>(&f).is_some());
        let mut longer = f.to_vec();
        longer.extend_from_slice(&[0u8; 16]);
        assert!(decode::<M>(&longer).is_none(), "padding beyond the bucket");
        let mut dirty = f.to_vec();
        let last = dirty.len() - 1;
        dirty[last] = 1;
        assert!(decode::<M>(&dirty).is_none(), "non-zero padding");
        let mut meta_len_off = f.to_vec();
        meta_len_off[3] += 1;
        assert!(
            decode::<M>(&meta_len_off).is_none(),
            "metadata not wholly consumed"
        );
    }

    proptest! {
        #[test]
        fn frames_round_trip(a in any::<u64>(), s in proptest::option::of(".{0,40}"),
                             body in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let m = M { a, s };
            let f = encode(&m, &body).unwrap();
            prop_assert_eq!(f.len(), padded_len(f.len()));
            let (back, b) = decode::<M>(&f).unwrap();
            prop_assert_eq!(back, m);
            prop_assert_eq!(b, &body[..]);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode::<M>(&bytes);
        }
    }
}
