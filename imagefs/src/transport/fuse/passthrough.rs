//! FUSE passthrough for files whose bytes are all on this host.
//!
//! A FUSE read costs three copies (the source's `pread`, the reply's write
//! into `/dev/fuse`, the kernel's copy to the reader) and two context
//! switches per request; a loop mount costs two copies. With passthrough
//! (Linux 6.9+, `FUSE_PASSTHROUGH`) the kernel reads a *backing file*
//! directly, and the daemon sees no read at all.
//!
//! A backing file's offsets must be the file's own, so it cannot be the
//! image (where the file is scattered over extents). A file is therefore
//! copied once into a backing file ("materialized") when it is opened and
//! every byte of it is local (`BlockDevice::is_local`: the dedicated tier
//! holds it); files that still need fetching stay on the normal path, and
//! are eligible at a later open. The backing files live in a directory of
//! their own, bounded by a capacity: the least recently opened files that
//! no one has open are deleted to make room, and the directory is removed
//! at unmount.
//!
//! The kernel refuses (`EIO` for the caller) to open an inode in
//! passthrough mode while it is open in the normal, cached mode, or the
//! reverse, or with two different backing files. So the mode is decided
//! per inode: while an inode has open handles, every new open takes the
//! same mode and the same backing file. Releases reach the daemon after
//! the kernel has dropped its own count, so these counts never fall below
//! the kernel's, and the rule is kept.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};

use crate::device::BlockDevice;
use crate::ext4::FileMap;

/// Where backing files go, and how many bytes of them to keep.
#[derive(Clone, Debug)]
pub struct PassthroughOptions {
    /// A directory on a local, non-stacked filesystem; the mount makes
    /// its own subdirectory in it (`imagefs-passthrough-PID`).
    pub dir: PathBuf,
    /// The most bytes of backing files kept at once. A file larger than
    /// this is never passed through.
    pub capacity: u64,
}

pub use manifest::report::PassthroughStats;

/// How an open file is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IoMode {
    /// The daemon serves reads (page cache kept across opens).
    Cached,
    /// The kernel reads the backing file.
    Passthrough,
}

/// One inode's open handles, by mode.
#[derive(Debug, Default)]
struct InodeIo {
    cached: u32,
    passthrough: u32,
    /// Registered with the kernel while `passthrough > 0`; dropping it
    /// unregisters it.
    backing: Option<BackingId>,
}

/// A backing file on disk.
#[derive(Debug)]
struct Stored {
    size: u64,
    last_open: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Open handles: their inode and mode.
    handles: HashMap<u64, (u64, IoMode)>,
    inodes: HashMap<u64, InodeIo>,
    stored: HashMap<u64, Stored>,
    /// Bytes of `stored`.
    used: u64,
    /// Open counter, for least-recently-opened eviction.
    clock: u64,
    stats: PassthroughStats,
}

/// A mount's passthrough: the per-inode modes and the backing files.
#[derive(Debug)]
pub(crate) struct Passthrough {
    dir: PathBuf,
    capacity: u64,
    /// Set at INIT when the kernel agrees; cleared for good when the
    /// kernel refuses to register a backing file (not root, for one).
    enabled: AtomicBool,
    state: Mutex<State>,
}

/// Prefix of the mount's own directory of backing files.
const DIR_PREFIX: &str = "imagefs-passthrough-";

/// Bytes copied per read while materializing.
const COPY_PIECE: usize = 1 << 20;

