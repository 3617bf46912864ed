//! [`ObjectOrigin`]: chunks, sealed manifests and tags in an object store
//! (S3, or a local directory through `object_store`), with the key layout
//! of [`DirStore`](crate::DirStore).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use manifest::{ChunkId, ConversionKey, ManifestDigest};
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::Semaphore;

use super::DEFAULT_MAX_CONCURRENT_REQUESTS;
use super::runtime::{self, RuntimeError};
use crate::catalog::{
    Catalog, ObjectName, StoredManifest, StoredObject, TagEntry, conversion_path,
};
use crate::checked::{
    Bounded, MAX_MANIFEST_LEN, MAX_PROFILE_LEN, MAX_TAG_LEN, check_conversion, check_get,
    check_manifest, check_manifest_replacement, check_profile, check_profile_put, check_put,
    check_tag,
};
use crate::store::{ChunkStore, MAX_OBJECT_LEN, PutOutcome, StoreError};
use crate::tag::{tag_path, validate_tag_name};

/// A failed request to the object store, naming what was asked and of
/// which object (the `source` of a [`StoreError::Backend`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The service (or the local file system) answered with an error.
    #[error("cannot {action} {url}: {source}")]
    Service {
        /// What was being done (`get`, `put`, …).
        action: &'static str,
        /// The object's URL.
        url: String,
        /// The object store's error.
        source: object_store::Error,
    },
    /// No answer within the operation's time bound.
    #[error("cannot {action} {url}: no answer within {}s", timeout.as_secs())]
    TimedOut {
        /// What was being done.
        action: &'static str,
        /// The object's URL.
        url: String,
        /// The bound.
        timeout: Duration,
    },
    /// The request could not be run at all.
    #[error("cannot {action} {url}: {source}")]
    Runtime {
        /// What was being done.
        action: &'static str,
        /// The object's URL.
        url: String,
        /// Why.
        source: RuntimeError,
    },
}

/// An origin in an object store: `chunks/ab/cd/<64 hex>`,
/// `manifests/<64 hex>`, `tags/<domain>/<name>`, `profiles/<64 hex>` and
/// `conversions/<domain>/<64 hex>` under a key prefix, exactly as a
/// [`DirStore`](crate::DirStore) lays them out on disk, so a directory
/// written by one reads through the other.
///
/// The [`ChunkStore`] and [`Catalog`] methods block; the requests run on a
/// runtime shared by every object origin in the process, and each one
/// ends (with [`StoreError::Backend`] naming the origin) within its time
/// bound, however the service behaves.
#[derive(Debug, Clone)]
pub struct ObjectOrigin {
    store: Arc<dyn ObjectStore>,
    /// `""` or `a/b/`: prepended to every key.
    prefix: String,
    /// The URL of the store's root (`s3://bucket`, `file:///dir`), without
    /// the prefix; object URLs are this, `/`, and the full key.
    root_url: String,
    /// Upper bound for one operation, retries included.
    op_timeout: Duration,
    /// One permit per request in flight: callers on any number of threads
    /// get up to this many requests running at once (each on its own
    /// pooled connection), and the rest queue here rather than open ever
    /// more connections.
    permits: Arc<Semaphore>,
    /// A put finding its chunk stored rewrites it when it is older than
    /// this ([`Catalog::dedup_refresh`]).
    dedup_refresh: Duration,
}

/// [`Catalog::dedup_refresh`] of an object origin unless configured: a
/// reused chunk is rewritten at most once an hour, which costs one upload
/// per hour per shared chunk, and garbage collection's grace must exceed it.
pub const DEFAULT_DEDUP_REFRESH: Duration = Duration::from_secs(3600);

