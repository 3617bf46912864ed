//! The named-blob area of a [`DirStore`]: sealed manifests stored under
//! their digest, tags that name a digest, and start profiles stored under
//! the digest of their manifest.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::SystemTime;

use manifest::conversion::{MAX_RECORD_LEN, encode_record};
use manifest::{ConversionKey, ManifestDigest};

use super::atomic::{io_error, sync_dir};
use super::{DirStore, read_limited};
use crate::catalog::{
    Catalog, ObjectName, StoredManifest, StoredObject, TagEntry, conversion_path,
};
use crate::checked::{
    MAX_MANIFEST_LEN, MAX_PROFILE_LEN, MAX_TAG_LEN, check_conversion, check_manifest,
    check_manifest_replacement, check_profile, check_profile_put, check_tag,
};
use crate::store::StoreError;
use crate::tag::{tag_path, validate_tag_name};

impl DirStore {
    /// Stores a sealed manifest under its SHA-256 digest and returns the
    /// digest. Idempotent. Syncs every chunk stored through this handle
    /// first, so a stored manifest never names a chunk that a crash could
    /// lose.
    pub fn put_manifest(&self, sealed: &[u8]) -> Result<ManifestDigest, StoreError> {
        let digest = ManifestDigest::of(sealed);
        self.sync()?;
        if !self.has_manifest(&digest)? {
            let dir = self.manifests_dir();
            self.write_in(&dir, &digest.to_hex(), sealed)?;
        }
        self.sync()?;
        Ok(digest)
    }

    /// Atomically replaces stored manifest `digest` with `sealed`, which
    /// must hash to the same digest (a re-wrapped manifest).
    pub fn replace_manifest(
        &self,
        digest: &ManifestDigest,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        let dir = self.manifests_dir();
        check_manifest_replacement(digest, sealed, || dir.join(digest.to_hex()))?;
        if !self.has_manifest(digest)? {
            return Err(StoreError::ManifestNotFound { digest: *digest });
        }
        self.write_in(&dir, &digest.to_hex(), sealed)?;
        self.sync()
    }