impl Passthrough {
    /// Makes the mount's directory of backing files, first removing the
    /// ones left by mounts whose process has gone (`kill -9`).
    pub(crate) fn new(opts: &PassthroughOptions) -> io::Result<Passthrough> {
        fs::create_dir_all(&opts.dir)?;
        for entry in fs::read_dir(&opts.dir)?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(DIR_PREFIX))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let ours = pid == std::process::id().to_string();
            if ours || !Path::new("/proc").join(pid).exists() {
                fs::remove_dir_all(entry.path())?;
            }
        }
        let dir = opts.dir.join(format!("{DIR_PREFIX}{}", std::process::id()));
        // Root's alone: the copies are plaintext files whatever their
        // mode in the image.
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Passthrough {
            dir,
            capacity: opts.capacity,
            enabled: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        })
    }

    /// Called at INIT once the kernel has accepted passthrough.
    pub(crate) fn enable(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    pub(crate) fn stats(&self) -> PassthroughStats {
        let st = self.lock();
        PassthroughStats {
            active: self.enabled.load(Ordering::SeqCst),
            stored_bytes: st.used,
            ..st.stats
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change leaves the maps consistent (counts move by one), so
        // a panicking holder leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the open of handle `fh` of inode `ino`, in passthrough mode
    /// when the rules above allow it.
    pub(crate) fn open(
        &self,
        ino: u64,
        fh: u64,
        map: &FileMap,
        source: &dyn BlockDevice,
        path: &str,
        reply: ReplyOpen,
    ) {
        let mut st = self.lock();
        st.clock += 1;
        let io = st.inodes.entry(ino).or_default();
        if io.passthrough > 0
            && let Some(id) = &io.backing
        {
            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id);
            io.passthrough += 1;
            st.handles.insert(fh, (ino, IoMode::Passthrough));
            st.stats.passthrough_opens += 1;
            return;
        }
        let eligible = io.cached == 0
            && self.enabled.load(Ordering::SeqCst)
            && map.size() > 0
            && map.size() <= self.capacity
            && map
                .extents()
                .iter()
                .all(|&(_, device, len)| source.is_local(device, len));
        if eligible {
            match self.backing_file(&mut st, ino, map, source) {
                // No room: the open backing files fill the capacity.
                Ok(None) => {}
                Ok(Some(file)) => match reply.open_backing(&file) {
                    Ok(id) => {
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                        let io = st.inodes.entry(ino).or_default();
                        io.passthrough = 1;
                        io.backing = Some(id);
                        st.handles.insert(fh, (ino, IoMode::Passthrough));
                        st.stats.passthrough_opens += 1;
                        return;
                    }
                    // Not root, or a backing filesystem the kernel will
                    // not stack on: no later file would do better.
                    Err(e) => {
                        tracing::warn!(
                            "the kernel refused a passthrough backing file in {} ({e}); \
                             passthrough is off for this mount",
                            self.dir.display()
                        );
                        self.enabled.store(false, Ordering::SeqCst);
                    }
                },
                Err(e) => tracing::info!("passthrough of {path}: {e}; serving it by reads"),
            }
        }
        st.inodes.entry(ino).or_default().cached += 1;
        st.handles.insert(fh, (ino, IoMode::Cached));
        st.stats.cached_opens += 1;
        // The image never changes: keep its pages across opens.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    /// Handle `fh` was released.
    pub(crate) fn release(&self, fh: u64) {
        let mut st = self.lock();
        let Some((ino, mode)) = st.handles.remove(&fh) else {
            return;
        };
        let Some(io) = st.inodes.get_mut(&ino) else {
            return;
        };
        match mode {
            IoMode::Cached => io.cached = io.cached.saturating_sub(1),
            IoMode::Passthrough => {
                io.passthrough = io.passthrough.saturating_sub(1);
                if io.passthrough == 0 {
                    // Unregisters the backing file from the kernel.
                    io.backing = None;
                }
            }
        }
        if io.cached == 0 && io.passthrough == 0 {
            st.inodes.remove(&ino);
        }
    }

    /// The backing file of `ino`, copied from the source now unless an
    /// earlier open left it; `None` when there is no room for it.
    fn backing_file(
        &self,
        st: &mut State,
        ino: u64,
        map: &FileMap,
        source: &dyn BlockDevice,
    ) -> io::Result<Option<File>> {
        let path = self.dir.join(ino.to_string());
        if let Some(s) = st.stored.get_mut(&ino) {
            s.last_open = st.clock;
            match File::open(&path) {
                Ok(file) => return Ok(Some(file)),
                // Gone from under us (someone cleaned the directory): it
                // is copied again.
                Err(_) => {
                    let size = s.size;
                    st.stored.remove(&ino);
                    st.used -= size;
                }
            }
        }
        let size = map.size();
        if !self.make_room(st, size)? {
            return Ok(None);
        }
        let tmp = self.dir.join(format!(".{ino}.tmp"));
        let copied = copy_file(map, source, &tmp).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        st.stored.insert(
            ino,
            Stored {
                size,
                last_open: st.clock,
            },
        );
        st.used += size;
        st.stats.materialized_files += 1;
        st.stats.materialized_bytes += size;
        File::open(&path).map(Some)
    }

    /// Deletes the least recently opened backing files no one has open
    /// until `size` more bytes fit under the capacity; false when the
    /// open ones leave too little.
    fn make_room(&self, st: &mut State, size: u64) -> io::Result<bool> {
        while st.used + size > self.capacity {
            let victim = st
                .stored
                .iter()
                .filter(|(ino, _)| st.inodes.get(ino).is_none_or(|io| io.passthrough == 0))
                .min_by_key(|(_, s)| s.last_open)
                .map(|(&ino, s)| (ino, s.size));
            let Some((ino, bytes)) = victim else {
                return Ok(false);
            };
            match fs::remove_file(self.dir.join(ino.to_string())) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            st.stored.remove(&ino);
            st.used -= bytes;
            st.stats.evicted_files += 1;
        }
        Ok(true)
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        // Unregister every backing file before deleting them.
        let mut st = self.lock();
        st.handles.clear();
        st.inodes.clear();
        drop(st);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
    }
}

/// Writes the file's bytes (its extents; holes stay holes) to `to`.
fn copy_file(map: &FileMap, source: &dyn BlockDevice, to: &Path) -> io::Result<()> {
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)?;
    let mut buf = vec![0u8; COPY_PIECE];
    for &(file_off, device, len) in map.extents() {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(COPY_PIECE as u64) as usize;
            source.read_exact_at(&mut buf[..n], device + done)?;
            out.write_all_at(&buf[..n], file_off + done)?;
            done += n as u64;
        }
    }
    out.set_len(map.size())
}
