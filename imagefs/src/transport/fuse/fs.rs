//! The fuser `Filesystem` for the file tree. Every request is answered on
//! the FUSE thread that took it, from the ext4 reader (`inodes.rs`) and
//! the block device (`read.rs`).
//!
//! Reading every file of an image is dominated by per-file requests, so
//! the mount asks the kernel for as few as it can:
//! - names and attributes are cached for a year (the image never changes);
//! - listings are `READDIRPLUS`, which give the kernel each entry's
//!   attributes with its name, so walking a tree needs no `LOOKUP` per
//!   file, and the kernel keeps listings in its cache (`FOPEN_CACHE_DIR`);
//! - opens: without passthrough an open has nothing to decide, so the
//!   first `OPEN` (and `OPENDIR`) is answered `ENOSYS`, after which the
//!   kernel opens files without asking, keeps their pages across opens,
//!   and sends reads with handle 0. With passthrough the daemon must see
//!   each open (to hand the kernel a backing file), and opens are answered
//!   with a handle and `FOPEN_KEEP_CACHE` or a backing file.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::attr::TTL;
use super::inodes::{Item, Tree};
use super::passthrough::Passthrough;
use super::read;
use super::stats::Counters;
use super::xattr::{self, XattrReply};
use crate::device::BlockDevice;
use crate::ext4::Dir;

/// The read-only file tree of an ext4 image.
pub(crate) struct TreeFs {
    tree: Tree,
    source: Arc<dyn BlockDevice>,
    /// Opens of files whose bytes are all local may be handed to the
    /// kernel (`passthrough.rs`).
    passthrough: Option<Arc<Passthrough>>,
    /// Whether opens are answered at all (see the module comment); set at
    /// INIT, once it is known whether the kernel takes passthrough.
    answer_opens: AtomicBool,
    next_fh: AtomicU64,
    counters: Arc<Counters>,
}

impl TreeFs {
    pub(crate) fn new(
        tree: Tree,
        source: Arc<dyn BlockDevice>,
        passthrough: Option<Arc<Passthrough>>,
        counters: Arc<Counters>,
    ) -> TreeFs {
        TreeFs {
            tree,
            source,
            passthrough,
            answer_opens: AtomicBool::new(false),
            next_fh: AtomicU64::new(1),
            counters,
        }
    }
}

impl TreeFs {
    /// Hands the items of directory `ino` from position `offset` on to
    /// `add` (with the offset of the next one) until it says the reply is
    /// full, and remembers their names.
    fn list(
        &self,
        ino: u64,
        offset: u64,
        mut add_item: impl FnMut(Item<'_>, u64) -> Result<bool, Errno>,
    ) -> Result<(), Errno> {
        self.counters.readdirs.inc();
        let dir = self.tree.dir(ino)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut i = start;
        while let Some(item) = self.tree.item(ino, &dir, i)? {
            if add_item(item, i as u64 + 1)? {
                break;
            }
            i += 1;
        }
        remember(&self.tree, ino, &dir, start, i);
        self.counters.dir_entries.add((i - start) as u64);
        Ok(())
    }
}

/// Sends an xattr answer.
fn send(reply: ReplyXattr, answer: Result<XattrReply, Errno>) {
    match answer {
        Ok(XattrReply::Size(n)) => reply.size(n),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        Err(e) => reply.error(e),
    }
}

/// Remembers the names of listing items `from..to` of directory `ino`
/// (items 0 and 1 are `.` and `..`; entry `k` is item `k + 2`).
fn remember(tree: &Tree, ino: u64, dir: &Dir, from: usize, to: usize) {
    let len = dir.entries.len();
    let (lo, hi) = (
        from.saturating_sub(2).min(len),
        to.saturating_sub(2).min(len),
    );
    if lo < hi {
        tree.remember(
            ino,
            dir.entries[lo..hi].iter().map(|e| (e.ino, &e.name[..])),
        );
    }
}

/// Opening for writing is refused: the image is read-only.
fn writable(flags: OpenFlags) -> bool {
    !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY)
}

impl Filesystem for TreeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is a hint: a kernel without one works without it.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let Some(p) = &self.passthrough else {
            return Ok(());
        };
        // Depth 1: backing files on a plain filesystem, and this mount
        // itself usable below one stacked one (overlayfs).
        match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
            Ok(()) => match config.set_max_stack_depth(1) {
                Ok(_) => {
                    p.enable();
                    self.answer_opens.store(true, Ordering::SeqCst);
                }
                Err(max) => tracing::info!("passthrough off: stack depth limited to {max}"),
            },
            Err(_) => tracing::info!("passthrough off: the kernel does not offer it"),
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counters.lookups.inc();
        match self.tree.lookup(parent.0, name.as_bytes()) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.counters.getattrs.inc();
        match self.tree.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.counters.readlinks.inc();
        match self.tree.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.counters.opens.inc();
        if writable(flags) {
            reply.error(Errno::EROFS);
            return;
        }
        let map = match self.tree.file_map(ino.0) {
            Ok(map) => map,
            Err(e) => return reply.error(e),
        };
        match &self.passthrough {
            Some(p) if self.answer_opens.load(Ordering::SeqCst) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let path = self.tree.path(ino.0);
                p.open(ino.0, fh, &map, &*self.source, &path, reply);
            }
            // The file exists and is readable: from now on the kernel
            // opens files without asking (and keeps their pages).
            _ => reply.error(Errno::ENOSYS),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.counters.reads.inc();
        // By inode, not handle: without opens every handle is 0.
        let map = match self.tree.file_map(ino.0) {
            Ok(map) => map,
            Err(e) => return reply.error(e),
        };
        read::read(
            &*self.source,
            &map,
            || self.tree.path(ino.0),
            offset,
            size,
            |data| match data {
                Ok(data) => {
                    self.counters.read_bytes.add(data.len() as u64);
                    reply.data(data)
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.counters.releases.inc();
        if let Some(p) = &self.passthrough {
            p.release(fh.0);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counters.opendirs.inc();
        // A directory open has nothing to decide either: after `ENOSYS`
        // the kernel opens directories without asking, and caches their
        // listings.
        match self.tree.dir(ino.0) {
            Ok(_) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.list(ino.0, offset, |item, next| {
            let name = OsStr::from_bytes(item.name);
            Ok(reply.add(INodeNo(item.ino), next, item.kind, name))
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self.list(ino.0, offset, |item, next| {
            let attr = self.tree.getattr(item.ino)?;
            let name = OsStr::from_bytes(item.name);
            let (ino, generation) = (INodeNo(item.ino), Generation(0));
            Ok(reply.add(ino, next, name, &TTL, &attr, generation))
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.tree.stats();
        reply.statfs(
            s.blocks,
            s.free_blocks,
            s.avail_blocks,
            s.inodes,
            s.free_inodes,
            s.block_size,
            255,
            s.block_size,
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.counters.xattrs.inc();
        let answer = self
            .tree
            .xattrs(ino.0)
            .and_then(|attrs| xattr::get(&attrs, name.as_bytes(), size, req.uid() == 0));
        send(reply, answer);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.counters.xattrs.inc();
        let answer = self
            .tree
            .xattrs(ino.0)
            .and_then(|attrs| xattr::list(&attrs, size, req.uid() == 0));
        send(reply, answer);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }
}
