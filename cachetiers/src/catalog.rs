//! The [`Catalog`] trait: sealed manifests by digest, the tags that name
//! them, and each manifest's sealed start profile. Every origin (a directory, an object store) is a catalog as
//! well as a chunk store; caches are not, since a manifest is read once,
//! at open, straight from the origin.

use std::time::{Duration, SystemTime};

use manifest::{ChunkId, ConversionKey, ManifestDigest};

use crate::store::{ChunkStore, StoreError};

/// Where sealed manifests and tags live.
///
/// Writes keep the order that makes a store valid at every moment: a
/// manifest is stored only after every chunk it names (the caller puts the
/// chunks first, and `put_manifest` makes them durable), and a tag only
/// after its manifest.
pub trait Catalog: Send + Sync {
    /// Stores a sealed manifest under its SHA-256 digest and returns the
    /// digest. Idempotent.
    fn put_manifest(&self, sealed: &[u8]) -> Result<ManifestDigest, StoreError>;

    /// Replaces the bytes of stored manifest `digest` with `sealed`, which
    /// must have the same digest: the same manifest with its data key
    /// wrapped under another master key (`imagefs rewrap`). Atomic:
    /// a reader sees the old bytes or the new, never a mix.
    fn replace_manifest(&self, digest: &ManifestDigest, sealed: &[u8]) -> Result<(), StoreError>;

    /// The sealed manifest stored under `digest`, checked against it.
    fn get_manifest(&self, digest: &ManifestDigest) -> Result<Vec<u8>, StoreError>;

    /// Points tag `name` of `domain` at `digest`; the manifest must be
    /// stored. Tags are namespaced per domain ([`crate::tag::tag_path`]).
    fn set_tag(&self, domain: &str, name: &str, digest: &ManifestDigest) -> Result<(), StoreError>;

    /// Resolves a digest (`sha256:<64 hex>`), or a tag name among
    /// `domain`'s tags, to the digest of a stored manifest. (A digest
    /// names a manifest of any domain: unsealing it checks the domain.)
    fn resolve(&self, domain: &str, digest_or_tag: &str) -> Result<ManifestDigest, StoreError>;

    /// Where this catalog is, for messages (a path or a URL).
    fn location(&self) -> String;

    /// Stores the sealed start profile of manifest `digest` beside it,
    /// replacing the one stored before. The manifest must be stored.
    fn put_profile(&self, digest: &ManifestDigest, sealed: &[u8]) -> Result<(), StoreError>;

    /// The sealed start profile of manifest `digest`, `None` if it has
    /// none. The store cannot check it; unsealing authenticates it.
    fn get_profile(&self, digest: &ManifestDigest) -> Result<Option<Vec<u8>>, StoreError>;

    /// Drops the start profile of manifest `digest`; returns whether
    /// there was one.
    fn remove_profile(&self, digest: &ManifestDigest) -> Result<bool, StoreError>;

    /// Every tag of every domain, sorted by domain, then name. Entries
    /// that are not valid tags (temporary files) are skipped.
    fn list_tags(&self) -> Result<Vec<TagEntry>, StoreError>;

    /// Drops tag `name` of `domain`; returns whether there was one.
    fn remove_tag(&self, domain: &str, name: &str) -> Result<bool, StoreError>;

    /// Every stored manifest with its size and when it was stored, sorted
    /// by digest. Names that are not digests (temporary files) are skipped.
    fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError>;

    /// Drops manifest `digest` and its start profile; returns whether the
    /// manifest was there. Tags are the caller's business (see
    /// [`Catalog::list_tags`]); chunks are garbage collection's.
    fn remove_manifest(&self, digest: &ManifestDigest) -> Result<bool, StoreError>;

    /// Records that the conversion `key` names (in `domain`) gave manifest
    /// `digest`, replacing an earlier record; the manifest must be stored.
    /// Stored as `conversions/<domain>/<key hex>` ([`conversion_path`]).
    fn put_conversion(
        &self,
        domain: &str,
        key: &ConversionKey,
        digest: &ManifestDigest,
    ) -> Result<(), StoreError>;

    /// The manifest the conversion `key` gave, if one was recorded (the
    /// manifest may have been removed since: the caller checks).
    fn get_conversion(
        &self,
        domain: &str,
        key: &ConversionKey,
    ) -> Result<Option<ManifestDigest>, StoreError>;

    /// Every chunk, start profile and leftover temporary file with its
    /// size and modification time, for garbage collection. Passed to
    /// `visit` as listed, so a caller that keeps only some holds only
    /// those; a listing error ends it (a caller must not act on a partial
    /// listing).
    fn list_objects(&self, visit: &mut dyn FnMut(StoredObject)) -> Result<(), StoreError>;

    /// Deletes the object if it was last modified at or before
    /// `modified_by` (by the store's clock); whether it did. A convert
    /// that reuses an old chunk makes it young again
    /// ([`Catalog::dedup_refresh`]), so a collector's listing may be out
    /// of date by the time it deletes: this looks again. (A directory
    /// store closes the gap between look and delete; an object store
    /// narrows it to one request.)
    fn remove_object(
        &self,
        object: &ObjectName,
        modified_by: SystemTime,
    ) -> Result<bool, StoreError>;

    /// Writes the store's clock probe (a small marker object) and returns
    /// the time the store stamped on it: the store's own "now", against
    /// which object ages are measured.
    fn clock_probe(&self) -> Result<SystemTime, StoreError>;

    /// How old a chunk may be and still be deduplicated without being
    /// made young again. A put that finds its chunk already stored
    /// refreshes the chunk's time when it is older than this, so garbage
    /// collection with a grace period above it never deletes a chunk a
    /// running convert has just reused.
    fn dedup_refresh(&self) -> Duration;
}

