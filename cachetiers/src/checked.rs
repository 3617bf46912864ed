//! The checks every store makes on the way in and out, in one place: the
//! size limits, the SHA-256 of an object against its id (of a sealed
//! manifest against its digest), and the typed errors they give.
//!
//! A store reads at most a limit's worth of bytes into a [`Bounded`] and
//! hands it to [`check_get`] (or [`check_manifest`]); it calls
//! [`check_put`] before writing anything. A store that does so may claim
//! [`ChunkStore::checks_gets`](crate::ChunkStore::checks_gets).

use std::path::PathBuf;

use manifest::{ChunkId, ManifestDigest};

use crate::store::{MAX_OBJECT_LEN, StoreError};

/// Largest sealed manifest any store accepts (a 4 TiB device at 64 KiB
/// chunks is about 4 GiB of table; real manifests are a few MiB).
pub const MAX_MANIFEST_LEN: u64 = 1 << 30;

/// Largest sealed start profile any store keeps: 16 bytes a chunk, so
/// four million chunks, far more than a start reads.
pub const MAX_PROFILE_LEN: u64 = 64 << 20;

/// Largest tag (`sha256:` + 64 hex + newline, with room to spare).
pub const MAX_TAG_LEN: u64 = 1024;

/// What a read bounded by a limit found under one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounded {
    /// Nothing is stored there.
    Missing,
    /// Something longer than the limit (its length); it was not read.
    TooLong(u64),
    /// The whole object, at most the limit long.
    Bytes(Vec<u8>),
}

impl Bounded {
    /// `Bytes` for an object that was found, `Missing` for none.
    pub fn from_option(found: Option<Vec<u8>>) -> Self {
        found.map_or(Self::Missing, Self::Bytes)
    }
}

/// An object known to hash to its id: made only by [`verify`] (which
/// hashes it) or inside this crate from what a checking store returned, so
/// a store handed one ([`ChunkStore::put_verified`](crate::ChunkStore::put_verified))
/// need not hash it again.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    id: &'a ChunkId,
    object: &'a [u8],
}

impl<'a> Verified<'a> {
    /// Only for bytes that were just checked against `id` (by a store
    /// that [`checks_gets`](crate::ChunkStore::checks_gets), or here).
    pub(crate) fn trusted(id: &'a ChunkId, object: &'a [u8]) -> Self {
        Self { id, object }
    }

    /// The id.
    pub fn id(&self) -> &'a ChunkId {
        self.id
    }

    /// The object, whose SHA-256 is the id.
    pub fn object(&self) -> &'a [u8] {
        self.object
    }
}

/// Checks `object` against `id` as [`check_put`] does and vouches for it.
pub fn verify<'a>(id: &'a ChunkId, object: &'a [u8]) -> Result<Verified<'a>, StoreError> {
    check_put(id, object)?;
    Ok(Verified { id, object })
}

/// Refuses a put whose object is larger than any chunk
/// ([`StoreError::TooLarge`]) or does not hash to `id`
/// ([`StoreError::IdMismatch`]).
pub fn check_put(id: &ChunkId, object: &[u8]) -> Result<(), StoreError> {
    check_len(id, object)?;
    let actual = ChunkId::of_object(object);
    if actual != *id {
        return Err(StoreError::IdMismatch { id: *id, actual });
    }
    Ok(())
}

/// The first half of [`check_put`]: refuses an object larger than any
/// chunk ([`StoreError::TooLarge`]), for a store that has just hashed it.
pub fn check_len(id: &ChunkId, object: &[u8]) -> Result<(), StoreError> {
    if object.len() > MAX_OBJECT_LEN {
        return Err(StoreError::TooLarge {
            id: *id,
            len: object.len(),
        });
    }
    Ok(())
}

/// The object a store found under `id`, checked: `Ok(None)` for a miss,
/// the bytes if they hash to `id`, else [`StoreError::Corrupt`] naming
/// `location()` (a path, a URL, a tier) and what is wrong.
pub fn check_get(
    id: &ChunkId,
    found: Bounded,
    location: impl FnOnce() -> String,
) -> Result<Option<Vec<u8>>, StoreError> {
    let problem = match found {
        Bounded::Missing => return Ok(None),
        Bounded::TooLong(len) => too_long(len, MAX_OBJECT_LEN as u64),
        Bounded::Bytes(object) => match ChunkId::of_object(&object) {
            actual if actual == *id => return Ok(Some(object)),
            actual => hashes_to(actual),
        },
    };
    Err(StoreError::Corrupt {
        id: *id,
        location: location(),
        problem,
    })
}

