//! Convergent encryption of chunks.
//!
//! - key = HMAC-SHA-256(domain secret, plaintext)
//! - object = AES-256-GCM(key, all-zero 96-bit nonce, plaintext) ‖ 16-byte tag
//! - id = SHA-256(object)
//!
//! The same plaintext in the same domain always gives the same object, so it
//! is stored once. In another domain the key, and so the object and id, are
//! unrelated. Someone holding a plaintext but not the domain secret cannot
//! compute its key, so cannot confirm that a stored object contains it.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest as _, Sha256};

use crate::ids::{ChunkId, ChunkKey};

/// Length of the GCM authentication tag appended to every object.
pub const TAG_LEN: usize = 16;

/// Why a chunk object could not be verified or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvergentError {
    /// The object's SHA-256 is not the id it was fetched under.
    #[error("chunk {expected}: object bytes hash to {actual}, not to its id")]
    IdMismatch {
        /// The id the object was expected to have.
        expected: ChunkId,
        /// The SHA-256 of the bytes actually given.
        actual: ChunkId,
    },
    /// The object is shorter than a GCM tag, so cannot be a chunk object.
    #[error("chunk {id}: object is {len} bytes, shorter than the {TAG_LEN}-byte tag")]
    TooShort {
        /// The chunk's id.
        id: ChunkId,
        /// The object's length.
        len: usize,
    },
    /// GCM authentication failed: the key does not belong to this object.
    #[error("chunk {id}: decryption failed authentication (wrong key for this chunk)")]
    Authentication {
        /// The chunk's id.
        id: ChunkId,
    },
}

/// The secret that scopes convergent encryption to one domain.
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DomainSecret([u8; 32]);

impl DomainSecret {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DomainSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DomainSecret(<redacted>)")
    }
}

/// One chunk after encryption: what goes into the store (`id`, `object`)
/// and what goes into the manifest (`id`, `key`). `Debug` shows the id and
/// the object's length, never the key or the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedChunk {
    /// SHA-256 of `object`.
    pub id: ChunkId,
    /// The key that decrypts `object`.
    pub key: ChunkKey,
    /// Ciphertext followed by the 16-byte GCM tag.
    pub object: Vec<u8>,
}

impl fmt::Debug for EncryptedChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedChunk")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("object_len", &self.object.len())
            .finish()
    }
}

/// The convergent key of a plaintext: HMAC-SHA-256(domain secret, plaintext).
pub fn derive_chunk_key(secret: &DomainSecret, plaintext: &[u8]) -> ChunkKey {
    // HMAC pads a key shorter than the hash block (64 bytes) with zeros, so
    // padding here gives the standard HMAC of the 32-byte secret, without a
    // fallible variable-length constructor.
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(&secret.0);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    mac.update(plaintext);
    ChunkKey(mac.finalize().into_bytes().into())
}

/// [`derive_chunk_key`] of several plaintexts, in order, their inner
/// hashes interleaved as in [`ChunkId::of_objects`].
pub fn derive_chunk_keys(secret: &DomainSecret, plaintexts: &[&[u8]]) -> Vec<ChunkKey> {
    // HMAC by its definition (RFC 2104), which the hmac crate follows:
    // H((K ^ opad) || H((K ^ ipad) || m)), K zero-padded to the block.
    // Only the inner hash is long; it is the one interleaved.
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, b) in secret.0.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let mut inner = vec![[0u8; 32]; plaintexts.len()];
    tape_sha256::hash_many_prefixed(&ipad, plaintexts, &mut inner);
    inner
        .iter()
        .map(|h| {
            ChunkKey(
                Sha256::new()
                    .chain_update(opad)
                    .chain_update(h)
                    .finalize()
                    .into(),
            )
        })
        .collect()
}

/// AES-256-GCM under a chunk key. ring's, not the aes-gcm crate the
/// manifest's sealing uses: chunks are nearly all the bytes encrypted and
/// decrypted, and ring's is three times as fast here. The two agree byte
/// for byte (a test below holds them to it).
fn cipher(key: &ChunkKey) -> LessSafeKey {
    let key = UnboundKey::new(&AES_256_GCM, &key.0)
        // Only fails for a key of another length; chunk keys are 32 bytes.
        .unwrap_or_else(|_| unreachable!("ring refused a 32-byte AES-256 key"));
    LessSafeKey::new(key)
}

