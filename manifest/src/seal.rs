//! Sealing: a manifest encrypted under a random data key, the data key
//! wrapped by a [`KeyProvider`].
//!
//! Envelope v1, little-endian:
//!
//! ```text
//! offset  size  field
//!  0       8    magic "IMGFSSL\0"
//!  8       2    version = 1
//! 10       4    master key id length, then the id (UTF-8)
//!  …       4    wrapped data key length, then the wrapped key
//!  …      12    nonce (random)
//!  …       8    ciphertext length, then the ciphertext with its 16-byte tag
//! ```
//!
//! Everything before the ciphertext is authenticated as associated data,
//! so altering any byte of the envelope is detected. The digest of the
//! whole envelope ([`ManifestDigest::of`](crate::ManifestDigest::of)) names
//! the manifest in a store.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use crate::format::{DomainMismatch, FormatError, Manifest};
use crate::keys::{DataKey, KeyError, KeyProvider};
use crate::wire::{DecodeError, Reader, Writer, check_len};

/// The first 8 bytes of a sealed manifest.
pub const SEALED_MAGIC: [u8; 8] = *b"IMGFSSL\0";
/// The envelope version this build writes and reads.
pub const SEALED_VERSION: u16 = 1;

const MAX_KEY_ID: u32 = 1024;
const MAX_WRAPPED: u32 = 16 * 1024;
const NONCE_LEN: usize = 12;

/// Why a manifest could not be sealed or unsealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The bytes are not a well-formed envelope: bad magic, unsupported
    /// version, truncated, or overlong. The cause says which, and where.
    #[error("not a valid sealed manifest: {0}")]
    Envelope(#[source] DecodeError),
    /// The envelope names a master key the provider does not have.
    #[error("manifest was sealed with master key `{key_id}`, which the key provider does not have")]
    UnknownMasterKey {
        /// The master key id recorded in the envelope.
        key_id: String,
    },
    /// The wrapped data key failed authentication: wrong master key, or the
    /// envelope was altered.
    #[error("cannot unwrap the manifest's data key: {source}")]
    KeyUnwrap {
        /// The master key id recorded in the envelope.
        key_id: String,
        /// The provider's error.
        source: KeyError,
    },
    /// The manifest ciphertext failed authentication: the envelope was
    /// altered after sealing.
    #[error(
        "sealed manifest failed authentication: its bytes were altered or it was sealed with another data key"
    )]
    Authentication,
    /// The key provider failed for another reason.
    #[error("key provider error: {0}")]
    Key(#[source] KeyError),
    /// The manifest could not be encoded, or the decrypted bytes are not a
    /// valid manifest.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The manifest belongs to another domain than expected.
    #[error(transparent)]
    DomainMismatch(#[from] DomainMismatch),
    /// No random bytes for the data key or nonce.
    #[error("cannot get random bytes: {0}")]
    Random(getrandom::Error),
}

impl From<DecodeError> for SealError {
    fn from(e: DecodeError) -> Self {
        SealError::Envelope(e)
    }
}

fn cipher(key: &DataKey) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.as_bytes()))
}

/// Encodes `manifest`, encrypts it under a fresh random data key, and wraps
/// that key with `keys`' current master key.
pub fn seal(manifest: &Manifest, keys: &dyn KeyProvider) -> Result<Vec<u8>, SealError> {
    let mut payload = manifest.encode()?;
    let data_key = DataKey::generate().map_err(SealError::Random)?;
    let wrapped = keys.wrap_key(&data_key).map_err(SealError::Key)?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(SealError::Random)?;
    check_len("master key id", wrapped.key_id.len(), MAX_KEY_ID)
        .and_then(|()| check_len("wrapped key", wrapped.wrapped.len(), MAX_WRAPPED))
        .map_err(|reason| FormatError::Invalid { reason })?;

    let mut w = Writer::with_capacity(payload.len() + 256);
    w.raw(&SEALED_MAGIC);
    w.u16(SEALED_VERSION);
    w.bytes_u32(wrapped.key_id.as_bytes());
    w.bytes_u32(&wrapped.wrapped);
    w.raw(&nonce);
    w.u64(payload.len() as u64 + 16);
    cipher(&data_key)
        .encrypt_in_place(&Nonce::from(nonce), &w.bytes, &mut payload)
        .map_err(|_| FormatError::Invalid {
            reason: format!(
                "manifest of {} bytes is too large to encrypt",
                payload.len()
            ),
        })?;
    w.raw(&payload);
    Ok(w.bytes)
}

/// Checks, decrypts and decodes a sealed manifest.
pub fn unseal(sealed: &[u8], keys: &dyn KeyProvider) -> Result<Manifest, SealError> {
    let mut r = Reader::new(sealed);
    r.magic("sealed manifest", SEALED_MAGIC)?;
    r.version("sealed manifest", SEALED_VERSION)?;
    let key_id_at = r.offset();
    let key_id = r.string("master key id", MAX_KEY_ID)?;
    let wrapped = r.bytes_u32("wrapped data key", MAX_WRAPPED)?;
    let nonce: [u8; NONCE_LEN] = r.array("nonce")?;
    let len = r.u64("ciphertext length")?;
    let aad_end = r.offset();
    let ciphertext = r.take("ciphertext", len)?;
    r.finish()?;
    if key_id.is_empty() {
        return Err(SealError::Envelope(DecodeError::Corrupt {
            what: "master key id",
            offset: key_id_at,
            reason: "empty".into(),
        }));
    }

    let data_key = keys.unwrap_key(&key_id, wrapped).map_err(|e| match e {
        KeyError::UnknownMasterKey { key_id } => SealError::UnknownMasterKey { key_id },
        e @ KeyError::UnwrapFailed { .. } => SealError::KeyUnwrap {
            key_id: key_id.clone(),
            source: e,
        },
        other => SealError::Key(other),
    })?;
    let mut payload = ciphertext.to_vec();
    cipher(&data_key)
        .decrypt_in_place(&Nonce::from(nonce), &sealed[..aad_end], &mut payload)
        .map_err(|_| SealError::Authentication)?;
    Ok(Manifest::decode(&payload)?)
}

