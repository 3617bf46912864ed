//! The dedicated local tier: one instance's plaintext copy of its device.
//!
//! ```text
//! <dir>/      0700
//!   data      0600 sparse plaintext file, exactly the device size
//!   present   0600 64-byte header, then one bit per chunk (bit i%8 of byte i/8)
//!   instance  0600 which manifest digest the disk is of; whether a guest wrote
//!   lock      0600 flock'ed (exclusive) by the process using the tier
//! ```
//!
//! The header binds the bitmap to one image: magic `IMGFSDT1`, a
//! fingerprint (SHA-256 over the device size, the chunk size and the chunk
//! table's ids and holes), the device size, the chunk size and the chunk
//! count. A bitmap whose length, magic, fingerprint, geometry or padding
//! bits are wrong, a `data` file of the wrong size, or an `instance`
//! record naming another digest than the opener's, does not match.
//!
//! # Pinning
//!
//! What happens to state that does not match depends on what it is. A
//! disk no guest ever wrote to is only a cache of the image: it is reset
//! (the tier starts empty, every chunk is fetched again) and the reset is
//! reported ([`DedicatedState::Reset`]). A disk a guest wrote to (the
//! record says so, set durably before the first write lands; a directory
//! of an older version without a record counts as written) is that
//! instance's data: opening it for another image, or finding it
//! unreadable, is [`DedicatedError::Mismatch`], and only
//! [`DedicatedOptions::reset`] (`--reset`) discards it.
//!
//! # Lock
//!
//! A process holds an exclusive `flock` on `lock` for the tier's life; a
//! second opener (another `serve` or `mount` on the same directory) fails
//! with [`DedicatedError::InUse`]. The kernel drops the lock with the
//! process, so a `kill -9` never leaves the directory locked.
//!
//! # Crash safety
//!
//! A set bit in the `present` file promises that the chunk's bytes in
//! `data` are durable. Fills keep that promise through a crash at any
//! point, with one `fdatasync` for many fills (a group commit):
//!
//! 1. a fill writes the chunk's plaintext into `data` at its offset, then
//!    sets the chunk's bit in memory (this process reads the chunk from
//!    `data` from then on);
//! 2. [`DedicatedTier::persist`] (every [`PERSIST_PERIOD`] from a
//!    background thread of [`LazyImage`](super::LazyImage), at a flush
//!    and at close) copies the in-memory bitmap, `fdatasync`s `data`, and
//!    only then writes the copy over the on-disk bitmap, in one `pwrite`.
//!    Every bit in the copy was set after its chunk's bytes were written,
//!    so the sync that follows the copy covers them all.
//!
//! A crash before a persist leaves those bits clear on disk (the chunks
//! are fetched again); a crash during the bitmap's `pwrite` may leave any
//! mix of its old and new bytes, which is safe because bits only go from 0
//! to 1 and every new bit's data was synced first. Syncing `data` once per
//! fill instead cost a cold start about as much as fetching the chunk from
//! a cache node. A new or reset bitmap is written atomically (temporary
//! file, fsync, rename, directory fsync) before `data` is (re)created.
//!
//! One process uses a directory at a time (see "Lock").
//!
//! # Writes
//!
//! Copy-on-write guest writes land here only
//! ([`LazyImage::write_at`](super::LazyImage::write_at)): a write
//! materialises the chunks it touches (fetching them first if partly
//! covered, zeros for a hole) through [`DedicatedTier::store_chunk`],
//! then overwrites the new bytes in `data` with
//! [`DedicatedTier::write_present`]. A set bit then means "read from
//! `data`", whatever the manifest says, which is why reads check the
//! bitmap before treating a chunk as a hole. [`DedicatedTier::flush`]
//! (the guest's FLUSH) persists the pending bits and syncs `data` and the
//! bitmap, so a write is durable once its flush returns, as a disk's is.

mod instance;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use manifest::{ChunkEntry, ChunkId, ChunkIndex, Manifest, ManifestDigest};

use instance::{Record, create_new, create_private_dir, open_existing, write_atomically};

