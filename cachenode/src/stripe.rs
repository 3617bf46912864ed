//! The erasure-coded layout of the AZ tier: an object as 4 data stripes
//! plus 1 XOR parity stripe, and the stripe's wire format.
//!
//! Why here and not in `manifest/`: `manifest/` holds the formats of an
//! *image* (what convert writes and every reader of an image parses).
//! A stripe is not part of any image: it is the message between the AZ
//! client and a cache node, written and parsed only by this crate (the
//! client encodes, the node checks the header of a `PUT`, the client
//! decodes). So its encode and decode live side by side in this one
//! module, with a round-trip test, and nothing else touches the bytes.
//!
//! A stripe on the wire (and in a node's memory) is a 48-byte header and
//! the stripe's bytes:
//!
//! ```text
//! offset size field
//!      0    4 magic "IFS5"
//!      4    1 version (1)
//!      5    1 index: 0..=3 data, 4 parity
//!      6    2 reserved, zero
//!      8    8 object length, big-endian (the padding is cut off by it)
//!     16   32 the object's id (SHA-256 of the whole object)
//!     48    … stripe bytes: ceil(length / 4), the last data stripe
//!             zero-padded; parity = XOR of the 4 data stripes
//! ```
//!
//! The id in the header binds a stripe to its object: a node refuses a
//! `PUT` whose header names another object than its path, and a reader
//! refuses a stripe of the wrong object outright (before the rebuilt
//! object's hash would). The index travels in the header rather than in
//! the path, so a node keeps whichever stripe it was given when the
//! fleet changes around it.

use cachetiers::MAX_OBJECT_LEN;
use manifest::ChunkId;

/// Data stripes per object.
pub const DATA_STRIPES: usize = 4;
/// Stripes per object: the data stripes and one parity stripe.
pub const STRIPES: usize = DATA_STRIPES + 1;
/// Index of the parity stripe.
pub const PARITY: usize = DATA_STRIPES;
/// Bytes of a stripe's header.
pub const HEADER_LEN: usize = 48;
/// The largest stripe on the wire: a header and a quarter of the largest
/// object, rounded up.
pub const MAX_STRIPE_LEN: usize = HEADER_LEN + MAX_OBJECT_LEN.div_ceil(DATA_STRIPES);

const MAGIC: &[u8; 4] = b"IFS5";
const VERSION: u8 = 1;

/// Why bytes are not a stripe (of the expected object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StripeError {
    /// Shorter than a header.
    #[error("a stripe of {len} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short {
        /// Its length.
        len: usize,
    },
    /// The magic or version is not this format's.
    #[error("not an AZ stripe (magic or version {found:02x?})")]
    NotAStripe {
        /// The first 5 bytes.
        found: [u8; 5],
    },
    /// The index is past the parity stripe, or the reserved bytes are set.
    #[error("stripe index {index} (reserved {reserved:#06x}) is not 0..=4 with reserved 0")]
    BadIndex {
        /// The index byte.
        index: u8,
        /// The reserved field.
        reserved: u16,
    },
    /// The object length is over the largest object.
    #[error("object length {len} is over the largest object ({MAX_OBJECT_LEN} bytes)")]
    TooLong {
        /// The length in the header.
        len: u64,
    },
    /// The body is not a quarter of the object length (rounded up).
    #[error(
        "stripe body of {got} bytes, but an object of {object_len} bytes has {want}-byte stripes"
    )]
    WrongBodyLength {
        /// The body's length.
        got: usize,
        /// What it must be.
        want: usize,
        /// The object length in the header.
        object_len: u64,
    },
    /// The header names another object than expected.
    #[error("a stripe of chunk {found_id}, expected one of {id}")]
    Mismatch {
        /// The expected object.
        id: ChunkId,
        /// The object in the header.
        found_id: ChunkId,
    },
    /// Stripes to rebuild from disagree on the object length, or are not
    /// four distinct indices.
    #[error("the stripes do not fit together: {problem}")]
    Inconsistent {
        /// What does not fit.
        problem: &'static str,
    },
}

