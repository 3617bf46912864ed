//! [`RocksStore`]: the shared local tier, encrypted objects for the whole
//! host in one RocksDB database, bounded by a capacity with LRU eviction.
//!
//! Three column families:
//!
//! ```text
//! objects  id (32 bytes)                     → the object
//! meta     id                                → last use (u64 LE) ‖ length (u64 LE)
//! lru      last use (u64 BE) ‖ id            → (empty)
//! ```
//!
//! "Last use" is a logical clock, not wall time: one more than the largest
//! value in the database at open, incremented by every put and hit. The
//! `lru` family is sorted by it, so its first key is the least recently
//! used object. Every change (store, touch, evict) is one `WriteBatch`.
//!
//! This is a cache, so writes skip the write-ahead log: logging a 512 KiB
//! object copied it once more and ran RocksDB's CRC32C over it on the
//! fetching thread, which cost more than fetching it from a cache node.
//! The families are flushed together (`atomic_flush`), and a clean close
//! flushes what is left, so after a crash or `kill -9` the database is as
//! of its last flush: the three families agree, and the fills since then
//! are lost and fetched again when next needed.
//!
//! Capacity counts object bytes (the sum of stored lengths), which is what
//! a cache's user sizes it by. The files on disk run somewhat larger until
//! compaction and blob garbage collection reclaim evicted values.
//!
//! Large values live in blob files (`enable_blob_files`), so compaction
//! moves keys, not 512 KiB objects; objects are ciphertext, so nothing is
//! compressed.
//!
//! One process opens a database at a time (RocksDB holds a lock file);
//! another process gets [`StoreError::Backend`] saying the database is in
//! use.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use manifest::ChunkId;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

use crate::checked::{Bounded, Verified, check_get, check_put};
use crate::store::{ChunkStore, MAX_OBJECT_LEN, PutOutcome, StoreError};

const OBJECTS: &str = "objects";
const META: &str = "meta";
const LRU: &str = "lru";

/// Counters of a [`RocksStore`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocksUsage {
    /// Objects stored.
    pub objects: u64,
    /// Their total length in bytes.
    pub bytes: u64,
    /// The configured capacity in bytes.
    pub capacity: u64,
    /// Objects evicted since open.
    pub evictions: u64,
}

/// Size accounting, guarded by one lock: every mutation of the database
/// happens under it, so accounting and contents move together.
#[derive(Debug)]
struct State {
    clock: u64,
    objects: u64,
    bytes: u64,
    evictions: u64,
}

/// A capacity-bounded RocksDB chunk store (see the module docs).
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    capacity: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn meta_value(stamp: u64, len: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&stamp.to_le_bytes());
    v[8..].copy_from_slice(&len.to_le_bytes());
    v
}

fn parse_meta(v: &[u8]) -> Option<(u64, u64)> {
    let stamp = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let len = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
    Some((stamp, len))
}

fn lru_key(stamp: u64, id: &ChunkId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&stamp.to_be_bytes());
    k[8..].copy_from_slice(id.as_bytes());
    k
}

impl RocksStore {
    /// Opens (creating if needed) the database at `path`, holding at most
    /// `capacity` bytes of objects. A database that holds more (opened
    /// before with a larger capacity) is trimmed now.
    pub fn open(path: impl Into<PathBuf>, capacity: u64) -> Result<Self, StoreError> {
        let path = path.into();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_write_buffer_size(8 << 20);
        // No WAL (see the module doc): the families must reach disk
        // together for a crash to leave them in agreement.
        opts.set_atomic_flush(true);
        let mut blobs = Options::default();
        blobs.set_enable_blob_files(true);
        blobs.set_min_blob_size(4096);
        blobs.set_enable_blob_gc(true);
        blobs.set_write_buffer_size(32 << 20);
        let cfs = [
            ColumnFamilyDescriptor::new(OBJECTS, blobs),
            ColumnFamilyDescriptor::new(META, Options::default()),
            ColumnFamilyDescriptor::new(LRU, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| rocks_error(&path, e))?;
        let store = Self {
            db,
            path,
            capacity,
            state: Mutex::new(State {
                clock: 0,
                objects: 0,
                bytes: 0,
                evictions: 0,
            }),
        };
        store.recount()?;
        let mut state = store.lock();
        store.evict_to_fit(&mut state, 0)?;
        drop(state);
        Ok(store)
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Objects, bytes, capacity and evictions now.
    pub fn usage(&self) -> RocksUsage {
        let s = self.lock();
        RocksUsage {
            objects: s.objects,
            bytes: s.bytes,
            capacity: self.capacity,
            evictions: s.evictions,
        }
    }

    /// Every stored id, in id order.
    pub fn ids(&self) -> Result<Vec<ChunkId>, StoreError> {
        let meta = self.cf(META)?;
        let mut ids = Vec::new();
        for item in self.db.iterator_cf(meta, IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            if let Ok(bytes) = <[u8; 32]>::try_from(&k[..]) {
                ids.push(ChunkId(bytes));
            }
        }
        Ok(ids)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| StoreError::Backend {
            tier: self.path.display().to_string(),
            source: format!("column family `{name}` is missing").into(),
        })
    }

    fn err(&self, e: rocksdb::Error) -> StoreError {
        rocks_error(&self.path, e)
    }

    /// The tier's name in errors.
    fn tier(&self) -> String {
        tier_name(&self.path)
    }

    /// Rebuilds the accounting from the `meta` family (after a crash the
    /// database is the truth).
    fn recount(&self) -> Result<(), StoreError> {
        let meta = self.cf(META)?;
        let mut state = self.lock();
        for item in self.db.iterator_cf(meta, IteratorMode::Start) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            if let Some((stamp, len)) = parse_meta(&v) {
                state.objects += 1;
                state.bytes += len;
                state.clock = state.clock.max(stamp);
            }
        }
        state.clock += 1;
        Ok(())
    }