/// The sealed manifest a store found under `digest` (read with the limit
/// [`MAX_MANIFEST_LEN`]), checked: [`StoreError::ManifestNotFound`] for
/// none, [`StoreError::ManifestCorrupt`] naming `path()` for bytes that
/// are too long or do not hash to `digest`.
pub fn check_manifest(
    digest: &ManifestDigest,
    found: Bounded,
    path: impl FnOnce() -> PathBuf,
) -> Result<Vec<u8>, StoreError> {
    let problem = match found {
        Bounded::Missing => return Err(StoreError::ManifestNotFound { digest: *digest }),
        Bounded::TooLong(len) => too_long(len, MAX_MANIFEST_LEN),
        Bounded::Bytes(sealed) => match ManifestDigest::of(&sealed) {
            actual if actual == *digest => return Ok(sealed),
            actual => hashes_to(actual),
        },
    };
    Err(StoreError::ManifestCorrupt {
        digest: *digest,
        path: path(),
        problem,
    })
}

/// Refuses a replacement for manifest `digest` whose bytes have another
/// digest ([`crate::Catalog::replace_manifest`]).
pub fn check_manifest_replacement(
    digest: &ManifestDigest,
    sealed: &[u8],
    path: impl FnOnce() -> PathBuf,
) -> Result<(), StoreError> {
    match ManifestDigest::of(sealed) {
        actual if actual == *digest => Ok(()),
        actual => Err(StoreError::ManifestCorrupt {
            digest: *digest,
            path: path(),
            problem: format!("the replacement {}", hashes_to(actual)),
        }),
    }
}

/// The sealed start profile a store found for manifest `digest` (read
/// with the limit [`MAX_PROFILE_LEN`]): `None` for none,
/// [`StoreError::ProfileTooLarge`] naming `location()` for too many
/// bytes. Its content is authenticated when it is unsealed, not here: a
/// store cannot tell a good profile from a bad one.
pub fn check_profile(
    digest: &ManifestDigest,
    found: Bounded,
    location: impl FnOnce() -> String,
) -> Result<Option<Vec<u8>>, StoreError> {
    match found {
        Bounded::Missing => Ok(None),
        Bounded::Bytes(sealed) => Ok(Some(sealed)),
        Bounded::TooLong(len) => Err(StoreError::ProfileTooLarge {
            digest: *digest,
            location: location(),
            len,
            limit: MAX_PROFILE_LEN,
        }),
    }
}

/// Refuses to store a start profile over [`MAX_PROFILE_LEN`].
pub fn check_profile_put(
    digest: &ManifestDigest,
    sealed: &[u8],
    location: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    if sealed.len() as u64 > MAX_PROFILE_LEN {
        return Err(StoreError::ProfileTooLarge {
            digest: *digest,
            location: location(),
            len: sealed.len() as u64,
            limit: MAX_PROFILE_LEN,
        });
    }
    Ok(())
}

/// The digest a tag names, from what a store found under the tag `name`
/// (read with the limit [`MAX_TAG_LEN`]): [`StoreError::UnknownTag`] for
/// none, [`StoreError::BadTag`] naming `path()` for anything but a digest.
pub fn check_tag(
    name: &str,
    found: Bounded,
    path: impl FnOnce() -> PathBuf,
) -> Result<ManifestDigest, StoreError> {
    let bytes = match found {
        Bounded::Missing => {
            return Err(StoreError::UnknownTag {
                name: name.to_owned(),
            });
        }
        // Parsed below so the error says what a digest should look like.
        Bounded::TooLong(len) => format!("<{len} bytes>").into_bytes(),
        Bounded::Bytes(bytes) => bytes,
    };
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse().map_err(|source| StoreError::BadTag {
        name: name.to_owned(),
        path: path(),
        source,
    })
}

