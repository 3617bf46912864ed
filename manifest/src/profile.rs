//! Start profiles: the chunks a start of an image touched, in the order it
//! first needed them, with when (microseconds since the guest's first
//! read). The next start of the same image prefetches them in that order.
//!
//! A profile is bound to one manifest digest and sealed like the manifest
//! (a random data key wrapped by the [`KeyProvider`], AES-256-GCM), so the
//! origin that stores it learns neither which chunks a start reads nor
//! when; only, from the length, how many.
//!
//! Profile v1 (the plaintext inside the envelope), little-endian:
//!
//! ```text
//! offset  size  field
//!  0       8    magic "IMGFSPF\0"
//!  8       2    version = 1
//! 10      32    manifest digest (SHA-256 of the sealed manifest)
//! 42       8    entry count n
//! 50    16·n    entries: chunk index u64, first access µs u64
//! ```
//!
//! Entries are in order of first access (times never decrease) and name
//! each chunk at most once.
//!
//! Sealed profile v1:
//!
//! ```text
//! offset  size  field
//!  0       8    magic "IMGFSPS\0"
//!  8       2    version = 1
//! 10      32    manifest digest
//! 42       4    master key id length, then the id (UTF-8)
//!  …       4    wrapped data key length, then the wrapped key
//!  …      12    nonce (random)
//!  …       8    ciphertext length, then the ciphertext with its 16-byte tag
//! ```
//!
//! Everything before the ciphertext is authenticated as associated data,
//! and the digest is repeated inside, so a profile cannot be moved to
//! another image. The digest is in the clear so that a profile of another
//! image is reported as such before any key is asked for.

use std::collections::HashSet;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use crate::format::{ChunkEntry, Manifest};
use crate::ids::{ChunkIndex, ManifestDigest};
use crate::keys::{DataKey, KeyError, KeyProvider};
use crate::wire::{DecodeError, Reader, Writer, check_len};

/// The first 8 bytes of an (unsealed) profile.
pub const PROFILE_MAGIC: [u8; 8] = *b"IMGFSPF\0";
/// The profile version this build writes and reads.
pub const PROFILE_VERSION: u16 = 1;
/// The first 8 bytes of a sealed profile.
pub const SEALED_PROFILE_MAGIC: [u8; 8] = *b"IMGFSPS\0";
/// The sealed-profile envelope version this build writes and reads.
pub const SEALED_PROFILE_VERSION: u16 = 1;
/// The `format` of a [`ProfileReport`].
pub const PROFILE_REPORT_FORMAT: &str = "imagefs-start-profile";

const ENTRY_LEN: u64 = 16;
const MAX_KEY_ID: u32 = 1024;
const MAX_WRAPPED: u32 = 16 * 1024;
const NONCE_LEN: usize = 12;
const TAG_LEN: u64 = 16;

/// Why a profile could not be encoded, sealed, unsealed or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The bytes are not a well-formed sealed profile (bad magic,
    /// unsupported version, truncated, overlong).
    #[error("not a valid sealed start profile: {0}")]
    Envelope(#[source] DecodeError),
    /// The decrypted bytes are not a valid profile (or, when encoding, the
    /// profile breaks the format's rules).
    #[error("invalid start profile: {0}")]
    Format(#[source] DecodeError),
    /// The profile belongs to another image.
    #[error("start profile is foreign: it belongs to image {found}, not {expected}")]
    ForeignImage {
        /// The image it was asked for.
        expected: ManifestDigest,
        /// The image it names.
        found: ManifestDigest,
    },
    /// The profile was sealed under a master key this provider does not
    /// have, or whose unwrap fails: it was sealed by another key owner.
    #[error("start profile is foreign: sealed with master key `{key_id}`, which cannot open it")]
    ForeignKey {
        /// The master key id in the envelope.
        key_id: String,
        /// The provider's error.
        #[source]
        source: KeyError,
    },
    /// The ciphertext failed authentication: bytes were altered.
    #[error("start profile failed authentication: its bytes were altered")]
    Authentication,
    /// The key provider failed for another reason.
    #[error("key provider error: {0}")]
    Key(#[source] KeyError),
    /// No random bytes for the data key or nonce.
    #[error("cannot get random bytes: {0}")]
    Random(getrandom::Error),
    /// The profile names a chunk the manifest does not have.
    #[error("start profile names {chunk}, outside the manifest's {chunk_count} chunks")]
    OutsideManifest {
        /// The chunk named.
        chunk: ChunkIndex,
        /// How many chunks the manifest has.
        chunk_count: u64,
    },
    /// The profile names a chunk that is a hole (nothing to fetch).
    #[error("start profile names {chunk}, which is a hole in the manifest")]
    Hole {
        /// The chunk named.
        chunk: ChunkIndex,
    },
}

/// One chunk of a profile and when a start first needed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileEntry {
    /// The chunk.
    pub chunk: u64,
    /// Microseconds from the guest's first read to its first read of
    /// this chunk.
    pub first_access_us: u64,
}

/// The chunks one start (or a merge of several) touched, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartProfile {
    /// The manifest this profile belongs to.
    pub manifest: ManifestDigest,
    /// In order of first access; each chunk at most once.
    pub entries: Vec<ProfileEntry>,
}

