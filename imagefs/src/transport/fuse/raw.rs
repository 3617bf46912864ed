//! `--raw`: the whole block device as one read-only file, `/disk.img`.
//! Reads go straight to the byte source on the FUSE thread; nothing here
//! parses the image, so this works for any image, ext4 or not.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};

use super::attr::TTL;
use super::source::read_range;
use crate::device::BlockDevice;

/// The file's name in the mount's root.
pub const RAW_NAME: &str = "disk.img";

const ROOT: u64 = 1;
const DISK: u64 = 2;
/// Reads larger than this are split (the kernel asks for at most
/// `max_read`, 128 KiB by default, so this only bounds a buffer).
const MAX_READ: u64 = 1 << 20;

/// The filesystem holding only `/disk.img`.
pub(crate) struct RawFs {
    source: Arc<dyn BlockDevice>,
}

impl RawFs {
    pub(crate) fn new(source: Arc<dyn BlockDevice>) -> RawFs {
        RawFs { source }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT => (FileType::Directory, 0o555, 0, 2),
            DISK => (FileType::RegularFile, 0o444, self.source.size(), 1),
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for RawFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let attr = match (parent.0, name.to_str()) {
            (ROOT, Some(RAW_NAME)) => self.attr(DISK),
            (ROOT, Some(".") | Some("..")) => self.attr(ROOT),
            _ => None,
        };
        match attr {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != DISK {
            reply.error(Errno::EISDIR);
        } else if !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) {
            reply.error(Errno::EROFS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
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
        if ino.0 != DISK {
            reply.error(Errno::EISDIR);
            return;
        }
        let end = self.source.size();
        if offset >= end {
            reply.data(&[]);
            return;
        }
        let len = (end - offset).min(u64::from(size)).min(MAX_READ) as usize;
        let mut buf = vec![0u8; len];
        match read_range(&*self.source, &mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                tracing::warn!("reading /{RAW_NAME} at offset {offset}: {e}");
                reply.error(Errno::EIO);
            }
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
        if ino.0 != ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let items = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, RAW_NAME),
        ];
        for (i, (ino, kind, name)) in items.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.source.size().div_ceil(4096);
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(if self.attr(ino.0).is_some() {
            Errno::NO_XATTR
        } else {
            Errno::ENOENT
        });
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }
}
