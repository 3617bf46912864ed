//! The [`Catalog`] trait: sealed manifests by digest, the tags that name
//! them, and each manifest's sealed start profile. Every origin (a directory, an object store) is a catalog as
//! well as a chunk store; caches are not, since a manifest is read once,
//! at open, straight from the origin.

use std::time::SystemTime;

use manifest::ManifestDigest;

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
            fn remove_tag(&self, domain: &str, name: &str) -> Result<bool, StoreError> {
                (**self).remove_tag(domain, name)
            }
            fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
                (**self).list_manifests()
            }
            fn remove_manifest(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
                (**self).remove_manifest(digest)
            }
        }
    )*};
}

forward_catalog!(std::sync::Arc<T>, Box<T>, &T);