/// The nonce used for every chunk.
///
/// A fixed nonce is safe here, and only here: GCM breaks when one key
/// encrypts two different plaintexts under the same nonce. A chunk key is
/// derived from the plaintext itself (HMAC over it), so each key encrypts
/// exactly one plaintext; encrypting that same plaintext again yields the
/// identical object, which reveals nothing new. Determinism is the point:
/// it is what makes equal chunks dedup.
fn chunk_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; 12])
}

/// Encrypts one chunk, copying the plaintext.
pub fn encrypt_chunk(secret: &DomainSecret, plaintext: &[u8]) -> EncryptedChunk {
    let mut buffer = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buffer.extend_from_slice(plaintext);
    encrypt_chunk_owned(secret, buffer)
}

/// Encrypts one chunk in place, reusing the plaintext's buffer for the
/// object (it grows by [`TAG_LEN`] bytes).
pub fn encrypt_chunk_owned(secret: &DomainSecret, mut buffer: Vec<u8>) -> EncryptedChunk {
    let key = encrypt_chunk_in_place(secret, &mut buffer);
    EncryptedChunk {
        id: ChunkId::of_object(&buffer),
        key,
        object: buffer,
    }
}

/// Encrypts one chunk in place (the buffer grows by [`TAG_LEN`] bytes)
/// and returns its key, leaving the id, `ChunkId::of_object(buffer)`, to
/// be computed where the object is hashed anyway: a store that checks
/// what it is given can hash it once for both.
pub fn encrypt_chunk_in_place(secret: &DomainSecret, buffer: &mut Vec<u8>) -> ChunkKey {
    let key = derive_chunk_key(secret, buffer);
    encrypt_under(&key, buffer);
    key
}

/// [`encrypt_chunk_in_place`] of several chunks, their keys derived
/// together ([`derive_chunk_keys`]); the keys, in order.
pub fn encrypt_chunks_in_place(secret: &DomainSecret, buffers: &mut [Vec<u8>]) -> Vec<ChunkKey> {
    let plaintexts: Vec<&[u8]> = buffers.iter().map(Vec::as_slice).collect();
    let keys = derive_chunk_keys(secret, &plaintexts);
    for (key, buffer) in keys.iter().zip(buffers.iter_mut()) {
        encrypt_under(key, buffer);
    }
    keys
}

/// AES-256-GCM of `buffer` in place under a chunk key.
fn encrypt_under(key: &ChunkKey, buffer: &mut Vec<u8>) {
    // The fixed nonce: see `chunk_nonce` for why it is safe with
    // plaintext-derived keys.
    let nonce = chunk_nonce();
    cipher(key)
        .seal_in_place_append_tag(nonce, Aad::empty(), buffer)
        .unwrap_or_else(|_| {
            // Only fails for plaintexts over 64 GiB; chunks are at most 4 MiB.
            unreachable!("AES-GCM refused a {}-byte chunk", buffer.len())
        });
}

/// Checks that `object` hashes to `id`. Needs no key.
pub fn verify_object(id: &ChunkId, object: &[u8]) -> Result<(), ConvergentError> {
    let actual = ChunkId::of_object(object);
    if actual == *id {
        Ok(())
    } else {
        Err(ConvergentError::IdMismatch {
            expected: *id,
            actual,
        })
    }
}

/// Checks `object` against `id`, then decrypts and authenticates it.
pub fn decrypt_chunk(
    id: &ChunkId,
    key: &ChunkKey,
    object: &[u8],
) -> Result<Vec<u8>, ConvergentError> {
    decrypt_chunk_owned(id, key, object.to_vec())
}

/// Like [`decrypt_chunk`], decrypting in the object's own buffer.
pub fn decrypt_chunk_owned(
    id: &ChunkId,
    key: &ChunkKey,
    object: Vec<u8>,
) -> Result<Vec<u8>, ConvergentError> {
    verify_object(id, &object)?;
    decrypt_checked_chunk_owned(id, key, object)
}

