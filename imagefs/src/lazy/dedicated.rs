//! The dedicated local tier: one instance's plaintext copy of its device.
//!
//! ```text
//! <dir>/
//!   data      sparse plaintext file, exactly the device size
//!   present   64-byte header, then one bit per chunk (bit i%8 of byte i/8)
//! ```
//!
//! The header binds the bitmap to one image: magic `IMGFSDT1`, a
//! fingerprint (SHA-256 over the device size, the chunk size and the chunk
//! table's ids and holes), the device size, the chunk size and the chunk
//! count. A bitmap whose length, magic, fingerprint, geometry or padding
//! bits are wrong, or a `data` file of the wrong size, is not trusted: the
//! tier starts empty and every chunk is fetched again.
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
//! One process uses a directory at a time; that is the caller's to ensure
//! (one dedicated directory per instance).
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use manifest::{ChunkEntry, ChunkId, ChunkIndex, Manifest};

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
    /// Earlier state that could not be trusted was discarded.
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

/// Writes `bytes` to `dir/name` atomically and durably.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DedicatedError> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        let target = dir.join(name);
        fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl DedicatedTier {
    /// Opens the tier in `dir` for `manifest` (creating `dir` if needed),
    /// reusing an earlier process's state when it belongs to the same
    /// image and is intact, and starting empty otherwise.
    pub fn open(dir: &Path, manifest: &Manifest) -> Result<(Self, DedicatedState), DedicatedError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let chunks = manifest.chunks.len() as u64;
        let expected = header(manifest);
        let present_path = dir.join(PRESENT_FILE);
        let data_path = dir.join(DATA_FILE);
        let verdict =
            match fs::read(&present_path) {
                Ok(bytes) => check_bitmap(&bytes, &expected, chunks).and_then(|()| {
                    match fs::metadata(&data_path) {
                        Ok(m) if m.is_file() && m.len() == manifest.device_size => Ok(bytes),
                        Ok(m) => Err(format!(
                            "data file is {} bytes, expected {}",
                            m.len(),
                            manifest.device_size
                        )),
                        Err(e) => Err(format!("data file unreadable: {e}")),
                    }
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(String::new()),
                Err(e) => Err(format!("bitmap file unreadable: {e}")),
            };
        let (bitmap, state) = match verdict {
            Ok(bytes) => {
                let bitmap = bytes[HEADER_LEN..].to_vec();
                let present = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
                (bitmap, DedicatedState::Reused { present })
            }
            Err(reason) => {
                // Distrust everything: an empty bitmap first, then a fresh
                // data file, so no set bit can ever cover old bytes.
                let empty = vec![0u8; chunks.div_ceil(8) as usize];
                let mut file = expected.to_vec();
                file.extend_from_slice(&empty);
                write_atomically(dir, PRESENT_FILE, &file)?;
                let data = File::create(&data_path).map_err(io_err("create", &data_path))?;
                data.set_len(manifest.device_size)
                    .map_err(io_err("size", &data_path))?;
                data.sync_all().map_err(io_err("sync", &data_path))?;
                let state = if reason.is_empty() {
                    DedicatedState::Created
                } else {
                    DedicatedState::Reset { reason }
                };
                (empty, state)
            }
        };
        let rw = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_err("open", path))
        };
        Ok((
            Self {
                dir: dir.to_path_buf(),
                data: rw(&data_path)?,
                present: rw(&present_path)?,
                bits: bitmap.into_iter().map(AtomicU8::new).collect(),
                dirty: AtomicBool::new(false),
                persisting: Mutex::new(()),
            },
            state,
        ))
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
