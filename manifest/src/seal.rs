//! Sealing: a manifest encrypted under a random data key, the data key
//! wrapped by a [`KeyProvider`].
//!
//! Envelope v2 (written), little-endian:
//!
//! ```text
//! offset  size  field
//!  0       8    magic "IMGFSSL\0"
//!  8       2    version = 2
//! 10      12    nonce (random)
//! 22       8    ciphertext length n, then the ciphertext with its 16-byte tag
//! 30+n     4    master key id length, then the id (UTF-8)
//!  …       4    wrapped data key length, then the wrapped key
//! ```
//!
//! The first 30 bytes are the ciphertext's associated data. The digest
//! that names the manifest in a store ([`ManifestDigest::of`](crate::ManifestDigest::of)) covers the
//! bytes up to the end of the ciphertext, not the key block after it: so
//! re-wrapping the data key under another master key ([`rewrap_sealed`],
//! key rotation) leaves the digest, and with it every tag and start
//! profile that names the image, as it was. The key block needs no other
//! protection: a wrapped key that was altered fails to unwrap, and one
//! that unwraps to another data key fails the ciphertext's tag.
//!
//! Envelope v1 (still read) put the key id and wrapped key after the
//! version, inside the associated data and the digest; a v1 manifest
//! cannot be re-wrapped without changing its digest.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use crate::format::{DomainMismatch, FormatError, Manifest};
use crate::keys::{DataKey, KeyError, KeyProvider};
use crate::wire::{DecodeError, Reader, Writer, check_len};

/// The first 8 bytes of a sealed manifest.
pub const SEALED_MAGIC: [u8; 8] = *b"IMGFSSL\0";
/// The envelope version this build writes (it reads 1 as well).
pub const SEALED_VERSION: u16 = 2;

const MAX_KEY_ID: u32 = 1024;
const MAX_WRAPPED: u32 = 16 * 1024;
const NONCE_LEN: usize = 12;
/// Magic, version, nonce, ciphertext length: the v2 associated data.
const V2_HEADER_LEN: usize = 8 + 2 + NONCE_LEN + 8;

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
    /// The envelope names a master key that was retired: the manifest
    /// was not re-wrapped (`imagefs rewrap`) before its key was retired.
    #[error(
        "manifest was sealed only with master key `{key_id}`, which is retired: restore the key, or re-convert the image"
    )]
    RetiredMasterKey {
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
    /// A v1 envelope's digest covers its wrapped key: re-wrapping would
    /// change the manifest's name, so it is refused.
    #[error(
        "manifest is in envelope v1, whose digest covers the wrapped key: it cannot be re-wrapped in place (re-convert the image)"
    )]
    NotRewrappable,
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

/// A parsed envelope, borrowing the sealed bytes.
struct Envelope<'a> {
    version: u16,
    key_id: String,
    wrapped: &'a [u8],
    nonce: [u8; NONCE_LEN],
    /// The ciphertext's associated data.
    aad: &'a [u8],
    ciphertext: &'a [u8],
    /// v2: the bytes the digest covers (everything before the key block).
    body: &'a [u8],
}

