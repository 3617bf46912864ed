//! Atomic file creation: write a temporary file in the destination
//! directory, fsync it, rename it over the final name. (A batch writes its
//! temporaries unsynced and syncs them all at once before renaming them:
//! `batch.rs`.)
//!
//! Temporary names start with `.tmp.`, so they can never be mistaken for a
//! chunk id or a manifest digest (64 hex digits) or a tag (which must start
//! with a letter or digit). A crash leaves at most a stray temporary file;
//! the final name either does not exist or holds the complete bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::StoreError;

/// The prefix of every temporary file name.
pub const TEMP_PREFIX: &str = ".tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Creates a temporary file in `dir` that no other writer uses.
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TEMP_PREFIX}{name}.{}.{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            // A stale file from an earlier process with the same pid.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` to `dir/name` atomically. The file's data is on disk
/// before it appears under `name`; the directory entry itself becomes
/// durable when the directory is synced (see [`sync_dir`]).
///
/// Reports [`Written::NoDirectory`] when `dir` does not exist, so callers
/// can create shard directories lazily.
pub(crate) fn write_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<Written, StoreError> {
    let (temp, mut file) = match create_temp(dir, name) {
        Ok(created) => created,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Written::NoDirectory),
        Err(e) => return Err(io_error("create a temporary file in", dir)(e)),
    };
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    let result = written
        .map_err(io_error("write", &temp))
        .and_then(|()| fs::rename(&temp, dir.join(name)).map_err(io_error("rename", &temp)));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| Written::Done)
}

/// Writes `bytes` to a new temporary file in `dir` without syncing it,
/// for a batch whose data one `syncfs` makes durable before the renames
/// (see `batch.rs`), and starts writing it back. Returns the temporary's
/// path and the open file; `None` when `dir` does not exist.
pub(crate) fn write_temp(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<Option<(PathBuf, File)>, StoreError> {
    let (temp, mut file) = match create_temp(dir, name) {
        Ok(created) => created,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("create a temporary file in", dir)(e)),
    };
    match file.write_all(bytes) {
        Ok(()) => {
            // Starts the write-back now, without waiting, so the batch's
            // `syncfs` finds little left to write instead of every object
            // at once. Only advice: the sync is what makes it durable.
            drop_cached(&file);
            Ok(Some((temp, file)))
        }
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(&temp);
            Err(io_error("write", &temp)(e))
        }
    }
}

/// Advises the kernel that `file`'s cached pages are not needed: dirty
/// ones start being written back, clean ones are dropped. A batch asks
/// twice, once as it writes an object and again a few objects later,
/// when the pages are clean, so a conversion reuses a few MiB of page
/// cache instead of growing it by every byte it stores.
pub(crate) fn drop_cached(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

/// What [`write_atomically`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The file is in place.
    Done,
    /// The directory does not exist; nothing was written.
    NoDirectory,
}

/// Makes the entries of `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))
}