    /// Evicts least recently used objects until `incoming` more bytes fit.
    fn evict_to_fit(&self, state: &mut State, incoming: u64) -> Result<(), StoreError> {
        let (objects, meta, lru) = (self.cf(OBJECTS)?, self.cf(META)?, self.cf(LRU)?);
        while state.bytes + incoming > self.capacity {
            let Some(first) = self.db.iterator_cf(lru, IteratorMode::Start).next() else {
                break;
            };
            let (key, _) = first.map_err(|e| self.err(e))?;
            let mut batch = WriteBatch::default();
            batch.delete_cf(lru, &key);
            let id_bytes = key.get(8..40).and_then(|b| <[u8; 32]>::try_from(b).ok());
            let mut freed = None;
            if let Some(id) = id_bytes {
                let stamp = key
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
                let current = self.db.get_pinned_cf(meta, id).map_err(|e| self.err(e))?;
                // Only the entry matching the object's current stamp owns it.
                if let Some((s, len)) = current.as_deref().and_then(parse_meta)
                    && Some(s) == stamp
                {
                    batch.delete_cf(objects, id);
                    batch.delete_cf(meta, id);
                    freed = Some(len);
                }
            }
            self.write(batch)?;
            if let Some(len) = freed {
                state.bytes = state.bytes.saturating_sub(len);
                state.objects = state.objects.saturating_sub(1);
                state.evictions += 1;
            }
        }
        Ok(())
    }

    /// The stamp and length recorded for `id`, if it is stored.
    fn stored(&self, id: &ChunkId) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(META)?, id.as_bytes())
            .map_err(|e| self.err(e))?
            .as_deref()
            .and_then(parse_meta))
    }

    /// Applies `batch` atomically, without the WAL (see the module doc).
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options).map_err(|e| self.err(e))
    }

    /// The stored bytes of `id`, unchecked.
    fn read(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let objects = self.cf(OBJECTS)?;
        let mut read = ReadOptions::default();
        read.set_verify_checksums(false);
        self.db
            .get_cf_opt(objects, id.as_bytes(), &read)
            .map_err(|e| self.err(e))
    }

    /// Marks `id` as just used.
    fn touch(&self, id: &ChunkId) -> Result<(), StoreError> {
        let (meta, lru) = (self.cf(META)?, self.cf(LRU)?);
        let mut state = self.lock();
        // Re-read under the lock: an eviction may have run since the get.
        let Some((old, len)) = self.stored(id)? else {
            return Ok(());
        };
        let stamp = state.clock;
        state.clock += 1;
        let mut batch = WriteBatch::default();
        batch.delete_cf(lru, lru_key(old, id));
        batch.put_cf(lru, lru_key(stamp, id), []);
        batch.put_cf(meta, id.as_bytes(), meta_value(stamp, len));
        self.write(batch)
    }
}

fn rocks_error(path: &Path, e: rocksdb::Error) -> StoreError {
    let text = e.into_string();
    let source = if text.contains("LOCK") && text.contains("lock") {
        format!("{text} (the database is in use by another process)")
    } else {
        text
    };
    StoreError::Backend {
        tier: tier_name(path),
        source: source.into(),
    }
}