impl ObjectOrigin {
    /// An origin over `store`, whose keys all start with `prefix` (slashes
    /// at either end do not matter). `root_url` names the store in
    /// messages (`s3://bucket`); `op_timeout` bounds each operation,
    /// retries included (the store's own client options should time out
    /// sooner; this is the backstop).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        root_url: impl Into<String>,
        prefix: &str,
        op_timeout: Duration,
    ) -> Self {
        let prefix = prefix.trim_matches('/');
        Self {
            store,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            root_url: root_url.into().trim_end_matches('/').to_owned(),
            op_timeout,
            permits: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENT_REQUESTS)),
            dedup_refresh: DEFAULT_DEDUP_REFRESH,
        }
    }

    /// The same origin refreshing a reused chunk once it is older than
    /// `after` ([`Catalog::dedup_refresh`]; zero: at every reuse).
    pub fn with_dedup_refresh(mut self, after: Duration) -> Self {
        self.dedup_refresh = after;
        self
    }

    /// The same origin allowing at most `max` requests in flight at once
    /// (at least 1; see [`RequestLimits`](super::RequestLimits)).
    pub fn with_max_concurrent_requests(mut self, max: usize) -> Self {
        self.permits = Arc::new(Semaphore::new(max.max(1)));
        self
    }

    /// `""` or `a/b/`: the start of every key.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The full key of chunk `id`: `<prefix>chunks/ab/cd/<64 hex>`.
    pub fn chunk_key(&self, id: &ChunkId) -> String {
        let hex = id.to_hex();
        format!("{}chunks/{}/{}/{hex}", self.prefix, &hex[0..2], &hex[2..4])
    }

    /// The full key of manifest `digest`: `<prefix>manifests/<64 hex>`.
    pub fn manifest_key(&self, digest: &ManifestDigest) -> String {
        format!("{}manifests/{}", self.prefix, digest.to_hex())
    }

    /// The full key of tag `name` of `domain` (not validated):
    /// `<prefix>tags/<domain>/<name>`.
    pub fn tag_key(&self, domain: &str, name: &str) -> String {
        format!("{}tags/{domain}/{name}", self.prefix)
    }

    /// The full key of the start profile of manifest `digest`:
    /// `<prefix>profiles/<64 hex>`.
    pub fn profile_key(&self, digest: &ManifestDigest) -> String {
        format!("{}profiles/{}", self.prefix, digest.to_hex())
    }

    /// Deletes object `key`; false when there was none.
    pub(super) fn delete_key(&self, key: &str) -> Result<bool, StoreError> {
        // S3 deletes succeed whether or not the object exists, so ask first.
        if self.size(key)?.is_none() {
            return Ok(false);
        }
        let deleted = self.request("delete", key, |store, key| async move {
            store.delete(&key).await
        })?;
        Ok(deleted.is_some())
    }

    /// The URL of the object under `key`, for messages.
    pub fn object_url(&self, key: &str) -> String {
        format!("{}/{key}", self.root_url)
    }

    fn backend(&self, source: RequestError) -> StoreError {
        StoreError::Backend {
            tier: self.location(),
            source: Box::new(source),
        }
    }

    /// Runs one request on the shared runtime, bounded by `op_timeout`.
    /// `NotFound` is `Ok(None)`; every other failure is a
    /// [`StoreError::Backend`] naming the object.
    pub(super) fn request<T, F, Fut>(
        &self,
        action: &'static str,
        key: &str,
        f: F,
    ) -> Result<Option<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn ObjectStore>, Key) -> Fut,
        Fut: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        let fut = f(self.store.clone(), Key::from(key));
        let timeout = self.op_timeout;
        let url = self.object_url(key);
        let permits = Arc::clone(&self.permits);
        // The wait for a permit counts against the operation's bound: a
        // queue behind a stalled service ends in a timeout too.
        let outcome = runtime::run(async move {
            tokio::time::timeout(timeout, async move {
                // The semaphore is never closed, so this only waits.
                let _permit = permits.acquire_owned().await;
                fut.await
            })
            .await
        });
        match outcome {
            Ok(Ok(Ok(value))) => Ok(Some(value)),
            Ok(Ok(Err(object_store::Error::NotFound { .. }))) => Ok(None),
            Ok(Ok(Err(source))) => Err(self.backend(RequestError::Service {
                action,
                url,
                source,
            })),
            Ok(Err(_elapsed)) => Err(self.backend(RequestError::TimedOut {
                action,
                url,
                timeout,
            })),
            Err(source) => Err(self.backend(RequestError::Runtime {
                action,
                url,
                source,
            })),
        }
    }

    /// Reads the object under `key` if it is at most `limit` bytes.
    fn fetch(&self, key: &str, limit: u64) -> Result<Bounded, StoreError> {
        let got = self.request("get", key, |store, key| async move {
            let result = store.get(&key).await?;
            let len = result.range.end.saturating_sub(result.range.start);
            if len > limit {
                // Not read: a huge object must not fill memory.
                return Ok(Bounded::TooLong(len));
            }
            let bytes = result.bytes().await?;
            if bytes.len() as u64 > limit {
                return Ok(Bounded::TooLong(bytes.len() as u64));
            }
            // Takes over the buffer when it is one piece (no copy).
            Ok(Bounded::Bytes(Vec::from(bytes)))
        })?;
        Ok(got.unwrap_or(Bounded::Missing))
    }

    /// The size of the object under `key`, if there is one.
    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.head(key)?.map(|meta| meta.size))
    }

    /// The metadata of the object under `key`, if there is one.
    pub(super) fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.request("inspect", key, |store, key| async move {
            store.head(&key).await
        })
    }

    /// Writes `bytes` under `key` (replacing what is there: every write is
    /// atomic in an object store, so readers see the old or the new).
    pub(super) fn write(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let payload = PutPayload::from(bytes.to_vec());
        self.request("put", key, |store, key| async move {
            store.put(&key, payload).await.map(drop)
        })?;
        Ok(())
    }

    fn has_manifest(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
        Ok(self.size(&self.manifest_key(digest))?.is_some())
    }

    /// The digest tag `name` points at.
    pub fn tag(&self, domain: &str, name: &str) -> Result<ManifestDigest, StoreError> {
        let qualified = tag_path(domain, name)?;
        let key = self.tag_key(domain, name);
        let found = self.fetch(&key, MAX_TAG_LEN)?;
        check_tag(&qualified, found, || PathBuf::from(self.object_url(&key)))
    }

    /// One level below `<prefix>DIR/`: the names of the "directories"
    /// there and the objects with their metadata (every page of the
    /// listing; an empty listing when nothing is there).
    pub(super) fn list_level(
        &self,
        dir: &str,
    ) -> Result<(Vec<String>, Vec<ObjectMeta>), StoreError> {
        let key = format!("{}{dir}", self.prefix);
        let listed = self.request("list", &key, |store, key| async move {
            store.list_with_delimiter(Some(&key)).await
        })?;
        let Some(listed) = listed else {
            return Ok((Vec::new(), Vec::new()));
        };
        let dirs = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        Ok((dirs, listed.objects))
    }
}