/// Magic at the start of the `present` file.
const MAGIC: &[u8; 8] = b"IMGFSDT1";
/// Size of the `present` header.
const HEADER_LEN: usize = 64;
/// The plaintext file.
const DATA_FILE: &str = "data";
/// The presence bitmap file.
const PRESENT_FILE: &str = "present";
/// How often [`LazyImage`](super::LazyImage) persists the fills since the
/// last persist: the most fills a crash can make the next start refetch.
pub const PERSIST_PERIOD: Duration = Duration::from_millis(100);

/// Errors from the dedicated tier.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DedicatedError {
    /// A file operation failed.
    #[error("dedicated tier: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (names the chunk when there is one).
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// The cause (shared: errors are handed to every waiting reader).
        source: Arc<io::Error>,
    },
    /// The directory holds a disk a guest wrote to, and it does not match
    /// this open (see the module docs).
    #[error(
        "dedicated tier {}: it holds an instance's disk with guest writes that cannot be reused: {reason}; not discarding it (pass --reset to start over from the image, losing those writes)",
        dir.display()
    )]
    Mismatch {
        /// The directory.
        dir: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Another process uses the directory.
    #[error(
        "dedicated tier {} is in use by another process (it holds the lock {}); each instance needs its own dedicated directory",
        dir.display(),
        lock.display()
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
}

/// How [`DedicatedTier::open_with`] treats what the directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DedicatedOptions {
    /// The digest of the manifest served: recorded in the directory, and
    /// a disk with guest writes of another digest is refused.
    pub image: Option<ManifestDigest>,
    /// Discard whatever the directory holds, guest writes included, and
    /// start from the image (`--reset`).
    pub reset: bool,
}

fn io_err(action: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> DedicatedError {
    let action = action.into();
    let path = path.to_path_buf();
    move |source| DedicatedError::Io {
        action,
        path,
        source: Arc::new(source),
    }
}

/// What [`DedicatedTier::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedicatedState {
    /// No earlier state: a new, empty tier.
    Created,
    /// An earlier process's tier, reused with this many chunks present.
    Reused {
        /// Chunks present.
        present: u64,
    },
    /// Earlier state was discarded: it was only a cache and did not
    /// match, or [`DedicatedOptions::reset`] asked for it.
    Reset {
        /// Why.
        reason: String,
    },
}

/// The dedicated local tier of one instance (see the module docs).
#[derive(Debug)]
pub struct DedicatedTier {
    dir: PathBuf,
    data: File,
    present: File,
    /// Holds the directory's `flock` while open (an `Option` only so a
    /// test can crash the tier without its lock).
    _lock: Option<File>,
    /// What the `instance` file says; `written` set before a first write.
    record: Mutex<Record>,
    /// Whether `record.written` is durably set.
    written: AtomicBool,
    /// The chunks whose bytes are in `data`, durable or not: what this
    /// process reads from `data`.
    bits: Vec<AtomicU8>,
    /// Whether a bit was set since the last persist took its copy.
    dirty: AtomicBool,
    /// Serialises persists, so bitmaps reach the disk in the order their
    /// copies were taken.
    persisting: Mutex<()>,
}

/// The fingerprint and header that bind a bitmap to `manifest`.
fn header(manifest: &Manifest) -> [u8; HEADER_LEN] {
    let mut desc = Vec::with_capacity(32 + manifest.chunks.len() * 33);
    desc.extend_from_slice(b"imagefs dedicated tier v1\0");
    desc.extend_from_slice(&manifest.device_size.to_le_bytes());
    desc.extend_from_slice(&manifest.chunk_size.bytes().to_le_bytes());
    for entry in &manifest.chunks {
        match entry {
            ChunkEntry::Hole => desc.push(0),
            ChunkEntry::Present { id, .. } => {
                desc.push(1);
                desc.extend_from_slice(id.as_bytes());
            }
        }
    }
    // ChunkId::of_object is SHA-256 over the bytes.
    let fingerprint = ChunkId::of_object(&desc);
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..40].copy_from_slice(fingerprint.as_bytes());
    h[40..48].copy_from_slice(&manifest.device_size.to_le_bytes());
    h[48..52].copy_from_slice(&manifest.chunk_size.bytes().to_le_bytes());
    h[56..64].copy_from_slice(&(manifest.chunks.len() as u64).to_le_bytes());
    h
}