/// A decoded stripe: its header fields and its body (borrowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stripe<'a> {
    /// The object it is part of.
    pub id: ChunkId,
    /// 0..=3 data, 4 parity.
    pub index: usize,
    /// The whole object's length.
    pub object_len: u64,
    /// The stripe's bytes.
    pub body: &'a [u8],
}

/// Bytes per stripe for an object of `len` bytes.
pub fn stripe_len(len: usize) -> usize {
    len.div_ceil(DATA_STRIPES)
}

/// Encodes one stripe: header then `body`.
pub fn encode(id: &ChunkId, index: usize, object_len: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    // `index` is < STRIPES by construction (callers pass 0..STRIPES).
    out.push(u8::try_from(index).unwrap_or(u8::MAX));
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&object_len.to_be_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes a stripe and checks that it is internally consistent (its
/// body is the stripe length of its object length).
pub fn decode(bytes: &[u8]) -> Result<Stripe<'_>, StripeError> {
    if bytes.len() < HEADER_LEN {
        return Err(StripeError::Short { len: bytes.len() });
    }
    if &bytes[..4] != MAGIC || bytes[4] != VERSION {
        let mut found = [0u8; 5];
        found.copy_from_slice(&bytes[..5]);
        return Err(StripeError::NotAStripe { found });
    }
    let index = bytes[5];
    let reserved = u16::from_be_bytes([bytes[6], bytes[7]]);
    if usize::from(index) >= STRIPES || reserved != 0 {
        return Err(StripeError::BadIndex { index, reserved });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let object_len = u64::from_be_bytes(len);
    if object_len > MAX_OBJECT_LEN as u64 {
        return Err(StripeError::TooLong { len: object_len });
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&bytes[16..48]);
    let body = &bytes[HEADER_LEN..];
    // Bounded by MAX_OBJECT_LEN just above, so it fits a usize.
    let want = stripe_len(usize::try_from(object_len).unwrap_or(usize::MAX));
    if body.len() != want {
        return Err(StripeError::WrongBodyLength {
            got: body.len(),
            want,
            object_len,
        });
    }
    Ok(Stripe {
        id: ChunkId(id),
        index: usize::from(index),
        object_len,
        body,
    })
}

/// [`decode`], and the stripe must be of `id`.
pub fn decode_of<'a>(bytes: &'a [u8], id: &ChunkId) -> Result<Stripe<'a>, StripeError> {
    let stripe = decode(bytes)?;
    if stripe.id != *id {
        return Err(StripeError::Mismatch {
            id: *id,
            found_id: stripe.id,
        });
    }
    Ok(stripe)
}

/// Splits `object` into its 5 encoded stripes, by index (the last data
/// stripe zero-padded, parity last).
pub fn split(id: &ChunkId, object: &[u8]) -> [Vec<u8>; STRIPES] {
    let n = stripe_len(object.len());
    let len = object.len() as u64;
    let mut parity = vec![0u8; n];
    let mut data: [Vec<u8>; DATA_STRIPES] = Default::default();
    for (k, slot) in data.iter_mut().enumerate() {
        let start = (k * n).min(object.len());
        let end = ((k + 1) * n).min(object.len());
        let mut body = object[start..end].to_vec();
        body.resize(n, 0);
        xor_into(&mut parity, &body);
        *slot = encode(id, k, len, &body);
    }
    let [a, b, c, d] = data;
    [a, b, c, d, encode(id, PARITY, len, &parity)]
}