fn corrupt(what: &'static str, offset: usize, reason: String) -> DecodeError {
    DecodeError::Corrupt {
        what,
        offset,
        reason,
    }
}

impl StartProfile {
    /// The chunk order to prefetch.
    pub fn order(&self) -> Vec<ChunkIndex> {
        self.entries.iter().map(|e| ChunkIndex(e.chunk)).collect()
    }

    /// Checks the format's rules: times never decrease, no chunk twice.
    /// `offset_of(i)` is where entry `i` is (or would be) encoded.
    fn check_entries(&self) -> Result<(), DecodeError> {
        let offset_of = |i: usize| 50 + i * ENTRY_LEN as usize;
        let mut seen = HashSet::with_capacity(self.entries.len());
        let mut last = 0;
        for (i, e) in self.entries.iter().enumerate() {
            if e.first_access_us < last {
                return Err(corrupt(
                    "entry",
                    offset_of(i),
                    format!(
                        "first access {} µs of chunk #{} is before the previous entry's {last} µs",
                        e.first_access_us, e.chunk
                    ),
                ));
            }
            if !seen.insert(e.chunk) {
                return Err(corrupt(
                    "entry",
                    offset_of(i),
                    format!("chunk #{} is listed twice", e.chunk),
                ));
            }
            last = e.first_access_us;
        }
        Ok(())
    }

    /// The v1 encoding (see the module documentation).
    pub fn encode(&self) -> Result<Vec<u8>, ProfileError> {
        self.check_entries().map_err(ProfileError::Format)?;
        let mut w = Writer::with_capacity(50 + self.entries.len() * ENTRY_LEN as usize);
        w.raw(&PROFILE_MAGIC);
        w.u16(PROFILE_VERSION);
        w.raw(self.manifest.as_bytes());
        w.u64(self.entries.len() as u64);
        for e in &self.entries {
            w.u64(e.chunk);
            w.u64(e.first_access_us);
        }
        Ok(w.bytes)
    }

    /// Decodes the v1 encoding, checking its rules.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProfileError> {
        Self::decode_inner(bytes).map_err(ProfileError::Format)
    }

    fn decode_inner(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.magic("start profile", PROFILE_MAGIC)?;
        r.version("start profile", PROFILE_VERSION)?;
        let manifest = ManifestDigest(r.array("manifest digest")?);
        let count_at = r.offset();
        let count = r.u64("entry count")?;
        // Checked against what is there before allocating: a huge count
        // in a short input is an error, not an allocation.
        let needed = count
            .checked_mul(ENTRY_LEN)
            .ok_or_else(|| corrupt("entry count", count_at, format!("{count} entries overflow")))?;
        let body = r.take("entries", needed)?;
        r.finish()?;
        let entries = body
            .chunks_exact(ENTRY_LEN as usize)
            .map(|e| {
                let mut chunk = [0u8; 8];
                let mut time = [0u8; 8];
                chunk.copy_from_slice(&e[0..8]);
                time.copy_from_slice(&e[8..16]);
                ProfileEntry {
                    chunk: u64::from_le_bytes(chunk),
                    first_access_us: u64::from_le_bytes(time),
                }
            })
            .collect();
        let profile = Self { manifest, entries };
        profile.check_entries()?;
        Ok(profile)
    }

    /// Checks that every chunk named is a present chunk of `manifest`:
    /// not past its end ([`ProfileError::OutsideManifest`]) and not a
    /// hole ([`ProfileError::Hole`]).
    pub fn check_against(&self, manifest: &Manifest) -> Result<(), ProfileError> {
        let chunk_count = manifest.chunks.len() as u64;
        for e in &self.entries {
            let chunk = ChunkIndex(e.chunk);
            match manifest.chunk(chunk) {
                None => {
                    return Err(ProfileError::OutsideManifest { chunk, chunk_count });
                }
                Some(ChunkEntry::Hole) => return Err(ProfileError::Hole { chunk }),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The profile as a serde report (`imagefs profile show --json`).
    pub fn report(&self) -> ProfileReport {
        ProfileReport {
            format: PROFILE_REPORT_FORMAT.into(),
            version: u32::from(PROFILE_VERSION),
            image: self.manifest.to_string(),
            chunks: self.entries.len() as u64,
            last_first_access_us: self.entries.last().map_or(0, |e| e.first_access_us),
            entries: self.entries.clone(),
        }
    }
}

/// What `imagefs profile show --json` prints. Kept here, beside the
/// binary format it describes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileReport {
    /// Always [`PROFILE_REPORT_FORMAT`].
    pub format: String,
    /// The profile version ([`PROFILE_VERSION`]).
    pub version: u32,
    /// The manifest digest (`sha256:…`).
    pub image: String,
    /// How many chunks the profile names.
    pub chunks: u64,
    /// The latest first access, µs (how long the recorded start read).
    pub last_first_access_us: u64,
    /// The chunks in prefetch order.
    pub entries: Vec<ProfileEntry>,
}

fn cipher(key: &DataKey) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.as_bytes()))
}

