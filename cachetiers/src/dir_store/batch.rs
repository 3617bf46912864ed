//! Batched puts ([`ChunkStore::put_batched`](crate::ChunkStore::put_batched))
//! into a [`DirStore`]: many objects made durable by two file-system syncs
//! instead of one fsync each (plus one per directory).
//!
//! A batched object is written to a temporary file in its shard directory,
//! unsynced, and left under that name. [`DirStore::sync`] then runs
//! `syncfs` (every temporary's bytes are on disk), renames each one into
//! place, and runs `syncfs` again (the names are on disk). So a final name
//! is still either absent or the complete object, even after a power loss,
//! and a manifest stored after the sync never names an object a crash
//! could lose.
//!
//! Until then the store serves a batched object from its temporary (`get`,
//! `contains`, `ids`, dedup of a second put): stored, just not durable
//! yet. A batch is synced when it reaches [`BATCH_BYTES`] (which bounds
//! the stray temporaries a crash can leave) and when the handle is
//! dropped. A flush ([`ChunkStore::flush`](crate::ChunkStore::flush),
//! which a conversion calls as it goes) runs the first `syncfs` and the
//! renames for what was batched so far, so the sync at the end has only
//! the objects batched since to write back and rename; the names the
//! flush made are durable after that sync's second `syncfs`, like its
//! own.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use manifest::ChunkId;

use super::DirStore;
use super::atomic::{drop_cached, io_error, write_temp};
use crate::checked::{Bounded, check_len};
use crate::store::{MAX_OBJECT_LEN, PutOutcome, StoreError};

/// Bytes of batched objects after which a put syncs the batch.
pub const BATCH_BYTES: u64 = 1 << 30;

/// Objects written since whose pages are dropped once written back.
const SETTLING: usize = 16;

/// Objects written under temporary names, not yet synced or renamed.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Each object's temporary and length.
    objects: BTreeMap<ChunkId, (PathBuf, u64)>,
    bytes: u64,
    /// The last objects written, still open: [`SETTLING`] objects later
    /// their write-back is done and their cached pages can go.
    settling: VecDeque<File>,
    /// Objects were renamed into place by a flush, and their names are
    /// not durable yet.
    placed: bool,
}

/// The fan-out directories (`chunks/ab`, `chunks/ab/cd`) this handle has
/// made or found, as bitmaps: 8 KiB, so a conversion makes each directory
/// once instead of trying one `mkdir` (or three) per object.
#[derive(Debug)]
pub(super) struct Fanout {
    parents: [u64; 4],
    shards: Box<[u64; 1024]>,
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout {
            parents: [0; 4],
            shards: Box::new([0; 1024]),
        }
    }
}

impl Fanout {
    fn bit(words: &[u64], i: usize) -> bool {
        words[i / 64] & (1 << (i % 64)) != 0
    }

    pub(super) fn has_parent(&self, a: u8) -> bool {
        Self::bit(&self.parents, a as usize)
    }

    pub(super) fn set_parent(&mut self, a: u8) {
        self.parents[a as usize / 64] |= 1 << (a % 64);
    }

    pub(super) fn has_shard(&self, a: u8, b: u8) -> bool {
        Self::bit(&self.shards[..], shard_index(a, b))
    }

    pub(super) fn set_shard(&mut self, a: u8, b: u8) {
        let i = shard_index(a, b);
        self.shards[i / 64] |= 1 << (i % 64);
    }

    /// Forgets parent `a` and every shard under it (one was removed).
    pub(super) fn forget(&mut self, a: u8) {
        self.parents[a as usize / 64] &= !(1 << (a % 64));
        let first = shard_index(a, 0) / 64;
        self.shards[first..first + 4].fill(0);
    }
}

fn shard_index(a: u8, b: u8) -> usize {
    (a as usize) << 8 | b as usize
}

impl DirStore {
    fn batch(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fanout(&self) -> std::sync::MutexGuard<'_, Fanout> {
        self.fanout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the shard directory of `id` (and its parent) if missing;
    /// whether it was created now, in which case it holds no object yet.
    /// Each directory is made (or found) once per handle: after that the
    /// [`Fanout`] cache answers, with no system call.
    fn make_shard(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let [a, b, ..] = *id.as_bytes();
        if self.fanout().has_shard(a, b) {
            return Ok(false);
        }
        let shard = self.shard_dir(id);
        let parent = shard.parent().unwrap_or(&shard);
        if !self.fanout().has_parent(a) {
            match fs::create_dir(parent) {
                Ok(()) => self.mark_dirty([self.chunks_dir()]),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error("create directory", parent)(e)),
            }
            self.fanout().set_parent(a);
        }
        let created = match fs::create_dir(&shard) {
            Ok(()) => {
                self.mark_dirty([parent.to_path_buf()]);
                true
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_error("create directory", &shard)(e)),
        };
        self.fanout().set_shard(a, b);
        Ok(created)
    }

