//! [`DirStore`]: chunks, sealed manifests and tags in a local directory.
//!
//! ```text
//! <root>/
//!   chunks/ab/cd/abcd…(64 hex)   encrypted chunk objects, by id
//!   manifests/<64 hex>           sealed manifests, by digest
//!   tags/<domain>/<name>         "sha256:<64 hex>\n" (tags are per domain)
//!   profiles/<64 hex>            sealed start profiles, by manifest digest
//!   conversions/<domain>/<key>   "sha256:<64 hex>\n": what a source became
//!   gc-clock                     garbage collection's clock probe (listing.rs)
//! ```
//!
//! Every file is written atomically (temporary file in the same directory,
//! fsync, rename), so a write that fails or a crash never leaves a partial
//! object under its final name. Directory entries of new chunks are made
//! durable by [`DirStore::sync`], which [`DirStore::put_manifest`] calls
//! first: once a manifest is stored, every chunk it names is too. Batched
//! puts (`batch.rs`) skip the fsync of each object: the sync makes the
//! whole batch durable at once before putting it in place, and make each
//! fan-out directory once per handle (a bitmap of those made or found).

mod atomic;
mod batch;
mod listing;
mod manifests;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use manifest::ChunkId;

pub use atomic::TEMP_PREFIX;
use atomic::{Written, io_error, sync_dir, write_atomically};
pub use batch::BATCH_BYTES;
pub use listing::CLOCK_PROBE;

use crate::checked::{Bounded, check_get, check_put};
use crate::store::{ChunkStore, MAX_OBJECT_LEN, PutOutcome, StoreError};

/// A chunk store in a local directory. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    /// Directories with entries not yet synced.
    dirty: Mutex<BTreeSet<PathBuf>>,
    /// Batched objects not yet synced (`batch.rs`).
    batch: Mutex<batch::Batch>,
    /// Held by the sync of a batch.
    syncing: Mutex<()>,
    /// Fan-out directories known to exist (`batch.rs`).
    fanout: Mutex<batch::Fanout>,
}