impl ChunkStore for ObjectOrigin {
    /// `get` hashes every object it returns.
    fn checks_gets(&self) -> bool {
        true
    }

    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.chunk_key(id);
        let found = self.fetch(&key, MAX_OBJECT_LEN as u64)?;
        check_get(id, found, || self.object_url(&key))
    }

    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        check_put(id, object)?;
        let key = self.chunk_key(id);
        // Present with the right length: dedup only once the copy hashes
        // to its id, so putting the object again (a re-convert) repairs a
        // damaged one, which readers never delete from the origin. A HEAD
        // first (a GET only when it looks present) rather than a
        // conditional PUT, which not every S3 service supports; two
        // writers racing write the same bytes.
        let outcome = match self.head(&key)? {
            None => PutOutcome::Stored,
            Some(meta) if meta.size == object.len() as u64 => {
                match self.fetch(&key, MAX_OBJECT_LEN as u64)? {
                    Bounded::Bytes(bytes) if ChunkId::of_object(&bytes) == *id => {
                        // Reused: made young again when old, so gc's grace
                        // covers it until its new manifest is stored.
                        let age = SystemTime::now()
                            .duration_since(SystemTime::from(meta.last_modified))
                            .unwrap_or_default();
                        if age >= self.dedup_refresh {
                            self.write(&key, object)?;
                        }
                        return Ok(PutOutcome::AlreadyPresent);
                    }
                    // Gone since the HEAD: a plain store.
                    Bounded::Missing => PutOutcome::Stored,
                    _ => PutOutcome::Replaced,
                }
            }
            Some(_) => PutOutcome::Replaced,
        };
        // One PUT replaces the whole object (S3 writes are atomic).
        self.write(&key, object)?;
        Ok(outcome)
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.size(&self.chunk_key(id))?.is_some())
    }

    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.delete_key(&self.chunk_key(id))
    }
}

impl Catalog for ObjectOrigin {
    fn put_conversion(
        &self,
        domain: &str,
        key: &ConversionKey,
        digest: &ManifestDigest,
    ) -> Result<(), StoreError> {
        let key = format!(
            "{}conversions/{}",
            self.prefix,
            conversion_path(domain, key)?
        );
        if !self.has_manifest(digest)? {
            return Err(StoreError::ManifestNotFound { digest: *digest });
        }
        self.write(&key, &manifest::conversion::encode_record(digest))
    }

    fn get_conversion(
        &self,
        domain: &str,
        key: &ConversionKey,
    ) -> Result<Option<ManifestDigest>, StoreError> {
        let key = format!(
            "{}conversions/{}",
            self.prefix,
            conversion_path(domain, key)?
        );
        let found = self.fetch(&key, manifest::conversion::MAX_RECORD_LEN)?;
        check_conversion(found, || PathBuf::from(self.object_url(&key)))
    }

    /// Stores a sealed manifest under its digest. Every chunk put before
    /// is already durable: an object store acknowledges a put once it is
    /// stored (and the local file system store syncs each file).
    fn put_manifest(&self, sealed: &[u8]) -> Result<ManifestDigest, StoreError> {
        let digest = ManifestDigest::of(sealed);
        let key = self.manifest_key(&digest);
        if self.size(&key)? != Some(sealed.len() as u64) {
            self.write(&key, sealed)?;
        }
        Ok(digest)
    }

