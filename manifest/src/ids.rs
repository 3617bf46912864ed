//! Small identifier and position types: chunk ids and keys, chunk indexes,
//! byte offsets and manifest digests.
//!
//! Each wraps a primitive so that an id cannot be passed where a key is
//! expected, or a chunk index where a byte offset is.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Why a textual id or digest could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    /// The text does not have the expected number of hex digits.
    #[error("expected {expected} hex digits, found {found} characters")]
    Length {
        /// Hex digits expected.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// The text contains a character that is not a hex digit.
    #[error("not a hex digit at position {position}")]
    NotHex {
        /// Position (in characters) of the first bad character.
        position: usize,
    },
    /// A manifest digest did not start with `sha256:`.
    #[error("a manifest digest must start with `sha256:`")]
    MissingPrefix,
}

/// Parses exactly 64 lowercase or uppercase hex digits into 32 bytes.
fn parse_hex32(text: &str) -> Result<[u8; 32], IdParseError> {
    if text.len() != 64 {
        return Err(IdParseError::Length {
            expected: 64,
            found: text.chars().count(),
        });
    }
    if let Some(position) = text.bytes().position(|b| !b.is_ascii_hexdigit()) {
        return Err(IdParseError::NotHex { position });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| IdParseError::NotHex { position: 0 })?;
    Ok(out)
}

/// The id of a stored chunk: the SHA-256 of its encrypted object.
///
/// Anyone can check an object against its id without any key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of an encrypted object: SHA-256 over its bytes.
    pub fn of_object(object: &[u8]) -> Self {
        Self(Sha256::digest(object).into())
    }

    /// The ids of several objects, in order: [`ChunkId::of_object`] of
    /// each, hashed as interleaved streams. One SHA-256 stream cannot keep
    /// the CPU's SHA unit busy (each block waits on the last); four can, so
    /// four objects hash in about the time of two.
    pub fn of_objects(objects: &[&[u8]]) -> Vec<Self> {
        let mut digests = vec![[0u8; 32]; objects.len()];
        tape_sha256::hash_many(objects, &mut digests);
        digests.into_iter().map(Self).collect()
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters (the same as `Display`).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl FromStr for ChunkId {
    type Err = IdParseError;

    /// Parses 64 hex digits.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_hex32(text).map(Self)
    }
}

/// The AES-256 key of one chunk, derived from its plaintext and the domain
/// secret. `Debug` never shows the key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ChunkKey(pub [u8; 32]);

impl ChunkKey {
    /// The raw 32 key bytes. Handle with care: this is secret.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as lowercase hex, for an explicit `--show-keys` style request.
    pub fn reveal_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkKey(<redacted>)")
    }
}

/// The position of a chunk in a device: chunk `n` covers bytes
/// `n * chunk_size ..` up to the next chunk or the end of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkIndex(pub u64);

impl fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chunk #{}", self.0)
    }
}

/// A byte offset into a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteOffset(pub u64);

impl fmt::Display for ByteOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}", self.0)
    }
}

/// The SHA-256 of a sealed manifest's bytes (of a v2 envelope, the bytes
/// before its key block: see [`seal`](mod@crate::seal)); its name in a store.
///
/// Displays and parses as `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManifestDigest(pub [u8; 32]);

impl ManifestDigest {
    /// The prefix of the textual form.
    pub const PREFIX: &'static str = "sha256:";

    /// The digest of sealed manifest bytes. The key block of a v2
    /// envelope is left out, so re-wrapping keeps the name.
    pub fn of(sealed: &[u8]) -> Self {
        Self(Sha256::digest(crate::seal::digested_part(sealed)).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits without the `sha256:` prefix (a file-name-safe form).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits without the `sha256:` prefix.
    pub fn from_hex(text: &str) -> Result<Self, IdParseError> {
        parse_hex32(text).map(Self)
    }
}

impl fmt::Display for ManifestDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(self.0))
    }
}

impl fmt::Debug for ManifestDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManifestDigest({self})")
    }
}

impl FromStr for ManifestDigest {
    type Err = IdParseError;

    /// Parses `sha256:<64 hex digits>`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex = text
            .strip_prefix(Self::PREFIX)
            .ok_or(IdParseError::MissingPrefix)?;
        Self::from_hex(hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_hex_round_trip() {
        let id = ChunkId::of_object(b"object");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ChunkId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<ChunkId>().unwrap(), id);
    }

    #[test]
    fn chunk_id_parse_errors() {
        assert_eq!(
            "abc".parse::<ChunkId>(),
            Err(IdParseError::Length {
                expected: 64,
                found: 3
            })
        );
        let bad = format!("{}g", "0".repeat(63));
        assert_eq!(
            bad.parse::<ChunkId>(),
            Err(IdParseError::NotHex { position: 63 })
        );
    }

    #[test]
    fn chunk_key_debug_hides_key() {
        let key = ChunkKey([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn manifest_digest_display_and_parse() {
        let digest = ManifestDigest::of(b"sealed");
        let text = digest.to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(text.len(), 7 + 64);
        assert_eq!(text.parse::<ManifestDigest>().unwrap(), digest);
        assert_eq!(
            digest.to_hex().parse::<ManifestDigest>(),
            Err(IdParseError::MissingPrefix)
        );
        assert_eq!(ManifestDigest::from_hex(&digest.to_hex()).unwrap(), digest);
        // sha256("abc"), a published test vector.
        assert_eq!(
            ManifestDigest::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