impl DirStore {
    /// Opens the store at `root`, creating it (and its `chunks`,
    /// `manifests` and `tags` directories) if needed.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self::at(root.into());
        for dir in [store.chunks_dir(), store.manifests_dir(), store.tags_dir()] {
            fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
        }
        Ok(store)
    }

    /// Opens an existing store; fails with [`StoreError::NotAStore`] if
    /// `root` has no `chunks` directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self::at(root.into());
        if !store.chunks_dir().is_dir() {
            return Err(StoreError::NotAStore {
                path: store.root.clone(),
            });
        }
        Ok(store)
    }

    fn at(root: PathBuf) -> Self {
        Self {
            root,
            dirty: Mutex::new(BTreeSet::new()),
            batch: Mutex::default(),
            syncing: Mutex::new(()),
            fanout: Mutex::default(),
        }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }

    fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    fn tags_dir(&self) -> PathBuf {
        self.root.join("tags")
    }

    fn profiles_dir(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// The directory holding chunk `id`: `chunks/ab/cd` for an id starting
    /// `abcd`.
    fn shard_dir(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir().join(&hex[0..2]).join(&hex[2..4])
    }

    /// Where chunk `id` is stored: `<root>/chunks/ab/cd/<64 hex>`.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.shard_dir(id).join(id.to_hex())
    }

    fn mark_dirty(&self, dirs: impl IntoIterator<Item = PathBuf>) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(dirs);
    }

    fn take_dirty(&self) -> BTreeSet<PathBuf> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes every chunk stored so far by this handle durable: puts the
    /// batch in place (`batch.rs`), and syncs the directories that gained
    /// entries.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.sync_batch()?;
        let dirs = self.take_dirty();
        // Deepest first, so a new shard's entry is synced after its contents.
        for dir in dirs.iter().rev() {
            if let Err(e) = sync_dir(dir) {
                self.mark_dirty(dirs);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes `bytes` under `dir/name` atomically, creating `dir` (and
    /// recording new directories for [`DirStore::sync`]) if needed.
    fn write_in(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if write_atomically(dir, name, bytes)? == Written::Done {
            self.mark_dirty([dir.to_path_buf()]);
            return Ok(());
        }
        let mut created = Vec::new();
        let mut missing = Some(dir);
        while let Some(d) = missing.filter(|d| !d.exists()) {
            created.push(d.to_path_buf());
            missing = d.parent();
        }
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        if let Some(top) = created.last().and_then(|d| d.parent()) {
            created.push(top.to_path_buf());
        }
        self.mark_dirty(created);
        match write_atomically(dir, name, bytes)? {
            Written::Done => Ok(()),
            Written::NoDirectory => Err(io_error("write into", dir)(ErrorKind::NotFound.into())),
        }
    }

    /// Every chunk id in the store, sorted. Temporary files and anything
    /// else that is not a chunk in its right shard are ignored.
    pub fn ids(&self) -> Result<Vec<ChunkId>, StoreError> {
        let mut ids = Vec::new();
        let chunks = self.chunks_dir();
        for first in read_dir_names(&chunks)? {
            if !is_shard_name(&first) {
                continue;
            }
            let first_dir = chunks.join(&first);
            for second in read_dir_names(&first_dir)? {
                if !is_shard_name(&second) {
                    continue;
                }
                for name in read_dir_names(&first_dir.join(&second))? {
                    if let Ok(id) = name.parse::<ChunkId>()
                        && name == id.to_hex()
                        && name[0..2] == first
                        && name[2..4] == second
                    {
                        ids.push(id);
                    }
                }
            }
        }
        ids.extend(self.batched_ids());
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// [`ChunkStore::put`] of an object already checked against `id`.
    fn put_checked(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        let path = self.chunk_path(id);
        let outcome = match fs::symlink_metadata(&path) {
            // Present with the right length: dedup only if it hashes to
            // its id, so putting the object again (a re-convert) repairs
            // a damaged copy, which readers never delete from an origin.
            Ok(meta) if meta.is_file() && meta.len() == object.len() as u64 => {
                match read_limited(&path, MAX_OBJECT_LEN as u64)? {
                    // Reused: young again, so gc's grace covers it until
                    // the manifest naming it is stored. Taken by gc
                    // meanwhile: a plain store.
                    Bounded::Bytes(bytes) if ChunkId::of_object(&bytes) == *id => {
                        if self.touch(id)? {
                            return Ok(PutOutcome::AlreadyPresent);
                        }
                        PutOutcome::Stored
                    }
                    // Gone since the look: a plain store.
                    Bounded::Missing => PutOutcome::Stored,
                    _ => PutOutcome::Replaced,
                }
            }
            // Present but wrong (length, or not a file): replaced below.
            Ok(_) => PutOutcome::Replaced,
            Err(e) if e.kind() == ErrorKind::NotFound => PutOutcome::Stored,
            Err(e) => return Err(io_error("inspect", &path)(e)),
        };
        // The rename replaces the damaged copy atomically.
        self.write_in(&self.shard_dir(id), &id.to_hex(), object)?;
        Ok(outcome)
    }

    fn location(&self, id: &ChunkId) -> String {
        self.chunk_path(id).display().to_string()
    }
}

fn is_shard_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The UTF-8 names in `dir` (others cannot be ours).
fn read_dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Reads a whole file of at most `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Bounded, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Bounded::Missing),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    let len = file.metadata().map_err(io_error("read", path))?.len();
    if len > limit {
        return Ok(Bounded::TooLong(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    if bytes.len() as u64 > limit {
        return Ok(Bounded::TooLong(bytes.len() as u64));
    }
    Ok(Bounded::Bytes(bytes))
}

impl ChunkStore for DirStore {
    /// `get` hashes every object it returns.
    fn checks_gets(&self) -> bool {
        true
    }

    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.chunk_path(id);
        let mut found = read_limited(&path, MAX_OBJECT_LEN as u64)?;
        if found == Bounded::Missing && self.is_batched(id) {
            found = self.read_batched(id)?;
            if found == Bounded::Missing {
                // Renamed into place between the two reads.
                found = read_limited(&path, MAX_OBJECT_LEN as u64)?;
            }
        }
        check_get(id, found, || self.location(id))
    }

    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        check_put(id, object)?;
        self.put_checked(id, object)
    }

    fn put_batched(&self, object: &[u8]) -> Result<(ChunkId, PutOutcome), StoreError> {
        self.put_batched_hashed(ChunkId::of_object(object), object)
    }

    fn put_batched_all(&self, objects: &[&[u8]]) -> Result<Vec<(ChunkId, PutOutcome)>, StoreError> {
        ChunkId::of_objects(objects)
            .into_iter()
            .zip(objects)
            .map(|(id, object)| self.put_batched_hashed(id, object))
            .collect()
    }

    fn sync(&self) -> Result<(), StoreError> {
        DirStore::sync(self)
    }

    /// Writes back what the file system holds dirty (the objects put,
    /// their directories and inodes) while the conversion goes on, and
    /// puts the batched objects it made durable in place, so that
    /// [`DirStore::sync`] finds little left to write or rename.
    fn flush(&self) -> Result<(), StoreError> {
        self.put_durable()
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let path = self.chunk_path(id);
        match fs::symlink_metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(self.is_batched(id)),
            Err(e) => Err(io_error("inspect", &path)(e)),
        }
    }

    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let batched = self.unbatch(id)?;
        let path = self.chunk_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(batched),
            Err(e) => Err(io_error("remove", &path)(e)),
        }
    }
}

impl Drop for DirStore {
    /// Puts a batch left unsynced in place, so what was put stays stored
    /// (best effort: an error leaves stray temporaries, never a bad
    /// object).
    fn drop(&mut self) {
        let _ = self.sync_batch();
    }
}

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;