/// Checks an existing `present` file; `Err` says why it is not trusted.
fn check_bitmap(bytes: &[u8], expected_header: &[u8], chunks: u64) -> Result<(), String> {
    let bitmap_len = chunks.div_ceil(8) as usize;
    if bytes.len() != HEADER_LEN + bitmap_len {
        return Err(format!(
            "bitmap file is {} bytes, expected {}",
            bytes.len(),
            HEADER_LEN + bitmap_len
        ));
    }
    if &bytes[0..8] != MAGIC {
        return Err("bitmap file has no IMGFSDT1 magic".into());
    }
    if bytes[..HEADER_LEN] != *expected_header {
        return Err("bitmap file belongs to another image or geometry".into());
    }
    let spare = (bitmap_len as u64 * 8 - chunks) as u32;
    if spare > 0 {
        let last = bytes[bytes.len() - 1];
        if last >> (8 - spare) != 0 {
            return Err("bitmap file has bits set past the last chunk".into());
        }
    }
    Ok(())
}

/// Reads and checks the bitmap and the data file's size: the bitmap file's
/// bytes, or why they are not trusted (`""`: there is no bitmap).
fn read_bitmap(
    present_path: &Path,
    data_path: &Path,
    expected: &[u8],
    manifest: &Manifest,
) -> Result<Vec<u8>, String> {
    let chunks = manifest.chunks.len() as u64;
    // One byte past the right length is enough to tell it is wrong.
    let limit = (HEADER_LEN as u64 + chunks.div_ceil(8)).saturating_add(1);
    let bytes = match open_existing(present_path, false) {
        Ok(f) => {
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut io::Read::take(f, limit), &mut bytes)
                .map_err(|e| format!("bitmap file unreadable: {e}"))?;
            bytes
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(String::new()),
        Err(e) => return Err(format!("bitmap file unreadable: {e}")),
    };
    check_bitmap(&bytes, expected, chunks)?;
    match fs::symlink_metadata(data_path) {
        Ok(m) if m.is_file() && m.len() == manifest.device_size => Ok(bytes),
        Ok(m) if !m.is_file() => Err("data file is not a regular file".into()),
        Ok(m) => Err(format!(
            "data file is {} bytes, expected {}",
            m.len(),
            manifest.device_size
        )),
        Err(e) => Err(format!("data file unreadable: {e}")),
    }
}

impl DedicatedTier {
    /// [`Self::open_with`] without a digest to pin or a reset.
    pub fn open(dir: &Path, manifest: &Manifest) -> Result<(Self, DedicatedState), DedicatedError> {
        Self::open_with(dir, manifest, &DedicatedOptions::default())
    }