/// Like [`decrypt_chunk_owned`] for an object the caller has already
/// checked against `id` (a chunk store that hashes what it returns), so it
/// is not hashed again. AES-GCM still authenticates it under `key`: bytes
/// that are not the chunk's fail with [`ConvergentError::Authentication`].
pub fn decrypt_checked_chunk_owned(
    id: &ChunkId,
    key: &ChunkKey,
    mut object: Vec<u8>,
) -> Result<Vec<u8>, ConvergentError> {
    if object.len() < TAG_LEN {
        return Err(ConvergentError::TooShort {
            id: *id,
            len: object.len(),
        });
    }
    let plain = cipher(key)
        .open_in_place(chunk_nonce(), Aad::empty(), &mut object)
        .map_err(|_| ConvergentError::Authentication { id: *id })?
        .len();
    object.truncate(plain);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> DomainSecret {
        DomainSecret::from_bytes([byte; 32])
    }

    fn sample() -> Vec<u8> {
        (0..70_000u32).map(|i| (i * 7 + i / 13) as u8).collect()
    }

    #[test]
    fn round_trip() {
        let plain = sample();
        let chunk = encrypt_chunk(&secret(1), &plain);
        assert_eq!(chunk.object.len(), plain.len() + TAG_LEN);
        assert_ne!(&chunk.object[..plain.len()], &plain[..]);
        verify_object(&chunk.id, &chunk.object).unwrap();
        let back = decrypt_chunk(&chunk.id, &chunk.key, &chunk.object).unwrap();
        assert_eq!(back, plain);
    }

    /// Plaintexts of lengths around SHA-256's block and padding edges,
    /// a chunk's size, and a mix of them in one batch.
    fn batch_samples() -> Vec<Vec<u8>> {
        [
            0usize,
            1,
            55,
            56,
            63,
            64,
            65,
            119,
            120,
            128,
            4096,
            70_000,
            512 * 1024,
        ]
        .iter()
        .enumerate()
        .map(|(n, &len)| (0..len).map(|i| (i * 31 + n * 7 + i / 251) as u8).collect())
        .collect()
    }

    #[test]
    fn batched_keys_ids_and_objects_are_those_made_one_at_a_time() {
        let samples = batch_samples();
        // Every batch size from 1 to past the 4 streams hashed at once,
        // each starting at a different sample so lengths mix.
        for size in 1..=9 {
            for start in 0..samples.len() {
                let batch: Vec<Vec<u8>> = (0..size)
                    .map(|k| samples[(start + k) % samples.len()].clone())
                    .collect();
                let plain: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                let keys = derive_chunk_keys(&secret(5), &plain);
                let mut buffers = batch.clone();
                let encrypted_keys = encrypt_chunks_in_place(&secret(5), &mut buffers);
                let objects: Vec<&[u8]> = buffers.iter().map(Vec::as_slice).collect();
                let ids = ChunkId::of_objects(&objects);
                assert_eq!((keys.len(), ids.len()), (size, size));
                for (k, p) in plain.iter().enumerate() {
                    let one = encrypt_chunk(&secret(5), p);
                    let what =
                        format!("batch of {size} from {start}, item {k} ({} bytes)", p.len());
                    assert_eq!(keys[k], derive_chunk_key(&secret(5), p), "{what}");
                    assert_eq!(encrypted_keys[k], one.key, "{what}");
                    assert_eq!(buffers[k], one.object, "{what}");
                    assert_eq!(ids[k], one.id, "{what}");
                }
            }
        }
        assert!(derive_chunk_keys(&secret(5), &[]).is_empty());
        assert!(ChunkId::of_objects(&[]).is_empty());
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let chunk = encrypt_chunk(&secret(1), b"");
        assert_eq!(chunk.object.len(), TAG_LEN);
        assert_eq!(
            decrypt_chunk(&chunk.id, &chunk.key, &chunk.object).unwrap(),
            b""
        );
    }

    #[test]
    fn same_plaintext_same_domain_converges() {
        let plain = sample();
        let a = encrypt_chunk(&secret(1), &plain);
        let b = encrypt_chunk_owned(&secret(1), plain.clone());
        assert_eq!(a, b);
    }

    #[test]
    fn different_domain_gives_unrelated_id_and_key() {
        let plain = sample();
        let a = encrypt_chunk(&secret(1), &plain);
        let b = encrypt_chunk(&secret(2), &plain);
        assert_ne!(a.id, b.id);
        assert_ne!(a.key, b.key);
        assert_ne!(a.object, b.object);
    }

    #[test]
    fn key_is_hmac_of_plaintext() {
        // The padded-block construction equals HMAC keyed with the 32 bytes.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&[3u8; 32]).unwrap();
        mac.update(b"hello");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(derive_chunk_key(&secret(3), b"hello").0, expected);
        assert_ne!(derive_chunk_key(&secret(3), b"hellp").0, expected);
    }

    #[test]
    fn chunk_objects_are_those_of_the_aes_gcm_crate() {
        use aes_gcm::aead::{AeadInOut, KeyInit as _};
        use aes_gcm::{Aes256Gcm, Key};
        for (n, plain) in batch_samples().iter().enumerate() {
            let chunk = encrypt_chunk(&secret(9), plain);
            let mut other = plain.clone();
            Aes256Gcm::new(&Key::<Aes256Gcm>::from(chunk.key.0))
                .encrypt_in_place(&aes_gcm::Nonce::from([0u8; 12]), b"", &mut other)
                .unwrap();
            assert_eq!(chunk.object, other, "sample {n} ({} bytes)", plain.len());
            let back = decrypt_chunk(&chunk.id, &chunk.key, &chunk.object).unwrap();
            assert_eq!(&back, plain, "sample {n}");
        }
    }

    #[test]
    fn known_answer() {
        // Computed independently with Python's hmac, hashlib and
        // cryptography's AESGCM: pins the construction across versions.
        let chunk = encrypt_chunk(&secret(3), b"hello");
        assert_eq!(
            chunk.key.reveal_hex(),
            "409bdb52ae2df5950501a6b2be5881bfc477fb7d772df9284772958c069b372d"
        );
        assert_eq!(
            hex::encode(&chunk.object),
            "4ad7d21aba36ef0d5114bfadffc2b6c28a8d946c19"
        );
        assert_eq!(
            chunk.id.to_string(),
            "fccc8bb2b67eba4b0e832221bc4e7524626cde82728b274a4c6c62589a5ee403"
        );
    }

    #[test]
    fn flipped_byte_fails_verification() {
        let chunk = encrypt_chunk(&secret(1), &sample());
        let mut bad = chunk.object.clone();
        bad[100] ^= 0x01;
        let err = verify_object(&chunk.id, &bad).unwrap_err();
        assert!(
            matches!(err, ConvergentError::IdMismatch { expected, .. } if expected == chunk.id)
        );
        let err = decrypt_chunk(&chunk.id, &chunk.key, &bad).unwrap_err();
        assert!(err.to_string().contains(&chunk.id.to_string()), "{err}");
        // Not hashed again, but still authenticated.
        let err = decrypt_checked_chunk_owned(&chunk.id, &chunk.key, bad).unwrap_err();
        assert_eq!(err, ConvergentError::Authentication { id: chunk.id });
        let plain = decrypt_checked_chunk_owned(&chunk.id, &chunk.key, chunk.object).unwrap();
        assert_eq!(plain, sample());
    }

    #[test]
    fn wrong_key_fails_authentication() {
        let chunk = encrypt_chunk(&secret(1), &sample());
        let other = encrypt_chunk(&secret(1), b"something else");
        let err = decrypt_chunk(&chunk.id, &other.key, &chunk.object).unwrap_err();
        assert_eq!(err, ConvergentError::Authentication { id: chunk.id });
    }

    #[test]
    fn too_short_object_is_reported() {
        let object = [0u8; 5];
        let id = ChunkId::of_object(&object);
        let err = decrypt_chunk(&id, &ChunkKey([0; 32]), &object).unwrap_err();
        assert_eq!(err, ConvergentError::TooShort { id, len: 5 });
    }

    #[test]
    fn debug_output_is_redacted() {
        assert_eq!(format!("{:?}", secret(0xcd)), "DomainSecret(<redacted>)");
        let chunk = encrypt_chunk(&secret(1), b"hello");
        let shown = format!("{chunk:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("object_len: 21"), "{shown}");
        assert!(!shown.contains(&chunk.key.reveal_hex()[..8]), "{shown}");
    }
}
