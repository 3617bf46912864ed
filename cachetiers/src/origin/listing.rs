//! The timed listing of an [`ObjectOrigin`] that garbage collection works
//! from ([`Catalog::list_objects`](crate::Catalog::list_objects) and
//! friends). Times are the service's `Last-Modified`: when the object was
//! last put. Chunks are listed one first-level shard (`chunks/ab/`) at a
//! time, so at most about 1/256 of the chunk listing is held at once.

use std::time::SystemTime;

use futures_util::TryStreamExt;
use manifest::{ChunkId, ManifestDigest};
use object_store::ObjectMeta;
use object_store::path::Path as Key;

use super::ObjectOrigin;
use crate::catalog::{ObjectName, StoredObject};
use crate::dir_store::{CLOCK_PROBE, TEMP_PREFIX};
use crate::store::{ChunkStore, StoreError};

impl ObjectOrigin {
    /// [`Catalog::list_objects`](crate::Catalog::list_objects).
    pub fn list_objects(&self, visit: &mut dyn FnMut(StoredObject)) -> Result<(), StoreError> {
        for first in self.list_level("chunks")?.0 {
            let key = format!("{}chunks/{first}", self.prefix());
            let listed = self.request("list", &key, |store, key| async move {
                store
                    .list(Some(&key))
                    .try_collect::<Vec<ObjectMeta>>()
                    .await
            })?;
            for meta in listed.unwrap_or_default() {
                if let Some(name) = self.name_of(&meta.location) {
                    visit(stored(name, &meta));
                }
            }
        }
        for meta in self.list_level("profiles")?.1 {
            if let Some(digest) = meta
                .location
                .filename()
                .and_then(|n| ManifestDigest::from_hex(n).ok())
            {
                visit(stored(ObjectName::Profile(digest), &meta));
            }
        }
        Ok(())
    }

    /// What the chunk-area object at `location` is: a chunk in its right
    /// shard, a temporary (a directory store's, read through `file://`),
    /// or `None` (not ours: left alone).
    fn name_of(&self, location: &Key) -> Option<ObjectName> {
        let relative = location.as_ref().strip_prefix(self.prefix())?;
        let file = location.filename()?;
        if file.starts_with(TEMP_PREFIX) {
            return Some(ObjectName::Temporary(relative.to_owned()));
        }
        let id = file.parse::<ChunkId>().ok()?;
        (self.chunk_key(&id) == location.as_ref()).then_some(ObjectName::Chunk(id))
    }

    /// The key of `object`; `None` for a temporary path that is not under
    /// the chunk area or not named like a temporary (it could name
    /// anything).
    fn object_key(&self, object: &ObjectName) -> Option<String> {
        match object {
            ObjectName::Chunk(id) => Some(self.chunk_key(id)),
            ObjectName::Profile(digest) => Some(self.profile_key(digest)),
            ObjectName::Temporary(relative) => {
                let key = format!("{}{relative}", self.prefix());
                let ok = relative.starts_with("chunks/")
                    && !relative
                        .split('/')
                        .any(|part| part.is_empty() || part == "..")
                    && Key::from(key.as_str())
                        .filename()
                        .is_some_and(|n| n.starts_with(TEMP_PREFIX));
                ok.then_some(key)
            }
        }
    }

    /// [`Catalog::remove_object`](crate::Catalog::remove_object): a HEAD,
    /// then the delete if the object is still old (a put between the two
    /// is not seen: S3 has no conditional delete everywhere).
    pub fn remove_object(
        &self,
        object: &ObjectName,
        modified_by: SystemTime,
    ) -> Result<bool, StoreError> {
        let Some(key) = self.object_key(object) else {
            return Ok(false);
        };
        match self.head(&key)? {
            Some(meta) if SystemTime::from(meta.last_modified) <= modified_by => {}
            _ => return Ok(false),
        }
        match object {
            ObjectName::Chunk(id) => self.remove(id),
            _ => self.delete_key(&key),
        }
    }

    /// [`Catalog::clock_probe`](crate::Catalog::clock_probe): puts
    /// `<prefix>gc-clock` and returns the service's time on it.
    pub fn clock_probe(&self) -> Result<SystemTime, StoreError> {
        let key = format!("{}{CLOCK_PROBE}", self.prefix());
        self.write(&key, b"imagefs gc clock probe\n")?;
        match self.head(&key)? {
            Some(meta) => Ok(SystemTime::from(meta.last_modified)),
            None => Err(StoreError::Backend {
                tier: crate::Catalog::location(self),
                source: format!(
                    "the clock probe {} vanished right after its put",
                    self.object_url(&key)
                )
                .into(),
            }),
        }
    }
}

fn stored(name: ObjectName, meta: &ObjectMeta) -> StoredObject {
    StoredObject {
        name,
        size: meta.size,
        modified: Some(SystemTime::from(meta.last_modified)),
    }
}
