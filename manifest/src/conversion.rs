//! Conversion records: which sealed manifest a source image became.
//!
//! `convert` looks a [`ConversionKey`] up in the catalog before doing any
//! work, so converting the same source manifest with the same options a
//! second time is a no-op. The key covers everything the output depends
//! on: the source manifest digest (which fixes the platform, the config
//! and every layer), the domain, the ext4 layout options and the layout
//! version. It is keyed by the domain secret, so someone who can list the
//! store cannot tell which public images a domain converted, and a store
//! whose domain secret changed does not match old records.
//!
//! The record stored under the key is one line, the manifest digest:
//! `sha256:<64 hex>\n` ([`encode_record`], [`decode_record`]).

use std::fmt;

use aes_gcm::aead::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::chunk_size::ChunkSize;
use crate::convergent::DomainSecret;
use crate::ids::{IdParseError, ManifestDigest};

/// Bumped whenever the converter's output changes for the same input
/// (a different ext4 layout, chunking or manifest encoding), so records
/// made by an older converter stop matching.
pub const LAYOUT_VERSION: u32 = 1;

/// Longest record a store needs to read (a digest line, with room).
pub const MAX_RECORD_LEN: u64 = 1024;

/// What a conversion's output depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversionInputs<'a> {
    /// The source image's manifest digest (`sha256:…`); for a legacy
    /// `docker save` archive, its config digest.
    pub source_digest: &'a str,
    /// The dedup domain.
    pub domain: &'a str,
    /// The chunk size.
    pub chunk_size: ChunkSize,
    /// Extra free space in the ext4 image, in bytes.
    pub free_bytes: u64,
    /// Spare inodes in the ext4 image.
    pub spare_inodes: u32,
}

/// Where a conversion's record lives: a keyed hash of its inputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConversionKey([u8; 32]);

impl ConversionKey {
    /// HMAC-SHA-256 under a key derived from the domain secret, over a
    /// length-prefixed encoding of the inputs (so no two input sets
    /// encode alike).
    pub fn derive(secret: &DomainSecret, inputs: &ConversionInputs<'_>) -> Self {
        let mut sub = hmac(secret.as_bytes());
        sub.update(b"imagefs conversion record key");
        let mut mac = hmac(&sub.finalize().into_bytes().into());
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_le_bytes());
            mac.update(bytes);
        };
        field(&LAYOUT_VERSION.to_le_bytes());
        field(inputs.source_digest.as_bytes());
        field(inputs.domain.as_bytes());
        field(&inputs.chunk_size.as_u64().to_le_bytes());
        field(&inputs.free_bytes.to_le_bytes());
        field(&inputs.spare_inodes.to_le_bytes());
        ConversionKey(mac.finalize().into_bytes().into())
    }

    /// 64 lowercase hex digits: the record's name in a catalog.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ConversionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversionKey({})", self.to_hex())
    }
}

impl fmt::Display for ConversionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// HMAC-SHA-256 keyed with 32 bytes (zero-padded to the block, which is
/// what HMAC does itself, without a fallible constructor).
fn hmac(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

/// The bytes of the record naming `digest`.
pub fn encode_record(digest: &ManifestDigest) -> Vec<u8> {
    format!("{digest}\n").into_bytes()
}

/// The digest a record names; anything but one digest line is an error.
pub fn decode_record(bytes: &[u8]) -> Result<ManifestDigest, IdParseError> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.strip_suffix('\n').unwrap_or(&text);
    line.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ConversionInputs<'static> {
        ConversionInputs {
            source_digest: "sha256:aa",
            domain: "default",
            chunk_size: ChunkSize::new(512 * 1024).unwrap(),
            free_bytes: 64 << 20,
            spare_inodes: 4096,
        }
    }

    #[test]
    fn a_record_round_trips() {
        let digest = ManifestDigest::of(b"sealed");
        let bytes = encode_record(&digest);
        assert_eq!(bytes, format!("{digest}\n").into_bytes());
        assert_eq!(decode_record(&bytes).unwrap(), digest);
        assert!(decode_record(b"sha256:12\n").is_err());
        assert!(decode_record(b"").is_err());
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert!(decode_record(&two).is_err());
    }

    #[test]
    fn every_input_and_the_secret_change_the_key() {
        let secret = DomainSecret::from_bytes([7; 32]);
        let base = ConversionKey::derive(&secret, &inputs());
        assert_eq!(base, ConversionKey::derive(&secret, &inputs()));
        let other_secret = DomainSecret::from_bytes([8; 32]);
        let variants = [
            ConversionInputs {
                source_digest: "sha256:ab",
                ..inputs()
            },
            ConversionInputs {
                domain: "other",
                ..inputs()
            },
            ConversionInputs {
                chunk_size: ChunkSize::new(1024 * 1024).unwrap(),
                ..inputs()
            },
            ConversionInputs {
                free_bytes: 0,
                ..inputs()
            },
            ConversionInputs {
                spare_inodes: 1,
                ..inputs()
            },
        ];
        for v in &variants {
            assert_ne!(ConversionKey::derive(&secret, v), base, "{v:?}");
        }
        assert_ne!(ConversionKey::derive(&other_secret, &inputs()), base);
        assert_eq!(base.to_hex().len(), 64);
    }
}