/// Where the record of conversion `key` of `domain` lives in a catalog,
/// below `conversions/`: `DOMAIN/<64 hex>`.
pub fn conversion_path(domain: &str, key: &ConversionKey) -> Result<String, StoreError> {
    if manifest::validate_domain(domain).is_err() {
        return Err(StoreError::InvalidDomain {
            domain: domain.to_owned(),
        });
    }
    Ok(format!("{domain}/{}", key.to_hex()))
}

/// An object [`Catalog::list_objects`] lists, by what it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ObjectName {
    /// An encrypted chunk.
    Chunk(ChunkId),
    /// The start profile of a manifest.
    Profile(ManifestDigest),
    /// A temporary file a writer left (a crash, a killed convert): its
    /// path relative to the store's root.
    Temporary(String),
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectName::Chunk(id) => write!(f, "chunk {id}"),
            ObjectName::Profile(digest) => write!(f, "start profile of {digest}"),
            ObjectName::Temporary(path) => write!(f, "temporary file {path}"),
        }
    }
}

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// What it is.
    pub name: ObjectName,
    /// Its size in bytes.
    pub size: u64,
    /// When the store last wrote it, if it says.
    pub modified: Option<SystemTime>,
}

/// A tag as listed: `DOMAIN/NAME → DIGEST`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TagEntry {
    /// The dedup domain the tag is set in.
    pub domain: String,
    /// The tag's name.
    pub name: String,
    /// The manifest it points at.
    pub digest: ManifestDigest,
}

/// A stored manifest as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: ManifestDigest,
    /// The sealed manifest's size in bytes.
    pub size: u64,
    /// When the store says it was written (a manifest's bytes hold no
    /// time: they are deterministic).
    pub stored_at: Option<SystemTime>,
}

/// Parses `text` as a `sha256:` digest, or looks it up as a tag name with
/// `tag`: the first half of every [`Catalog::resolve`].
pub fn digest_or_tag(
    text: &str,
    tag: impl FnOnce(&str) -> Result<ManifestDigest, StoreError>,
) -> Result<ManifestDigest, StoreError> {
    if text.starts_with(ManifestDigest::PREFIX) {
        text.parse().map_err(|source| StoreError::BadDigest {
            text: text.to_owned(),
            source,
        })
    } else {
        tag(text)
    }
}

/// A source of truth: chunks, manifests and tags in one place. What
/// `convert` writes to and what `open_image` reads from.
pub trait Origin: ChunkStore + Catalog {}

impl<T: ChunkStore + Catalog + ?Sized> Origin for T {}

macro_rules! forward_catalog {
    ($($ptr:ty),*) => {$(
        impl<T: Catalog + ?Sized> Catalog for $ptr {
            fn put_manifest(&self, sealed: &[u8]) -> Result<ManifestDigest, StoreError> {
                (**self).put_manifest(sealed)
            }
            fn get_manifest(&self, digest: &ManifestDigest) -> Result<Vec<u8>, StoreError> {
                (**self).get_manifest(digest)
            }
            fn replace_manifest(
                &self,
                digest: &ManifestDigest,
                sealed: &[u8],
            ) -> Result<(), StoreError> {
                (**self).replace_manifest(digest, sealed)
            }
            fn set_tag(
                &self,
                domain: &str,
                name: &str,
                digest: &ManifestDigest,
            ) -> Result<(), StoreError> {
                (**self).set_tag(domain, name, digest)
            }
            fn resolve(
                &self,
                domain: &str,
                digest_or_tag: &str,
            ) -> Result<ManifestDigest, StoreError> {
                (**self).resolve(domain, digest_or_tag)
            }
            fn location(&self) -> String {
                (**self).location()
            }
            fn put_profile(&self, digest: &ManifestDigest, sealed: &[u8]) -> Result<(), StoreError> {
                (**self).put_profile(digest, sealed)
            }
            fn get_profile(&self, digest: &ManifestDigest) -> Result<Option<Vec<u8>>, StoreError> {
                (**self).get_profile(digest)
            }
            fn remove_profile(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
                (**self).remove_profile(digest)
            }
            fn list_tags(&self) -> Result<Vec<TagEntry>, StoreError> {
                (**self).list_tags()
            }
            fn put_conversion(
                &self,
                domain: &str,
                key: &ConversionKey,
                digest: &ManifestDigest,
            ) -> Result<(), StoreError> {
                (**self).put_conversion(domain, key, digest)
            }
            fn get_conversion(
                &self,
                domain: &str,
                key: &ConversionKey,
            ) -> Result<Option<ManifestDigest>, StoreError> {
                (**self).get_conversion(domain, key)
            }
            fn remove_tag(&self, domain: &str, name: &str) -> Result<bool, StoreError> {
                (**self).remove_tag(domain, name)
            }
            fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
                (**self).list_manifests()
            }
            fn remove_manifest(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
                (**self).remove_manifest(digest)
            }
            fn list_objects(
                &self,
                visit: &mut dyn FnMut(StoredObject),
            ) -> Result<(), StoreError> {
                (**self).list_objects(visit)
            }
            fn remove_object(
                &self,
                object: &ObjectName,
                modified_by: SystemTime,
            ) -> Result<bool, StoreError> {
                (**self).remove_object(object, modified_by)
            }
            fn clock_probe(&self) -> Result<SystemTime, StoreError> {
                (**self).clock_probe()
            }
            fn dedup_refresh(&self) -> Duration {
                (**self).dedup_refresh()
            }
        }
    )*};
}

forward_catalog!(std::sync::Arc<T>, Box<T>, &T);