impl<'a> Envelope<'a> {
    fn parse(sealed: &'a [u8]) -> Result<Self, SealError> {
        let mut r = Reader::new(sealed);
        r.magic("sealed manifest", SEALED_MAGIC)?;
        let version = r.u16("version")?;
        let key_block = |r: &mut Reader<'a>| -> Result<(String, &'a [u8]), SealError> {
            let at = r.offset();
            let key_id = r.string("master key id", MAX_KEY_ID)?;
            let wrapped = r.bytes_u32("wrapped data key", MAX_WRAPPED)?;
            if key_id.is_empty() {
                return Err(SealError::Envelope(DecodeError::Corrupt {
                    what: "master key id",
                    offset: at,
                    reason: "empty".into(),
                }));
            }
            Ok((key_id, wrapped))
        };
        let envelope = match version {
            1 => {
                let (key_id, wrapped) = key_block(&mut r)?;
                let nonce: [u8; NONCE_LEN] = r.array("nonce")?;
                let len = r.u64("ciphertext length")?;
                let aad_end = r.offset();
                let ciphertext = r.take("ciphertext", len)?;
                Envelope {
                    version,
                    key_id,
                    wrapped,
                    nonce,
                    aad: &sealed[..aad_end],
                    ciphertext,
                    body: sealed,
                }
            }
            2 => {
                let nonce: [u8; NONCE_LEN] = r.array("nonce")?;
                let len = r.u64("ciphertext length")?;
                let ciphertext = r.take("ciphertext", len)?;
                let body = &sealed[..r.offset()];
                let (key_id, wrapped) = key_block(&mut r)?;
                Envelope {
                    version,
                    key_id,
                    wrapped,
                    nonce,
                    aad: &sealed[..V2_HEADER_LEN],
                    ciphertext,
                    body,
                }
            }
            found => {
                return Err(SealError::Envelope(DecodeError::UnsupportedVersion {
                    what: "sealed manifest",
                    found,
                    supported: SEALED_VERSION,
                }));
            }
        };
        r.finish()?;
        Ok(envelope)
    }

    fn data_key(&self, keys: &dyn KeyProvider) -> Result<DataKey, SealError> {
        keys.unwrap_key(&self.key_id, self.wrapped)
            .map_err(|e| match e {
                KeyError::UnknownMasterKey { key_id } => SealError::UnknownMasterKey { key_id },
                KeyError::RetiredMasterKey { key_id } => SealError::RetiredMasterKey { key_id },
                e @ KeyError::UnwrapFailed { .. } => SealError::KeyUnwrap {
                    key_id: self.key_id.clone(),
                    source: e,
                },
                other => SealError::Key(other),
            })
    }

    fn decrypt(&self, data_key: &DataKey) -> Result<Manifest, SealError> {
        let mut payload = self.ciphertext.to_vec();
        cipher(data_key)
            .decrypt_in_place(&Nonce::from(self.nonce), self.aad, &mut payload)
            .map_err(|_| SealError::Authentication)?;
        Ok(Manifest::decode(&payload)?)
    }
}

fn write_key_block(w: &mut Writer, key_id: &str, wrapped: &[u8]) -> Result<(), SealError> {
    check_len("master key id", key_id.len(), MAX_KEY_ID)
        .and_then(|()| check_len("wrapped key", wrapped.len(), MAX_WRAPPED))
        .map_err(|reason| FormatError::Invalid { reason })?;
    w.bytes_u32(key_id.as_bytes());
    w.bytes_u32(wrapped);
    Ok(())
}

/// Encodes `manifest`, encrypts it under a fresh random data key, and wraps
/// that key with `keys`' current master key.
pub fn seal(manifest: &Manifest, keys: &dyn KeyProvider) -> Result<Vec<u8>, SealError> {
    let mut payload = manifest.encode()?;
    let data_key = DataKey::generate().map_err(SealError::Random)?;
    let wrapped = keys.wrap_key(&data_key).map_err(SealError::Key)?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(SealError::Random)?;

    let mut w = Writer::with_capacity(payload.len() + 256);
    w.raw(&SEALED_MAGIC);
    w.u16(SEALED_VERSION);
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
    write_key_block(&mut w, &wrapped.key_id, &wrapped.wrapped)?;
    Ok(w.bytes)
}