    /// [`ChunkStore::put_batched`](crate::ChunkStore::put_batched) of an
    /// object just hashed to `id`: only its length is left to check.
    pub(super) fn put_batched_hashed(
        &self,
        id: ChunkId,
        object: &[u8],
    ) -> Result<(ChunkId, PutOutcome), StoreError> {
        check_len(&id, object)?;
        Ok((id, self.put_batched_checked(&id, object)?))
    }

    /// [`ChunkStore::put_batched`](crate::ChunkStore::put_batched) of an
    /// object already checked against `id`.
    pub(super) fn put_batched_checked(
        &self,
        id: &ChunkId,
        object: &[u8],
    ) -> Result<PutOutcome, StoreError> {
        if self.batch().objects.contains_key(id) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let shard = self.shard_dir(id);
        if !self.make_shard(id)? {
            let path = self.chunk_path(id);
            match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("inspect", &path)(e)),
                // A copy is there: dedup, or repair it, as an unbatched
                // put does (rare, so its fsync does not matter).
                Ok(_) => return self.put_checked(id, object),
            }
        }
        let (temp, file) = match write_temp(&shard, &id.to_hex(), object)? {
            Some(written) => written,
            None => {
                // Removed behind the cache's back: make it again, once.
                self.fanout().forget(id.as_bytes()[0]);
                self.make_shard(id)?;
                write_temp(&shard, &id.to_hex(), object)?
                    .ok_or_else(|| io_error("write into", &shard)(ErrorKind::NotFound.into()))?
            }
        };
        let (full, settled) = {
            let mut batch = self.batch();
            if batch.objects.contains_key(id) {
                // Another thread batched the same object meanwhile.
                drop(batch);
                let _ = fs::remove_file(&temp);
                return Ok(PutOutcome::AlreadyPresent);
            }
            batch.objects.insert(*id, (temp, object.len() as u64));
            batch.bytes += object.len() as u64;
            batch.settling.push_back(file);
            let settled = (batch.settling.len() > SETTLING)
                .then(|| batch.settling.pop_front())
                .flatten();
            (batch.bytes >= BATCH_BYTES, settled)
        };
        if let Some(settled) = settled {
            drop_cached(&settled);
        }
        if full {
            self.sync()?;
        }
        Ok(PutOutcome::Stored)
    }

    /// The batched object `id`, read from its temporary (`Missing` when it
    /// is not batched, or was renamed into place meanwhile).
    pub(super) fn read_batched(&self, id: &ChunkId) -> Result<Bounded, StoreError> {
        let temp = self.batch().objects.get(id).map(|(temp, _)| temp.clone());
        match temp {
            Some(temp) => super::read_limited(&temp, MAX_OBJECT_LEN as u64),
            None => Ok(Bounded::Missing),
        }
    }

    /// Whether `id` is in the unsynced batch.
    pub(super) fn is_batched(&self, id: &ChunkId) -> bool {
        self.batch().objects.contains_key(id)
    }

    /// Drops `id` from the batch and deletes its temporary; whether it was
    /// batched.
    pub(super) fn unbatch(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let Some(temp) = self.remove_from_batch(id) else {
            return Ok(false);
        };
        match fs::remove_file(&temp) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_error("remove", &temp)(e)),
        }
    }

    fn remove_from_batch(&self, id: &ChunkId) -> Option<PathBuf> {
        let mut batch = self.batch();
        let (temp, len) = batch.objects.remove(id)?;
        batch.bytes -= len;
        Some(temp)
    }

    /// The ids in the unsynced batch.
    pub(super) fn batched_ids(&self) -> Vec<ChunkId> {
        self.batch().objects.keys().copied().collect()
    }

    /// Makes the batch durable and puts it in place: `syncfs`, renames,
    /// `syncfs` (which also covers every directory marked dirty before
    /// it, including those of objects [`DirStore::put_durable`] put in
    /// place earlier). An object leaves the batch only once renamed, so
    /// readers find it all along; one that cannot be renamed stays
    /// batched and the sync fails, so no sync succeeds without it.
    pub(super) fn sync_batch(&self) -> Result<(), StoreError> {
        // One sync at a time: two would rename the same temporaries.
        let _one = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        let first_error = self.put_in_place(true)?;
        // Nothing put in place, now or by a flush: the directories of
        // plain puts are synced one by one (`DirStore::sync`), cheaper
        // than the whole file system.
        if !self.batch().placed {
            return first_error.map_or(Ok(()), Err);
        }
        let dirty = self.take_dirty();
        if let Err(e) = self.syncfs() {
            self.mark_dirty(dirty);
            return Err(first_error.unwrap_or(e));
        }
        self.batch().placed = false;
        first_error.map_or(Ok(()), Err)
    }

    /// [`ChunkStore::flush`](crate::ChunkStore::flush): `syncfs`, then the
    /// objects batched before it, durable now, renamed into place. Their
    /// names become durable at the next sync, which then has only the
    /// objects batched since to write back and rename: a conversion's end
    /// waits for those alone.
    pub(super) fn put_durable(&self) -> Result<(), StoreError> {
        let _one = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        self.put_in_place(false)?.map_or(Ok(()), Err)
    }

    /// `syncfs`, then the objects batched before it renamed into place
    /// and their shards marked dirty; the first rename that failed. The
    /// caller holds `syncing`. `last`: the sync, after every write, so
    /// the pages of the last objects written are clean now and can go,
    /// and nothing else runs, so the renames are split over the cores. A
    /// flush runs while puts go on: it leaves those pages to be dropped
    /// in turn and renames on its own thread.
    fn put_in_place(&self, last: bool) -> Result<Option<StoreError>, StoreError> {
        let snapshot: Vec<(ChunkId, PathBuf)> = self
            .batch()
            .objects
            .iter()
            .map(|(id, (temp, _))| (*id, temp.clone()))
            .collect();
        if snapshot.is_empty() {
            return Ok(None);
        }
        self.syncfs()?;
        if last {
            // Written back now: the last objects' pages can go too.
            let settled: Vec<File> = self.batch().settling.drain(..).collect();
            settled.iter().for_each(drop_cached);
        }
        // The renames are a path walk and two directory updates each.
        let (shards, first_error) = if last {
            self.rename_split(&snapshot)
        } else {
            self.rename_in_place(&snapshot)
        };
        if !shards.is_empty() {
            self.mark_dirty(shards);
            self.batch().placed = true;
        }
        Ok(first_error)
    }

    /// [`DirStore::rename_in_place`] split over the cores.
    fn rename_split(&self, objects: &[(ChunkId, PathBuf)]) -> (Vec<PathBuf>, Option<StoreError>) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let part = objects.len().div_ceil(threads).max(1);
        let (shards, errors): (Vec<Vec<PathBuf>>, Vec<_>) = std::thread::scope(|scope| {
            let parts: Vec<_> = objects
                .chunks(part)
                .map(|objects| scope.spawn(|| self.rename_in_place(objects)))
                .collect();
            parts
                .into_iter()
                .map(|p| {
                    p.join()
                        .unwrap_or_else(|_| (Vec::new(), Some(renamer_panicked(self.root()))))
                })
                .unzip()
        });
        (
            shards.into_iter().flatten().collect(),
            errors.into_iter().flatten().next(),
        )
    }

    /// Renames batched objects into place; the shards that gained one, and
    /// the first error.
    fn rename_in_place(
        &self,
        objects: &[(ChunkId, PathBuf)],
    ) -> (Vec<PathBuf>, Option<StoreError>) {
        let mut first_error = None;
        let mut shards = Vec::new();
        for (id, temp) in objects {
            match fs::rename(temp, self.chunk_path(id)) {
                Ok(()) => {
                    let mut batch = self.batch();
                    if let Some((_, len)) = batch.objects.remove(id) {
                        batch.bytes -= len;
                    }
                    shards.push(self.shard_dir(id));
                }
                // Removed from the batch meanwhile (`remove`): not an error.
                Err(e) if e.kind() == ErrorKind::NotFound && !self.is_batched(id) => {}
                Err(e) => {
                    first_error.get_or_insert_with(|| io_error("rename", temp)(e));
                }
            }
        }
        (shards, first_error)
    }

    /// `syncfs` on the store's file system: everything written to it is
    /// on disk, in one call (one journal commit) whatever the count.
    pub(super) fn syncfs(&self) -> Result<(), StoreError> {
        File::open(self.root())
            .and_then(|dir| rustix::fs::syncfs(&dir).map_err(std::io::Error::from))
            .map_err(io_error("sync the file system of", self.root()))
    }
}

fn renamer_panicked(root: &Path) -> StoreError {
    io_error("rename the batch into place in", root)(std::io::Error::other(
        "a renaming thread panicked",
    ))
}