/// Encodes `profile`, encrypts it under a fresh data key, and wraps that
/// key with `keys`' current master key (as [`seal`](crate::seal()) does
/// for a manifest).
pub fn seal_profile(
    profile: &StartProfile,
    keys: &dyn KeyProvider,
) -> Result<Vec<u8>, ProfileError> {
    let mut payload = profile.encode()?;
    let data_key = DataKey::generate().map_err(ProfileError::Random)?;
    let wrapped = keys.wrap_key(&data_key).map_err(ProfileError::Key)?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(ProfileError::Random)?;
    check_len("master key id", wrapped.key_id.len(), MAX_KEY_ID)
        .and_then(|()| check_len("wrapped key", wrapped.wrapped.len(), MAX_WRAPPED))
        .map_err(|reason| ProfileError::Format(corrupt("key", 0, reason)))?;

    let mut w = Writer::with_capacity(payload.len() + 256);
    w.raw(&SEALED_PROFILE_MAGIC);
    w.u16(SEALED_PROFILE_VERSION);
    w.raw(profile.manifest.as_bytes());
    w.bytes_u32(wrapped.key_id.as_bytes());
    w.bytes_u32(&wrapped.wrapped);
    w.raw(&nonce);
    w.u64(payload.len() as u64 + TAG_LEN);
    cipher(&data_key)
        .encrypt_in_place(&Nonce::from(nonce), &w.bytes, &mut payload)
        .map_err(|_| {
            ProfileError::Format(corrupt(
                "entries",
                50,
                format!("{} bytes are too many to encrypt", payload.len()),
            ))
        })?;
    w.raw(&payload);
    Ok(w.bytes)
}

/// The id of the master key a sealed profile's data key is wrapped under,
/// read without any key.
pub fn sealed_profile_key_id(sealed: &[u8]) -> Result<String, ProfileError> {
    let mut r = Reader::new(sealed);
    r.magic("sealed start profile", SEALED_PROFILE_MAGIC)
        .and_then(|()| r.version("sealed start profile", SEALED_PROFILE_VERSION))
        .and_then(|()| r.array::<32>("manifest digest"))
        .and_then(|_| r.string("master key id", MAX_KEY_ID))
        .map_err(ProfileError::Envelope)
}

/// Checks, decrypts and decodes a sealed profile of image `expected`. A
/// profile of another image or sealed under another master key is
/// foreign; altered bytes fail authentication.
pub fn unseal_profile(
    sealed: &[u8],
    keys: &dyn KeyProvider,
    expected: &ManifestDigest,
) -> Result<StartProfile, ProfileError> {
    let mut r = Reader::new(sealed);
    r.magic("sealed start profile", SEALED_PROFILE_MAGIC)
        .map_err(ProfileError::Envelope)?;
    r.version("sealed start profile", SEALED_PROFILE_VERSION)
        .map_err(ProfileError::Envelope)?;
    let found = ManifestDigest(r.array("manifest digest").map_err(ProfileError::Envelope)?);
    if found != *expected {
        return Err(ProfileError::ForeignImage {
            expected: *expected,
            found,
        });
    }
    let key_id_at = r.offset();
    let (key_id, wrapped, nonce, ciphertext) = (|| {
        let key_id = r.string("master key id", MAX_KEY_ID)?;
        let wrapped = r.bytes_u32("wrapped data key", MAX_WRAPPED)?;
        let nonce: [u8; NONCE_LEN] = r.array("nonce")?;
        let len = r.u64("ciphertext length")?;
        Ok((key_id, wrapped, nonce, len))
    })()
    .map_err(ProfileError::Envelope)?;
    let aad_end = r.offset();
    let ciphertext = r
        .take("ciphertext", ciphertext)
        .map_err(ProfileError::Envelope)?;
    r.finish().map_err(ProfileError::Envelope)?;
    if key_id.is_empty() {
        return Err(ProfileError::Envelope(corrupt(
            "master key id",
            key_id_at,
            "empty".into(),
        )));
    }
    let data_key = keys.unwrap_key(&key_id, wrapped).map_err(|e| match e {
        e @ (KeyError::UnknownMasterKey { .. }
        | KeyError::RetiredMasterKey { .. }
        | KeyError::UnwrapFailed { .. }) => ProfileError::ForeignKey {
            key_id: key_id.clone(),
            source: e,
        },
        other => ProfileError::Key(other),
    })?;
    let mut payload = ciphertext.to_vec();
    cipher(&data_key)
        .decrypt_in_place(&Nonce::from(nonce), &sealed[..aad_end], &mut payload)
        .map_err(|_| ProfileError::Authentication)?;
    let profile = StartProfile::decode(&payload)?;
    // Only a holder of the key could have sealed a mismatch; refuse it
    // all the same.
    if profile.manifest != *expected {
        return Err(ProfileError::ForeignImage {
            expected: *expected,
            found: profile.manifest,
        });
    }
    Ok(profile)
}

#[cfg(test)]
mod tests;