/// Checks, decrypts and decodes a sealed manifest.
pub fn unseal(sealed: &[u8], keys: &dyn KeyProvider) -> Result<Manifest, SealError> {
    let envelope = Envelope::parse(sealed)?;
    envelope.decrypt(&envelope.data_key(keys)?)
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

/// The id of the master key a sealed manifest's data key is wrapped
/// under, read without any key.
pub fn sealed_key_id(sealed: &[u8]) -> Result<String, SealError> {
    Ok(Envelope::parse(sealed)?.key_id)
}

/// Re-wraps a sealed manifest's data key: unwrapped with `from`, checked
/// by decrypting the manifest, wrapped again with `to`'s current master
/// key. The manifest's ciphertext, and so its digest, stay the same.
pub fn rewrap_sealed(
    sealed: &[u8],
    from: &dyn KeyProvider,
    to: &dyn KeyProvider,
) -> Result<Vec<u8>, SealError> {
    let envelope = Envelope::parse(sealed)?;
    if envelope.version != 2 {
        return Err(SealError::NotRewrappable);
    }
    let data_key = envelope.data_key(from)?;
    // Never re-wrap a key that does not open this manifest.
    envelope.decrypt(&data_key)?;
    let wrapped = to.wrap_key(&data_key).map_err(SealError::Key)?;
    let mut w = Writer::with_capacity(sealed.len() + 64);
    w.raw(envelope.body);
    write_key_block(&mut w, &wrapped.key_id, &wrapped.wrapped)?;
    Ok(w.bytes)
}

/// The bytes of a sealed manifest its digest covers: a v2 envelope's
/// body without the key block; anything else whole.
pub(crate) fn digested_part(sealed: &[u8]) -> &[u8] {
    let header_ok = sealed.len() >= V2_HEADER_LEN
        && sealed[..8] == SEALED_MAGIC
        && sealed[8..10] == 2u16.to_le_bytes();
    if !header_ok {
        return sealed;
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&sealed[22..30]);
    match usize::try_from(u64::from_le_bytes(len))
        .ok()
        .and_then(|n| n.checked_add(V2_HEADER_LEN))
    {
        Some(end) if end <= sealed.len() => &sealed[..end],
        _ => sealed,
    }
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
        // The key block: id length, 19-byte id, wrapped length, 60-byte
        // wrapped key (see LocalKeyProvider).
        let body = sealed.len() - (4 + 19 + 4 + 60);
        assert_eq!(digested_part(&sealed).len(), body);
        // Last byte of the body: the GCM tag of the manifest ciphertext.
        let mut bad = sealed.clone();
        bad[body - 1] ^= 1;
        assert!(matches!(
            unseal(&bad, &keys),
            Err(SealError::Authentication)
        ));
        // A byte in the middle of the ciphertext.
        let mut bad = sealed.clone();
        bad[body - 40] ^= 0x80;
        assert!(matches!(
            unseal(&bad, &keys),
            Err(SealError::Authentication)
        ));
        // A byte of the wrapped data key (the last bytes).
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
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

    #[test]
    fn rewrap_keeps_the_digest_and_changes_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = provider(&tmp, "k");
        let m = manifest("default");
        let sealed = seal(&m, &keys).unwrap();
        let old_id = sealed_key_id(&sealed).unwrap();
        let new_id = keys.rotate().unwrap();
        let rewrapped = rewrap_sealed(&sealed, &keys, &keys).unwrap();
        assert_ne!(rewrapped, sealed);
        assert_eq!(ManifestDigest::of(&rewrapped), ManifestDigest::of(&sealed));
        assert_eq!(sealed_key_id(&rewrapped).unwrap(), new_id);
        assert_eq!(unseal(&rewrapped, &keys).unwrap(), m);
        // Another provider cannot re-wrap what it cannot open.
        let other = provider(&tmp, "other");
        let err = rewrap_sealed(&sealed, &other, &other).unwrap_err();
        assert!(matches!(&err, SealError::UnknownMasterKey { key_id } if *key_id == old_id));
    }

    #[test]
    fn v1_envelopes_still_open_but_are_not_rewrapped() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = provider(&tmp, "k");
        let m = manifest("default");
        // Build a v1 envelope by hand: key block first, inside the AAD.
        let wrapped = keys.wrap_key(&DataKey::generate().unwrap()).unwrap();
        let data_key = keys.unwrap_key(&wrapped.key_id, &wrapped.wrapped).unwrap();
        let mut payload = m.encode().unwrap();
        let mut w = Writer::with_capacity(payload.len() + 256);
        w.raw(&SEALED_MAGIC);
        w.u16(1);
        w.bytes_u32(wrapped.key_id.as_bytes());
        w.bytes_u32(&wrapped.wrapped);
        w.raw(&[7; NONCE_LEN]);
        w.u64(payload.len() as u64 + 16);
        cipher(&data_key)
            .encrypt_in_place(&Nonce::from([7; NONCE_LEN]), &w.bytes, &mut payload)
            .unwrap();
        w.raw(&payload);
        let v1 = w.bytes;
        assert_eq!(unseal(&v1, &keys).unwrap(), m);
        assert_eq!(digested_part(&v1), &v1[..]);
        assert!(matches!(
            rewrap_sealed(&v1, &keys, &keys),
            Err(SealError::NotRewrappable)
        ));
    }
}
