//! The fuser `Filesystem` for the file tree: each request goes to the tree
//! thread (see `tree.rs`), which replies, except reads of open files,
//! which the FUSE thread serves itself (`open_files.rs`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::attr::TTL;
use super::open_files::OpenFiles;
use super::passthrough::Passthrough;
use crate::device::BlockDevice;
use super::tree::TreeHandle;
use super::xattr::{self, XattrReply};

/// The read-only file tree of an ext4 image.
pub(crate) struct TreeFs {
    tree: TreeHandle,
    /// Reads of open files bypass the tree thread.
    files: OpenFiles,
    source: Arc<dyn BlockDevice>,
    /// Opens of files whose bytes are all local may be handed to the
    /// kernel (`passthrough.rs`).
    passthrough: Option<Arc<Passthrough>>,
}

impl TreeFs {
    pub(crate) fn new(
        tree: TreeHandle,
        files: OpenFiles,
        source: Arc<dyn BlockDevice>,
        passthrough: Option<Arc<Passthrough>>,
    ) -> TreeFs {
        TreeFs {
            tree,
            files,
            source,
            passthrough,
        }
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

/// Opening for writing is refused: the image is read-only.
fn writable(flags: OpenFlags) -> bool {
    !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY)
}

impl Filesystem for TreeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let Some(p) = &self.passthrough else {
            return Ok(());
        };
        // Depth 1: backing files on a plain filesystem, and this mount
        // itself usable below one stacked one (overlayfs).
        match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
            Ok(()) => match config.set_max_stack_depth(1) {
                Ok(_) => p.enable(),
                Err(max) => eprintln!("imagefs: passthrough off: stack depth limited to {max}"),
            },
            Err(_) => eprintln!("imagefs: passthrough off: the kernel does not offer it"),
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        self.tree.run(move |t| match t.lookup(parent.0, &name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.tree.run(move |t| match t.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.tree.run(move |t| match t.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if writable(flags) {
            reply.error(Errno::EROFS);
            return;
        }
        let passthrough = self.passthrough.clone();
        let (files, source) = (self.files.clone(), Arc::clone(&self.source));
        self.tree.run(move |t| match t.open(ino.0) {
            Ok(fh) => match (passthrough, files.get(fh)) {
                (Some(p), Some(file)) => {
                    p.open(ino.0, fh, &file.map, &*source, &file.path, reply);
                }
                // The image never changes: keep its pages across opens.
                _ => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            },
            Err(e) => reply.error(e),
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.files
            .read(&*self.source, fh.0, offset, size, |data| match data {
                Ok(data) => reply.data(data),
                Err(e) => reply.error(e),
            });
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
        self.files.remove(fh.0);
        if let Some(p) = &self.passthrough {
            p.release(fh.0);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.tree.run(move |t| match t.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_CACHE_DIR),
            Err(e) => reply.error(e),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.tree.run(move |t| {
            let Some(items) = t.dir_items(fh.0) else {
                reply.error(Errno::EBADF);
                return;
            };
            // An entry's offset is the position of the next one.
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, item) in items.iter().enumerate().skip(start) {
                let name = OsStr::from_bytes(&item.name);
                if reply.add(INodeNo(item.ino), i as u64 + 1, item.kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tree.run(move |t| {
            t.releasedir(fh.0);
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.tree.run(move |t| {
            let s = t.stats();
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
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        let privileged = req.uid() == 0;
        self.tree.run(move |t| {
            let answer = t
                .xattrs(ino.0)
                .and_then(|attrs| xattr::get(&attrs, &name, size, privileged));
            send(reply, answer);
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let privileged = req.uid() == 0;
        self.tree.run(move |t| {
            let answer = t
                .xattrs(ino.0)
                .and_then(|attrs| xattr::list(&attrs, size, privileged));
            send(reply, answer);
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }
}