    /// Whether a manifest with this digest is stored.
    pub fn has_manifest(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
        let path = self.manifests_dir().join(digest.to_hex());
        match fs::symlink_metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("inspect", &path)(e)),
        }
    }

    /// The sealed manifest stored under `digest`, checked against it.
    pub fn get_manifest(&self, digest: &ManifestDigest) -> Result<Vec<u8>, StoreError> {
        let path = self.manifests_dir().join(digest.to_hex());
        check_manifest(digest, read_limited(&path, MAX_MANIFEST_LEN)?, || path)
    }

    /// Points tag `name` of `domain` at `digest` (replacing what it
    /// pointed at): `tags/<domain>/<name>`. The manifest must already be
    /// stored.
    pub fn set_tag(
        &self,
        domain: &str,
        name: &str,
        digest: &ManifestDigest,
    ) -> Result<(), StoreError> {
        tag_path(domain, name)?;
        if !self.has_manifest(digest)? {
            return Err(StoreError::ManifestNotFound { digest: *digest });
        }
        let dir = self.tags_dir().join(domain);
        self.write_in(&dir, name, format!("{digest}\n").as_bytes())?;
        sync_dir(&dir)?;
        // A new domain's directory entry too.
        self.sync()
    }

    /// Records the manifest conversion `key` gave
    /// ([`Catalog::put_conversion`]): `conversions/<domain>/<key hex>`.
    pub fn put_conversion(
        &self,
        domain: &str,
        key: &ConversionKey,
        digest: &ManifestDigest,
    ) -> Result<(), StoreError> {
        conversion_path(domain, key)?;
        if !self.has_manifest(digest)? {
            return Err(StoreError::ManifestNotFound { digest: *digest });
        }
        let dir = self.root().join("conversions").join(domain);
        self.write_in(&dir, &key.to_hex(), &encode_record(digest))?;
        sync_dir(&dir)?;
        self.sync()
    }

    /// The manifest conversion `key` gave, if recorded.
    pub fn get_conversion(
        &self,
        domain: &str,
        key: &ConversionKey,
    ) -> Result<Option<ManifestDigest>, StoreError> {
        let path = self
            .root()
            .join("conversions")
            .join(conversion_path(domain, key)?);
        check_conversion(read_limited(&path, MAX_RECORD_LEN)?, || path)
    }

    /// The digest tag `name` of `domain` points at.
    pub fn tag(&self, domain: &str, name: &str) -> Result<ManifestDigest, StoreError> {
        let qualified = tag_path(domain, name)?;
        let path = self.tags_dir().join(domain).join(name);
        check_tag(&qualified, read_limited(&path, MAX_TAG_LEN)?, || path)
    }

    /// Every tag of `domain` and the digest it points at, sorted by name.
    /// Files that are not valid tags (temporary files) are skipped.
    pub fn tags(&self, domain: &str) -> Result<Vec<(String, ManifestDigest)>, StoreError> {
        let mut tags = Vec::new();
        let dir = self.tags_dir().join(domain);
        if tag_path(domain, "x").is_err() || !dir.is_dir() {
            return Ok(tags);
        }
        for name in super::read_dir_names(&dir)? {
            if validate_tag_name(&name).is_ok() {
                let digest = self.tag(domain, &name)?;
                tags.push((name, digest));
            }
        }
        tags.sort();
        Ok(tags)
    }

    /// Where the start profile of manifest `digest` is stored:
    /// `<root>/profiles/<64 hex>`.
    pub fn profile_path(&self, digest: &ManifestDigest) -> std::path::PathBuf {
        self.profiles_dir().join(digest.to_hex())
    }

    /// Stores the sealed start profile of manifest `digest` (atomically,
    /// replacing one stored before). The manifest must be stored.
    pub fn put_profile(&self, digest: &ManifestDigest, sealed: &[u8]) -> Result<(), StoreError> {
        let path = self.profile_path(digest);
        check_profile_put(digest, sealed, || path.display().to_string())?;
        if !self.has_manifest(digest)? {
            return Err(StoreError::ManifestNotFound { digest: *digest });
        }
        let dir = self.profiles_dir();
        self.write_in(&dir, &digest.to_hex(), sealed)?;
        self.sync()
    }

    /// The sealed start profile of manifest `digest`, if it has one.
    pub fn get_profile(&self, digest: &ManifestDigest) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.profile_path(digest);
        check_profile(digest, read_limited(&path, MAX_PROFILE_LEN)?, || {
            path.display().to_string()
        })
    }

    /// Drops the start profile of manifest `digest`; whether there was one.
    pub fn remove_profile(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
        remove_synced(&self.profiles_dir(), &digest.to_hex())
    }

    /// Every tag of every domain ([`Catalog::list_tags`]).
    pub fn list_tags(&self) -> Result<Vec<TagEntry>, StoreError> {
        let dir = self.tags_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        for domain in super::read_dir_names(&dir)? {
            if manifest::validate_domain(&domain).is_err() || !dir.join(&domain).is_dir() {
                continue;
            }
            for (name, digest) in self.tags(&domain)? {
                all.push(TagEntry {
                    domain: domain.clone(),
                    name,
                    digest,
                });
            }
        }
        all.sort();
        Ok(all)
    }

    /// Drops tag `name` of `domain`; whether there was one.
    pub fn remove_tag(&self, domain: &str, name: &str) -> Result<bool, StoreError> {
        tag_path(domain, name)?;
        let dir = self.tags_dir().join(domain);
        remove_synced(&dir, name)
    }

    /// Every stored manifest ([`Catalog::list_manifests`]).
    pub fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        let dir = self.manifests_dir();
        let mut all = Vec::new();
        for name in super::read_dir_names(&dir)? {
            let Ok(digest) = ManifestDigest::from_hex(&name) else {
                continue;
            };
            let path = dir.join(&name);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => meta,
                // Removed since the listing, or not a manifest file.
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("inspect", &path)(e)),
            };
            all.push(StoredManifest {
                digest,
                size: meta.len(),
                stored_at: meta.modified().ok(),
            });
        }
        all.sort_by_key(|m| m.digest);
        Ok(all)
    }

    /// Drops manifest `digest` and then its start profile (a profile
    /// without its manifest is never read); whether the manifest was there.
    pub fn remove_manifest(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
        let removed = remove_synced(&self.manifests_dir(), &digest.to_hex())?;
        self.remove_profile(digest)?;
        Ok(removed)
    }

    /// Resolves a digest (`sha256:<64 hex>`) or a tag name of `domain` to
    /// the digest of a manifest that is in the store.
    pub fn resolve(&self, domain: &str, digest_or_tag: &str) -> Result<ManifestDigest, StoreError> {
        let digest = crate::catalog::digest_or_tag(digest_or_tag, |name| self.tag(domain, name))?;
        if !self.has_manifest(&digest)? {
            return Err(StoreError::ManifestNotFound { digest });
        }
        Ok(digest)
    }
}