/// The digest a conversion record names, from what a store found under
/// it (read with the limit [`manifest::conversion::MAX_RECORD_LEN`]):
/// `None` for none, [`StoreError::BadConversionRecord`] naming `path()`
/// for anything but a digest.
pub fn check_conversion(
    found: Bounded,
    path: impl FnOnce() -> PathBuf,
) -> Result<Option<ManifestDigest>, StoreError> {
    let bytes = match found {
        Bounded::Missing => return Ok(None),
        Bounded::TooLong(len) => format!("<{len} bytes>").into_bytes(),
        Bounded::Bytes(bytes) => bytes,
    };
    manifest::conversion::decode_record(&bytes)
        .map(Some)
        .map_err(|source| StoreError::BadConversionRecord {
            path: path(),
            source,
        })
}

fn too_long(len: u64, limit: u64) -> String {
    format!("it is {len} bytes, over the {limit}-byte limit")
}

fn hashes_to(actual: impl std::fmt::Display) -> String {
    format!("its bytes hash to {actual}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> (ChunkId, Vec<u8>) {
        let bytes = b"an encrypted chunk, as far as a store can tell".to_vec();
        (ChunkId::of_object(&bytes), bytes)
    }

    #[test]
    fn a_put_is_refused_for_size_then_for_hash() {
        let (id, bytes) = object();
        check_put(&id, &bytes).unwrap();
        let err = check_put(&id, b"other bytes").unwrap_err();
        assert!(
            matches!(err, StoreError::IdMismatch { id: i, actual }
                if i == id && actual == ChunkId::of_object(b"other bytes")),
            "{err}"
        );
        let big = vec![0u8; MAX_OBJECT_LEN + 1];
        let err = check_put(&ChunkId::of_object(&big), &big).unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { len, .. } if len == MAX_OBJECT_LEN + 1),
            "{err}"
        );
    }

    #[test]
    fn only_bytes_that_hash_to_the_id_are_vouched_for() {
        let (id, bytes) = object();
        let v = verify(&id, &bytes).unwrap();
        assert_eq!((v.id(), v.object()), (&id, &bytes[..]));
        assert!(matches!(
            verify(&id, b"other bytes"),
            Err(StoreError::IdMismatch { .. })
        ));
    }

    #[test]
    fn a_get_returns_only_bytes_that_hash_to_the_id() {
        let (id, bytes) = object();
        let here = || "here".to_string();
        assert_eq!(check_get(&id, Bounded::Missing, here).unwrap(), None);
        assert_eq!(
            check_get(&id, Bounded::Bytes(bytes.clone()), here).unwrap(),
            Some(bytes.clone())
        );
        let mut bad = bytes;
        bad[0] ^= 1;
        let err = check_get(&id, Bounded::Bytes(bad.clone()), here).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, StoreError::Corrupt { id: i, location, .. } if *i == id && location == "here"),
            "{text}"
        );
        assert!(
            text.contains(&ChunkId::of_object(&bad).to_string()),
            "{text}"
        );
        let err = check_get(&id, Bounded::TooLong(1 << 40), here).unwrap_err();
        assert!(err.to_string().contains("over the"), "{err}");
    }

    #[test]
    fn manifests_and_tags_are_checked_the_same_way() {
        let sealed = b"sealed manifest".to_vec();
        let digest = ManifestDigest::of(&sealed);
        let path = || PathBuf::from("/m");
        assert_eq!(
            check_manifest(&digest, Bounded::Bytes(sealed.clone()), path).unwrap(),
            sealed
        );
        assert!(matches!(
            check_manifest(&digest, Bounded::Missing, path),
            Err(StoreError::ManifestNotFound { .. })
        ));
        assert!(matches!(
            check_manifest(&digest, Bounded::Bytes(b"x".to_vec()), path),
            Err(StoreError::ManifestCorrupt { .. })
        ));
        let tag = Bounded::Bytes(format!("{digest}\n").into_bytes());
        assert_eq!(check_tag("t", tag, path).unwrap(), digest);
        assert!(matches!(
            check_tag("t", Bounded::Missing, path),
            Err(StoreError::UnknownTag { .. })
        ));
        assert!(matches!(
            check_tag("t", Bounded::TooLong(5000), path),
            Err(StoreError::BadTag { .. })
        ));
        let record = Bounded::Bytes(manifest::conversion::encode_record(&digest));
        assert_eq!(check_conversion(record, path).unwrap(), Some(digest));
        assert_eq!(check_conversion(Bounded::Missing, path).unwrap(), None);
        assert!(matches!(
            check_conversion(Bounded::Bytes(b"junk".to_vec()), path),
            Err(StoreError::BadConversionRecord { .. })
        ));
    }
}