    /// Opens the tier in `dir` for `manifest` (creating `dir` if needed)
    /// and locks it; reuses an earlier process's state when it is of the
    /// same image and intact; otherwise resets a cache and refuses a disk
    /// with guest writes (see the module docs).
    pub fn open_with(
        dir: &Path,
        manifest: &Manifest,
        opts: &DedicatedOptions,
    ) -> Result<(Self, DedicatedState), DedicatedError> {
        create_private_dir(dir)?;
        let lock = instance::lock(dir)?;
        let chunks = manifest.chunks.len() as u64;
        let expected = header(manifest);
        let present_path = dir.join(PRESENT_FILE);
        let data_path = dir.join(DATA_FILE);
        let record = instance::read_record(dir);
        let verdict = read_bitmap(&present_path, &data_path, &expected, manifest);
        // An older version's directory has a bitmap and no record: it may
        // hold guest writes, so it counts as written.
        let written = match &record {
            Ok(Some(r)) => r.written,
            Ok(None) => !matches!(verdict, Err(ref why) if why.is_empty()),
            Err(_) => true,
        };
        let recorded_image = record.as_ref().ok().and_then(|r| r.as_ref()?.image);
        let verdict = match (record, verdict) {
            (Err(why), _) => Err(why),
            (Ok(_), Err(why)) => Err(why),
            (Ok(_), Ok(bytes)) => match (recorded_image, opts.image) {
                (Some(have), Some(want)) if have != want => {
                    Err(format!("it is a disk of image {have}, not of {want}"))
                }
                _ => Ok(bytes),
            },
        };
        let verdict = match verdict {
            // Nothing there yet: a new tier (`--reset` has nothing to do).
            Err(why) if why.is_empty() && !written => Err(why),
            Err(why) if why.is_empty() => Err("its bitmap file is missing".to_string()),
            v => v,
        };
        let verdict = match verdict {
            Ok(_) if opts.reset => Err("--reset discarded the earlier disk".to_string()),
            Err(why) if opts.reset => Err(format!("--reset discarded the earlier disk ({why})")),
            Err(reason) if written => {
                return Err(DedicatedError::Mismatch {
                    dir: dir.to_path_buf(),
                    reason,
                });
            }
            // Never written: only a cache of the image, so resetting loses
            // nothing but refetches (and is reported as `Reset`).
            v => v,
        };
        let (bitmap, state, record) = match verdict {
            Ok(bytes) => {
                let bitmap = bytes[HEADER_LEN..].to_vec();
                let present = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
                let record = Record {
                    image: opts.image.or(recorded_image),
                    written,
                };
                (bitmap, DedicatedState::Reused { present }, record)
            }
            Err(reason) => {
                // Distrust everything: an empty bitmap first, then a fresh
                // data file, so no set bit can ever cover old bytes.
                let empty = vec![0u8; chunks.div_ceil(8) as usize];
                let mut file = expected.to_vec();
                file.extend_from_slice(&empty);
                write_atomically(dir, PRESENT_FILE, &file)?;
                match fs::remove_file(&data_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &data_path)(e)),
                }
                let data = create_new(&data_path).map_err(io_err("create", &data_path))?;
                data.set_len(manifest.device_size)
                    .map_err(io_err("size", &data_path))?;
                data.sync_all().map_err(io_err("sync", &data_path))?;
                let state = if reason.is_empty() {
                    DedicatedState::Created
                } else {
                    DedicatedState::Reset { reason }
                };
                let record = Record {
                    image: opts.image,
                    written: false,
                };
                (empty, state, record)
            }
        };
        // Last: a crash before this leaves the old record, which at worst
        // refuses (never discards) the disk on the next open.
        if instance::read_record(dir).ok().flatten().as_ref() != Some(&record) {
            instance::write_record(dir, &record)?;
        }
        let rw = |path: &Path| open_existing(path, true).map_err(io_err("open", path));
        Ok((
            Self {
                dir: dir.to_path_buf(),
                data: rw(&data_path)?,
                present: rw(&present_path)?,
                _lock: Some(lock),
                written: AtomicBool::new(record.written),
                record: Mutex::new(record),
                bits: bitmap.into_iter().map(AtomicU8::new).collect(),
                dirty: AtomicBool::new(false),
                persisting: Mutex::new(()),
            },
            state,
        ))
    }

    /// Records, durably, that the disk holds guest writes (before the
    /// first one lands), so it is never reset without `--reset`.
    pub fn mark_written(&self) -> Result<(), DedicatedError> {
        if self.written.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        if !record.written {
            let updated = Record {
                written: true,
                ..record.clone()
            };
            instance::write_record(&self.dir, &updated)?;
            *record = updated;
        }
        self.written.store(true, Ordering::Release);
        Ok(())
    }

    /// What a crash leaves: nothing persisted or synced on the way out,
    /// and the lock released as the kernel would release a dead process's.
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        drop(self._lock.take());
        std::mem::forget(self);
    }

    /// The tier's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether chunk `index` is present (its bytes are in `data`).
    pub fn is_present(&self, index: ChunkIndex) -> bool {
        let Ok(i) = usize::try_from(index.0) else {
            return false;
        };
        self.bits
            .get(i / 8)
            .is_some_and(|b| b.load(Ordering::Acquire) & (1 << (i % 8)) != 0)
    }

    /// How many chunks are present.
    pub fn present_count(&self) -> u64 {
        self.bits
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Reads `buf.len()` bytes at device offset `offset`, all inside the
    /// present chunk `index`.
    pub fn read_at(
        &self,
        index: ChunkIndex,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), DedicatedError> {
        let path = self.dir.join(DATA_FILE);
        self.data
            .read_exact_at(buf, offset)
            .map_err(io_err(format!("read {index} from"), &path))
    }

    /// Stores the whole plaintext of chunk `index`, which starts at device
    /// offset `start`, and marks it present for this process; the next
    /// [`persist`](Self::persist) makes it durable (see the module docs).
    pub fn store_chunk(
        &self,
        index: ChunkIndex,
        start: u64,
        plain: &[u8],
    ) -> Result<(), DedicatedError> {
        let data_path = self.dir.join(DATA_FILE);
        let i = usize::try_from(index.0)
            .ok()
            .filter(|i| i / 8 < self.bits.len())
            .ok_or_else(|| {
                io_err(format!("store {index} in"), &data_path)(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "chunk index outside the device",
                ))
            })?;
        self.data
            .write_all_at(plain, start)
            .map_err(io_err(format!("write {index} to"), &data_path))?;
        self.bits[i / 8].fetch_or(1 << (i % 8), Ordering::AcqRel);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes the fills since the last persist durable: syncs `data`, then
    /// writes their bits into the bitmap (see the module docs). The bitmap
    /// itself is not synced here ([`sync`](Self::sync) does): a bit lost
    /// in a crash costs a refetch, never wrong data.
    pub fn persist(&self) -> Result<(), DedicatedError> {
        let _turn = self
            .persisting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let copy: Vec<u8> = self
            .bits
            .iter()
            .map(|b| b.load(Ordering::Acquire))
            .collect();
        let written = self
            .data
            .sync_data()
            .map_err(io_err("sync", &self.dir.join(DATA_FILE)))
            .and_then(|()| {
                let path = self.dir.join(PRESENT_FILE);
                self.present
                    .write_all_at(&copy, HEADER_LEN as u64)
                    .map_err(io_err("write the bitmap", &path))
            });
        if written.is_err() {
            // Try again next time.
            self.dirty.store(true, Ordering::Release);
        }
        written
    }

    /// Overwrites `buf.len()` bytes at device offset `offset`, all inside
    /// the present chunk `index` (a guest write to a materialised chunk).
    /// Not synced: [`flush`](Self::flush) makes it durable.
    pub fn write_present(
        &self,
        index: ChunkIndex,
        buf: &[u8],
        offset: u64,
    ) -> Result<(), DedicatedError> {
        let path = self.dir.join(DATA_FILE);
        if !self.is_present(index) {
            return Err(io_err(format!("write {index} to"), &path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk is not materialised",
            )));
        }
        self.data
            .write_all_at(buf, offset)
            .map_err(io_err(format!("write {index} to"), &path))
    }

    /// Makes every byte written and every chunk stored so far durable
    /// (the guest's FLUSH).
    pub fn flush(&self) -> Result<(), DedicatedError> {
        self.persist()?;
        self.data
            .sync_data()
            .map_err(io_err("sync", &self.dir.join(DATA_FILE)))?;
        self.sync_bitmap()
    }

    /// Makes every chunk stored so far durable, bits included.
    pub fn sync(&self) -> Result<(), DedicatedError> {
        self.persist()?;
        self.sync_bitmap()
    }

    fn sync_bitmap(&self) -> Result<(), DedicatedError> {
        self.present
            .sync_data()
            .map_err(io_err("sync", &self.dir.join(PRESENT_FILE)))
    }
}

impl Drop for DedicatedTier {
    fn drop(&mut self) {
        // Best effort: a lost bit only costs a refetch.
        let _ = self.sync();
    }
}