/// Removes `dir/name` and syncs `dir`, so the removal survives a crash;
/// whether there was one.
fn remove_synced(dir: &Path, name: &str) -> Result<bool, StoreError> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("remove", &path)(e)),
    }
}

impl Catalog for DirStore {
    fn put_conversion(
        &self,
        domain: &str,
        key: &ConversionKey,
        digest: &ManifestDigest,
    ) -> Result<(), StoreError> {
        DirStore::put_conversion(self, domain, key, digest)
    }
    fn get_conversion(
        &self,
        domain: &str,
        key: &ConversionKey,
    ) -> Result<Option<ManifestDigest>, StoreError> {
        DirStore::get_conversion(self, domain, key)
    }
    fn put_manifest(&self, sealed: &[u8]) -> Result<ManifestDigest, StoreError> {
        DirStore::put_manifest(self, sealed)
    }
    fn get_manifest(&self, digest: &ManifestDigest) -> Result<Vec<u8>, StoreError> {
        DirStore::get_manifest(self, digest)
    }
    fn replace_manifest(&self, digest: &ManifestDigest, sealed: &[u8]) -> Result<(), StoreError> {
        DirStore::replace_manifest(self, digest, sealed)
    }
    fn set_tag(&self, domain: &str, name: &str, digest: &ManifestDigest) -> Result<(), StoreError> {
        DirStore::set_tag(self, domain, name, digest)
    }
    fn resolve(&self, domain: &str, digest_or_tag: &str) -> Result<ManifestDigest, StoreError> {
        DirStore::resolve(self, domain, digest_or_tag)
    }
    fn location(&self) -> String {
        self.root().display().to_string()
    }
    fn put_profile(&self, digest: &ManifestDigest, sealed: &[u8]) -> Result<(), StoreError> {
        DirStore::put_profile(self, digest, sealed)
    }
    fn get_profile(&self, digest: &ManifestDigest) -> Result<Option<Vec<u8>>, StoreError> {
        DirStore::get_profile(self, digest)
    }
    fn remove_profile(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
        DirStore::remove_profile(self, digest)
    }
    fn list_tags(&self) -> Result<Vec<TagEntry>, StoreError> {
        DirStore::list_tags(self)
    }
    fn remove_tag(&self, domain: &str, name: &str) -> Result<bool, StoreError> {
        DirStore::remove_tag(self, domain, name)
    }
    fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        DirStore::list_manifests(self)
    }
    fn remove_manifest(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
        DirStore::remove_manifest(self, digest)
    }
    fn list_objects(&self, visit: &mut dyn FnMut(StoredObject)) -> Result<(), StoreError> {
        DirStore::list_objects(self, visit)
    }

    fn remove_object(
        &self,
        object: &ObjectName,
        modified_by: SystemTime,
    ) -> Result<bool, StoreError> {
        DirStore::remove_object(self, object, modified_by)
    }
    fn clock_probe(&self) -> Result<SystemTime, StoreError> {
        DirStore::clock_probe(self)
    }
    /// Every reuse refreshes the chunk's time (a `utimes` is cheap).
    fn dedup_refresh(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