/// [`unseal`], then checks that the manifest belongs to `expected_domain`.
pub fn unseal_for_domain(
    sealed: &[u8],
    keys: &dyn KeyProvider,
    expected_domain: &str,
) -> Result<Manifest, SealError> {
    let manifest = unseal(sealed, keys)?;
    manifest.check_domain(expected_domain)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManifestDigest;
    use crate::chunk_size::ChunkSize;
    use crate::format::{ChunkEntry, ImageConfig};
    use crate::ids::{ChunkId, ChunkKey};
    use crate::keys::LocalKeyProvider;

    fn manifest(domain: &str) -> Manifest {
        Manifest {
            source_digest: "sha256:feed".into(),
            domain: domain.into(),
            filesystem: "ext4".into(),
            config: ImageConfig {
                cmd: vec!["/bin/true".into()],
                ..ImageConfig::default()
            },
            device_size: 3 * 65536,
            chunk_size: ChunkSize::MIN,
            chunks: vec![
                ChunkEntry::Hole,
                ChunkEntry::Present {
                    id: ChunkId([1; 32]),
                    key: ChunkKey([2; 32]),
                },
                ChunkEntry::Hole,
            ],
        }
    }

    fn provider(tmp: &tempfile::TempDir, name: &str) -> LocalKeyProvider {
        LocalKeyProvider::create(tmp.path().join(name)).unwrap()
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = provider(&tmp, "k");
        let m = manifest("default");
        let sealed = seal(&m, &keys).unwrap();
        assert_eq!(&sealed[..8], b"IMGFSSL\0");
        assert_eq!(unseal(&sealed, &keys).unwrap(), m);
        // A fresh data key and nonce every time: two seals differ.
        let again = seal(&m, &keys).unwrap();
        assert_ne!(ManifestDigest::of(&sealed), ManifestDigest::of(&again));
        // The plaintext manifest is not visible in the envelope.
        assert!(!sealed.windows(8).any(|w| w == b"IMGFSMF\0"));
    }

    #[test]
    fn missing_master_key_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let sealer = provider(&tmp, "a");
        let other = provider(&tmp, "b");
        let sealed = seal(&manifest("default"), &sealer).unwrap();
        let err = unseal(&sealed, &other).unwrap_err();
        let id = sealer.current_key_id().unwrap();
        assert!(matches!(&err, SealError::UnknownMasterKey { key_id } if *key_id == id));
        assert!(err.to_string().contains(&id), "{err}");
    }

    #[test]
    fn altered_bytes_fail_authentication() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = provider(&tmp, "k");
        let sealed = seal(&manifest("default"), &keys).unwrap();
        // Last byte: the GCM tag of the manifest ciphertext.
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            unseal(&bad, &keys),
            Err(SealError::Authentication)
        ));
        // A byte in the middle of the ciphertext.
        let mut bad = sealed.clone();
        let mid = sealed.len() - 40;
        bad[mid] ^= 0x80;
        assert!(matches!(
            unseal(&bad, &keys),
            Err(SealError::Authentication)
        ));
        // A byte of the wrapped data key (after magic, version, id).
        let mut bad = sealed.clone();
        bad[8 + 2 + 4 + 19 + 4 + 5] ^= 1;
        assert!(matches!(
            unseal(&bad, &keys),
            Err(SealError::KeyUnwrap { .. })
        ));
        // Every single-byte change is caught one way or another.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(unseal(&bad, &keys).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn truncated_envelope_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = provider(&tmp, "k");
        let sealed = seal(&manifest("default"), &keys).unwrap();
        for len in 0..sealed.len() {
            match unseal(&sealed[..len], &keys) {
                Err(SealError::Envelope(DecodeError::Truncated { .. })) => {}
                other => panic!("prefix of {len} bytes gave {other:?}"),
            }
        }
        let err = unseal(&sealed[..sealed.len() - 1], &keys).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut long = sealed.clone();
        long.push(0);
        assert!(matches!(
            unseal(&long, &keys),
            Err(SealError::Envelope(DecodeError::TrailingBytes { .. }))
        ));
    }

    #[test]
    fn bad_magic_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = provider(&tmp, "k");
        let plain = manifest("default").encode().unwrap();
        let err = unseal(&plain, &keys).unwrap_err();
        assert!(matches!(
            err,
            SealError::Envelope(DecodeError::BadMagic { .. })
        ));
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn rotation_keeps_old_manifests_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = provider(&tmp, "k");
        let m = manifest("default");
        let old = seal(&m, &keys).unwrap();
        keys.rotate().unwrap();
        let new = seal(&m, &keys).unwrap();
        assert_eq!(unseal(&old, &keys).unwrap(), m);
        assert_eq!(unseal(&new, &keys).unwrap(), m);
    }

    #[test]
    fn other_domain_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = provider(&tmp, "k");
        let sealed = seal(&manifest("tenant-a"), &keys).unwrap();
        unseal_for_domain(&sealed, &keys, "tenant-a").unwrap();
        let err = unseal_for_domain(&sealed, &keys, "tenant-b").unwrap_err();
        assert!(matches!(
            &err,
            SealError::DomainMismatch(DomainMismatch { expected, found })
                if expected == "tenant-b" && found == "tenant-a"
        ));
    }
}