/// Rebuilds the object from 4 stripes with distinct indices (any 4 of
/// the 5). The result is not verified here: the caller hashes it against
/// the id (a wrong stripe rebuilds a wrong object).
pub fn rebuild(stripes: &[Stripe<'_>]) -> Result<Vec<u8>, StripeError> {
    if stripes.len() != DATA_STRIPES {
        return Err(StripeError::Inconsistent {
            problem: "not exactly 4 stripes",
        });
    }
    let object_len = stripes[0].object_len;
    let id = stripes[0].id;
    if stripes
        .iter()
        .any(|s| s.object_len != object_len || s.id != id)
    {
        return Err(StripeError::Inconsistent {
            problem: "they name different objects or lengths",
        });
    }
    let mut by_index: [Option<&[u8]>; STRIPES] = [None; STRIPES];
    for s in stripes {
        if by_index[s.index].replace(s.body).is_some() {
            return Err(StripeError::Inconsistent {
                problem: "an index appears twice",
            });
        }
    }
    let n = stripes[0].body.len();
    // Decode checked the length against object_len, which is bounded.
    let len = usize::try_from(object_len).unwrap_or(usize::MAX);
    let mut object = Vec::with_capacity(n * DATA_STRIPES);
    for k in 0..DATA_STRIPES {
        match by_index[k] {
            Some(body) => object.extend_from_slice(body),
            None => {
                // The missing data stripe is the XOR of the other four.
                let mut missing = vec![0u8; n];
                for body in by_index.iter().flatten() {
                    xor_into(&mut missing, body);
                }
                object.extend_from_slice(&missing);
            }
        }
    }
    object.truncate(len);
    Ok(object)
}

fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn header_round_trips() {
        let id = ChunkId::of_object(b"x");
        let bytes = encode(&id, 3, 9, &[1, 2, 3]);
        assert_eq!(bytes.len(), HEADER_LEN + 3);
        let s = decode(&bytes).unwrap();
        assert_eq!(
            s,
            Stripe {
                id,
                index: 3,
                object_len: 9,
                body: &[1, 2, 3]
            }
        );
        assert_eq!(encode(&s.id, s.index, s.object_len, s.body), bytes);
    }

    #[test]
    fn every_4_of_5_rebuild_every_length() {
        for len in [0, 1, 3, 4, 5, 1000, 4096, 65_537] {
            let obj = object(len);
            let id = ChunkId::of_object(&obj);
            let stripes = split(&id, &obj);
            let decoded: Vec<Stripe<'_>> = stripes
                .iter()
                .enumerate()
                .map(|(k, b)| {
                    let s = decode_of(b, &id).unwrap();
                    assert_eq!(s.index, k);
                    s
                })
                .collect();
            for skip in 0..STRIPES {
                let four: Vec<Stripe<'_>> = decoded
                    .iter()
                    .filter(|s| s.index != skip)
                    .cloned()
                    .collect();
                assert_eq!(rebuild(&four).unwrap(), obj, "len {len}, without {skip}");
            }
        }
    }

    #[test]
    fn bad_bytes_are_named() {
        let id = ChunkId::of_object(b"y");
        let good = encode(&id, 1, 8, &[0, 0]);
        assert!(matches!(
            decode(&good[..10]),
            Err(StripeError::Short { len: 10 })
        ));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(
            decode(&magic),
            Err(StripeError::NotAStripe { .. })
        ));
        let mut index = good.clone();
        index[5] = 5;
        assert!(matches!(
            decode(&index),
            Err(StripeError::BadIndex { index: 5, .. })
        ));
        let mut long = good.clone();
        long[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(decode(&long), Err(StripeError::TooLong { .. })));
        let mut body = good.clone();
        body.push(0);
        assert!(matches!(
            decode(&body),
            Err(StripeError::WrongBodyLength {
                got: 3,
                want: 2,
                ..
            })
        ));
        assert!(matches!(
            decode_of(&good, &ChunkId::of_object(b"z")),
            Err(StripeError::Mismatch { .. })
        ));
        let s = decode(&good).unwrap();
        assert!(matches!(
            rebuild(&[s.clone(), s.clone(), s.clone(), s]),
            Err(StripeError::Inconsistent { .. })
        ));
    }
}