fn tier_name(path: &Path) -> String {
    format!("shared local RocksDB at {}", path.display())
}

impl ChunkStore for RocksStore {
    /// `get` hashes every object it returns.
    fn checks_gets(&self) -> bool {
        true
    }

    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        // RocksDB's own checksum of the blob is skipped: the SHA-256 check
        // below covers every byte, and it cost more than the hash.
        let found = self.read(id)?;
        let Some(object) = check_get(id, Bounded::from_option(found), || self.tier())? else {
            return Ok(None);
        };
        self.touch(id)?;
        Ok(Some(object))
    }

    /// Reads the object without checking it: every object was hashed on
    /// its way in (`put`, `put_verified`), and the reader this is
    /// forwarded to hashes it again on arrival. RocksDB's CRC32C of the
    /// blob would be the cheaper check in principle, but this build of
    /// RocksDB computes it without SSE4.2 and it cost more than the
    /// SHA-256 (0.39 ms against 0.29 ms for 512 KiB).
    fn get_to_forward(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(object) = self.read(id)? else {
            return Ok(None);
        };
        if object.len() > MAX_OBJECT_LEN {
            return Err(StoreError::Corrupt {
                id: *id,
                location: self.tier(),
                problem: format!(
                    "it is {} bytes, over the {MAX_OBJECT_LEN}-byte limit",
                    object.len()
                ),
            });
        }
        self.touch(id)?;
        Ok(Some(object))
    }

    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        check_put(id, object)?;
        self.store(id, object)
    }

    /// Stores without hashing again (the size was checked with the hash).
    fn put_verified(&self, verified: Verified<'_>) -> Result<PutOutcome, StoreError> {
        self.store(verified.id(), verified.object())
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let meta = self.cf(META)?;
        Ok(self
            .db
            .get_pinned_cf(meta, id.as_bytes())
            .map_err(|e| self.err(e))?
            .is_some())
    }

    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some((stamp, len)) = self.stored(id)? else {
            return Ok(false);
        };
        self.delete(&mut state, id, stamp, len)?;
        Ok(true)
    }
}

impl RocksStore {
    /// Deletes a stored object, its size record and its LRU entry in one
    /// batch (the caller holds the state lock and read `stamp`, `len`).
    fn delete(
        &self,
        state: &mut State,
        id: &ChunkId,
        stamp: u64,
        len: u64,
    ) -> Result<(), StoreError> {
        let (objects, meta, lru) = (self.cf(OBJECTS)?, self.cf(META)?, self.cf(LRU)?);
        let mut batch = WriteBatch::default();
        batch.delete_cf(objects, id.as_bytes());
        batch.delete_cf(meta, id.as_bytes());
        batch.delete_cf(lru, lru_key(stamp, id));
        self.write(batch)?;
        state.objects = state.objects.saturating_sub(1);
        state.bytes = state.bytes.saturating_sub(len);
        Ok(())
    }

    /// Writes a checked object (or touches it if it is already there).
    fn store(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        let len = object.len() as u64;
        if len > self.capacity {
            return Err(StoreError::Backend {
                tier: self.tier(),
                source: format!(
                    "chunk {id} ({len} bytes) is larger than the capacity of {} bytes",
                    self.capacity
                )
                .into(),
            });
        }
        let (objects, meta, lru) = (self.cf(OBJECTS)?, self.cf(META)?, self.cf(LRU)?);
        let mut state = self.lock();
        let mut outcome = PutOutcome::Stored;
        if let Some((old_stamp, old_len)) = self.stored(id)? {
            // Dedup only a copy that still hashes to its id: a damaged one
            // is replaced, not kept because its key exists.
            if self
                .read(id)?
                .is_some_and(|bytes| ChunkId::of_object(&bytes) == *id)
            {
                drop(state);
                self.touch(id)?;
                return Ok(PutOutcome::AlreadyPresent);
            }
            self.delete(&mut state, id, old_stamp, old_len)?;
            outcome = PutOutcome::Replaced;
        }
        self.evict_to_fit(&mut state, len)?;
        let stamp = state.clock;
        state.clock += 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(objects, id.as_bytes(), object);
        batch.put_cf(meta, id.as_bytes(), meta_value(stamp, len));
        batch.put_cf(lru, lru_key(stamp, id), []);
        self.write(batch)?;
        state.objects += 1;
        state.bytes += len;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests;
