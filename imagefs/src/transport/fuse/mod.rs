//! A read-only FUSE view of an image, for people to browse (`imagefs mount`).
//!
//! Two shapes:
//! - the file tree, read by this crate's ext4 reader ([`crate::ext4`])
//!   from the image's bytes ([`MountOptions::raw`] off);
//! - `--raw`: the whole block device as one file, `/disk.img`.
//!
//! The bytes come from a [`BlockDevice`]: a plain file holding an exported
//! image, or a lazily fetched image (chunks through the cache tiers). An
//! error from the source (a chunk that cannot be fetched) becomes `EIO` for
//! the caller and one line on stderr naming the inode, the offset and the
//! source's error text.
//!
//! Everything shown comes from the inodes: FUSE inode numbers are ext4's
//! (except the root, which FUSE numbers 1), so the names of a hard-linked
//! file are one inode; mode, owner, size, allocated blocks, link count,
//! device numbers (`rdev`) and all four times with nanoseconds; symlink
//! targets; and extended attributes from the inode and its xattr block,
//! POSIX ACLs in the format `getxattr` returns. As with Linux's ext4,
//! `listxattr` shows `trusted.` names only to root and leaves out the
//! `system.` ones ext4 has no handler for.
//!
//! Requests are served on the FUSE threads themselves (`fs.rs`), reads by
//! the file's extent map (`read.rs`); a file whose bytes are all local can
//! instead be handed to the kernel with FUSE passthrough
//! (`passthrough.rs`), which then reads a copy of it directly. What was
//! served is counted ([`FuseStats`]).

mod attr;
mod fs;
mod inodes;
mod passthrough;
mod raw;
mod read;
mod source;
mod stats;
mod xattr;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::device::BlockDevice;

pub use passthrough::{PassthroughOptions, PassthroughStats};
pub use raw::RAW_NAME;
pub use stats::FuseStats;

/// FUSE event-loop threads. Every request is served on them, so more
/// than one lets a read waiting for a chunk not hold up the others.
const FUSE_THREADS: usize = 4;

/// How to mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Show the whole block device as one file, `/disk.img`.
    pub raw: bool,
    /// Let every user read the mount (FUSE's `allow_other`; needs root or
    /// `user_allow_other` in `/etc/fuse.conf`).
    pub allow_other: bool,
    /// The name shown as the mount's source in `/proc/mounts`.
    pub fs_name: Option<String>,
    /// Hand files whose bytes are all local to the kernel (FUSE
    /// passthrough, Linux 6.9+ and root), copied into backing files here.
    /// Not used with `raw`.
    pub passthrough: Option<PassthroughOptions>,
}

/// Errors from mounting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// The image's bytes are not an ext4 filesystem the reader can read.
    #[error("reading the ext4 metadata of the image")]
    Meta {
        /// The cause.
        #[source]
        source: crate::ext4::MetaError,
    },
    /// The FUSE mount itself failed (no `/dev/fuse`, not permitted, a bad
    /// mount point).
    #[error("mounting FUSE at {mountpoint}")]
    Fuse {
        /// Where.
        mountpoint: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("unmounting {mountpoint}")]
    Unmount {
        /// Where.
        mountpoint: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The directory for passthrough's backing files could not be made.
    #[error("preparing the passthrough directory {dir}")]
    Passthrough {
        /// Which.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A live mount, served by a background thread. Dropping it unmounts.
#[derive(Debug)]
pub struct Mounted {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    passthrough: Option<Arc<passthrough::Passthrough>>,
    counters: Arc<stats::Counters>,
}

impl Mounted {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// What passthrough has done so far (`None` when it was not asked
    /// for).
    pub fn passthrough_stats(&self) -> Option<PassthroughStats> {
        self.passthrough.as_ref().map(|p| p.stats())
    }

    /// The requests served so far.
    pub fn stats(&self) -> FuseStats {
        self.counters.snapshot()
    }

    /// A handle that unmounts from any thread (as `umount` would), which
    /// ends [`Mounted::wait`].
    pub fn stop_handle(&self) -> UnmountHandle {
        UnmountHandle {
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Waits until the mount ends: unmounted from outside (`umount`) or
    /// through an [`UnmountHandle`]. Returns what passthrough did, when it
    /// was asked for.
    pub fn wait(mut self) -> Result<Option<PassthroughStats>, MountError> {
        match self.session.take() {
            // The session thread ends when the kernel drops the mount;
            // there is nothing left to unmount then.
            Some(s) => s.join().map_err(|source| MountError::Unmount {
                mountpoint: self.mountpoint.clone(),
                source,
            }),
            None => Ok(()),
        }
        .map(|()| self.passthrough_stats())
    }

    /// Unmounts and waits for the serving thread to end.
    pub fn unmount(mut self) -> Result<(), MountError> {
        match self.session.take() {
            Some(s) => s.umount_and_join().map_err(|source| MountError::Unmount {
                mountpoint: self.mountpoint.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && let Err(e) = s.umount_and_join()
        {
            tracing::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

/// Unmounts a [`Mounted`] from another thread (see [`Mounted::stop_handle`]).
#[derive(Debug, Clone)]
pub struct UnmountHandle {
    mountpoint: PathBuf,
}

impl UnmountHandle {
    /// Unmounts; the mount's [`Mounted::wait`] then returns. Unmounting
    /// what is already gone is not an error.
    pub fn unmount(&self) -> Result<(), MountError> {
        match nix::mount::umount(&self.mountpoint) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(MountError::Unmount {
                mountpoint: self.mountpoint.clone(),
                source: e.into(),
            }),
        }
    }
}

/// Mounts `source` read-only at `mountpoint` and serves it from a
/// background thread until the returned [`Mounted`] is dropped or
/// unmounted.
pub fn mount(
    source: Arc<dyn BlockDevice>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<Mounted, MountError> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
        MountOption::FSName(opts.fs_name.clone().unwrap_or_else(|| "imagefs".into())),
        MountOption::Subtype("imagefs".into()),
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let fuse_err = |source| MountError::Fuse {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    let mut passthrough = None;
    let counters = Arc::new(stats::Counters::default());
    let session = if opts.raw {
        fuser::spawn_mount(raw::RawFs::new(source), mountpoint, &config).map_err(fuse_err)?
    } else {
        let meta = crate::ext4::Ext4Meta::open(Arc::clone(&source))
            .map_err(|source| MountError::Meta { source })?;
        if let Some(p) = &opts.passthrough {
            let made =
                passthrough::Passthrough::new(p).map_err(|source| MountError::Passthrough {
                    dir: p.dir.clone(),
                    source,
                })?;
            passthrough = Some(Arc::new(made));
        }
        let tree = inodes::Tree::new(meta);
        let fs = fs::TreeFs::new(tree, source, passthrough.clone(), Arc::clone(&counters));
        fuser::spawn_mount(fs, mountpoint, &config).map_err(fuse_err)?
    };
    raise_readahead(mountpoint);
    Ok(Mounted {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        passthrough,
        counters,
    })
}

/// Read-ahead of the mount, in KiB.
const READAHEAD_KIB: u32 = 1024;

/// Raises the kernel's read-ahead for the mount from its 128 KiB default
/// (which FUSE cannot raise at INIT), so sequential reads arrive in larger
/// requests. Best effort: without root or sysfs the default stays.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(mountpoint) else {
        return;
    };
    // Linux's dev_t encoding of major and minor numbers.
    let dev = md.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, READAHEAD_KIB.to_string()) {
        tracing::info!("read-ahead stays at the kernel's default ({knob}: {e})");
    }
}