    /// One PUT replaces the object whole (S3 writes are atomic).
    fn replace_manifest(&self, digest: &ManifestDigest, sealed: &[u8]) -> Result<(), StoreError> {
        let key = self.manifest_key(digest);
        check_manifest_replacement(digest, sealed, || PathBuf::from(self.object_url(&key)))?;
        if !self.has_manifest(digest)? {
            return Err(StoreError::ManifestNotFound { digest: *digest });
        }
        self.write(&key, sealed)
    }

    fn get_manifest(&self, digest: &ManifestDigest) -> Result<Vec<u8>, StoreError> {
        let key = self.manifest_key(digest);
        let found = self.fetch(&key, MAX_MANIFEST_LEN)?;
        check_manifest(digest, found, || PathBuf::from(self.object_url(&key)))
    }

    fn set_tag(&self, domain: &str, name: &str, digest: &ManifestDigest) -> Result<(), StoreError> {
        tag_path(domain, name)?;
        if !self.has_manifest(digest)? {
            return Err(StoreError::ManifestNotFound { digest: *digest });
        }
        self.write(
            &self.tag_key(domain, name),
            format!("{digest}\n").as_bytes(),
        )
    }

    fn resolve(&self, domain: &str, digest_or_tag: &str) -> Result<ManifestDigest, StoreError> {
        let digest = crate::catalog::digest_or_tag(digest_or_tag, |name| self.tag(domain, name))?;
        if !self.has_manifest(&digest)? {
            return Err(StoreError::ManifestNotFound { digest });
        }
        Ok(digest)
    }

    fn put_profile(&self, digest: &ManifestDigest, sealed: &[u8]) -> Result<(), StoreError> {
        let key = self.profile_key(digest);
        check_profile_put(digest, sealed, || self.object_url(&key))?;
        if !self.has_manifest(digest)? {
            return Err(StoreError::ManifestNotFound { digest: *digest });
        }
        self.write(&key, sealed)
    }

    fn get_profile(&self, digest: &ManifestDigest) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.profile_key(digest);
        let found = self.fetch(&key, MAX_PROFILE_LEN)?;
        check_profile(digest, found, || self.object_url(&key))
    }

    fn remove_profile(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
        self.delete_key(&self.profile_key(digest))
    }

    fn list_tags(&self) -> Result<Vec<TagEntry>, StoreError> {
        let mut all = Vec::new();
        for domain in self.list_level("tags")?.0 {
            if manifest::validate_domain(&domain).is_err() {
                continue;
            }
            for object in self.list_level(&format!("tags/{domain}"))?.1 {
                let Some(name) = object.location.filename() else {
                    continue;
                };
                if validate_tag_name(name).is_ok() {
                    let digest = self.tag(&domain, name)?;
                    all.push(TagEntry {
                        domain: domain.clone(),
                        name: name.to_owned(),
                        digest,
                    });
                }
            }
        }
        all.sort();
        Ok(all)
    }

    fn remove_tag(&self, domain: &str, name: &str) -> Result<bool, StoreError> {
        tag_path(domain, name)?;
        self.delete_key(&self.tag_key(domain, name))
    }

    fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        let mut all: Vec<StoredManifest> = self
            .list_level("manifests")?
            .1
            .into_iter()
            .filter_map(|object| {
                let digest = ManifestDigest::from_hex(object.location.filename()?).ok()?;
                Some(StoredManifest {
                    digest,
                    size: object.size,
                    stored_at: Some(SystemTime::from(object.last_modified)),
                })
            })
            .collect();
        all.sort_by_key(|m| m.digest);
        Ok(all)
    }

    fn remove_manifest(&self, digest: &ManifestDigest) -> Result<bool, StoreError> {
        let removed = self.delete_key(&self.manifest_key(digest))?;
        self.delete_key(&self.profile_key(digest))?;
        Ok(removed)
    }

    fn list_objects(&self, visit: &mut dyn FnMut(StoredObject)) -> Result<(), StoreError> {
        ObjectOrigin::list_objects(self, visit)
    }

    fn remove_object(
        &self,
        object: &ObjectName,
        modified_by: SystemTime,
    ) -> Result<bool, StoreError> {
        ObjectOrigin::remove_object(self, object, modified_by)
    }

    fn clock_probe(&self) -> Result<SystemTime, StoreError> {
        ObjectOrigin::clock_probe(self)
    }

    fn dedup_refresh(&self) -> Duration {
        self.dedup_refresh
    }

    fn location(&self) -> String {
        format!("{}/{}", self.root_url, self.prefix.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_owned()
    }
}
