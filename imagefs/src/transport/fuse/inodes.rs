//! Names, attributes and file maps, answered from the ext4 reader on
//! whichever FUSE thread took the request.
//!
//! The reader ([`Ext4Meta`]) is shared by every FUSE thread and caches
//! what it decodes, so a request costs a hash lookup once its inode or
//! directory has been read. FUSE inode numbers are ext4's, except the
//! root: FUSE calls it 1, ext4 2 (ext4's inode 1 is never named). So the
//! names of a hard-linked file are one inode, and nothing needs to be
//! remembered per name: any inode number the kernel sends back can be
//! read again from the image.
//!
//! What is kept: the name and directory of each inode the kernel has been
//! shown (for `..` in listings, and to name the path in a log line when
//! the image cannot be read), and the extent maps of files being read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use fuser::{Errno, FileAttr, FileType};

use super::attr::{dirent_kind, file_attr};
use crate::error_chain;
use crate::ext4::{Dir, Ext4Meta, FileMap, FsStats, Inode, MetaError, ROOT_INO, Xattr};

/// The root's FUSE inode number.
pub(crate) const ROOT: u64 = 1;

/// The most extent maps kept; past that, the cache starts over (simple,
/// and bounded).
const MAX_MAPS: usize = 16 * 1024;
/// The most names kept (about 50 MB); past that, the table starts over,
/// and log lines name the inodes it forgot by number.
const MAX_NAMES: usize = 1 << 20;

/// The FUSE inode number of ext4 inode `ino`.
pub(crate) fn fuse_ino(ino: u32) -> u64 {
    if ino == ROOT_INO {
        ROOT
    } else {
        u64::from(ino)
    }
}

/// The ext4 inode number of FUSE inode `ino`; `ENOENT` for numbers no
/// ext4 inode has.
fn ext4_ino(ino: u64) -> Result<u32, Errno> {
    if ino == ROOT {
        Ok(ROOT_INO)
    } else {
        u32::try_from(ino).map_err(|_| Errno::ENOENT)
    }
}

/// The errno for an error of the reader; failures of the image itself
/// (unreadable bytes, corruption) are logged with what was being done and
/// the path.
fn fail(what: &str, path: &str, e: MetaError) -> Errno {
    match e {
        MetaError::NotADirectory(_) => Errno::ENOTDIR,
        e => {
            tracing::warn!("{what} {path}: {}", error_chain(&e));
            Errno::EIO
        }
    }
}

/// Where an inode was shown: the directory's ext4 inode and the name.
type Named = (u32, Box<[u8]>);

/// One directory entry as a listing reports it.
pub(crate) struct Item<'a> {
    pub(crate) ino: u64,
    pub(crate) kind: FileType,
    pub(crate) name: &'a [u8],
}

/// The file tree of one image.
pub(crate) struct Tree {
    meta: Ext4Meta,
    stats: FsStats,
    /// `st_blksize`: the filesystem's block size.
    blksize: u32,
    /// The directory (ext4 inode) and name each inode was shown under,
    /// by ext4 inode (a hard link keeps its first name).
    names: RwLock<HashMap<u32, Named>>,
    /// Extent maps of regular files, by ext4 inode.
    maps: Mutex<HashMap<u32, Arc<FileMap>>>,
}

impl Tree {
    pub(crate) fn new(meta: Ext4Meta) -> Tree {
        let stats = meta.statfs();
        Tree {
            meta,
            stats,
            blksize: stats.block_size.max(512),
            names: RwLock::new(HashMap::new()),
            maps: Mutex::new(HashMap::new()),
        }
    }

    fn inode(&self, ino: u64) -> Result<Arc<Inode>, Errno> {
        self.meta
            .inode(ext4_ino(ino)?)
            .map_err(|e| fail("reading the inode of", &self.path(ino), e))
    }

    /// The path FUSE inode `ino` was shown under, for log lines (its
    /// number, when it is not known).
    pub(crate) fn path(&self, ino: u64) -> String {
        let Ok(mut at) = ext4_ino(ino) else {
            return format!("inode {ino}");
        };
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        let mut parts = Vec::new();
        // Bounded: a cycle in the table (it cannot have one) stops too.
        while at != ROOT_INO && parts.len() < 4096 {
            let Some((dir, name)) = names.get(&at) else {
                return format!("inode {ino}");
            };
            parts.push(String::from_utf8_lossy(name).into_owned());
            at = *dir;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// FUSE attributes of `inode`, numbered `ino`.
    pub(crate) fn attr_of(&self, ino: u64, inode: &Inode) -> FileAttr {
        file_attr(ino, inode, self.blksize)
    }

    /// Attributes of inode `ino`.
    pub(crate) fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inode = self.inode(ino)?;
        Ok(self.attr_of(ino, &inode))
    }

    /// Remembers that `entries` are in directory `dir` (FUSE number).
    pub(crate) fn remember<'a>(
        &self,
        dir: u64,
        entries: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) {
        let Ok(dir) = ext4_ino(dir) else {
            return;
        };
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        for (ino, name) in entries {
            if names.len() >= MAX_NAMES {
                names.clear();
            }
            names.entry(ino).or_insert_with(|| (dir, name.into()));
        }
    }

    /// The FUSE number of the parent of directory `ino` (the root, when
    /// the kernel has not been shown it: every directory the kernel asks
    /// about was shown to it first, by a lookup or a listing).
    pub(crate) fn parent(&self, ino: u64) -> u64 {
        ext4_ino(ino)
            .ok()
            .and_then(|i| {
                self.names
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&i)
                    .map(|n| n.0)
            })
            .map_or(ROOT, fuse_ino)
    }

    /// Attributes of `name` in directory `parent`.
    pub(crate) fn lookup(&self, parent: u64, name: &[u8]) -> Result<FileAttr, Errno> {
        let ino = match name {
            b"." => parent,
            b".." => self.parent(parent),
            _ => {
                let entry = self
                    .meta
                    .lookup(ext4_ino(parent)?, name)
                    .map_err(|e| {
                        let name = String::from_utf8_lossy(name);
                        fail("looking up", &format!("{name} in {}", self.path(parent)), e)
                    })?
                    .ok_or(Errno::ENOENT)?;
                self.remember(parent, [(entry.ino, name)]);
                let ino = fuse_ino(entry.ino);
                return self.getattr(ino);
            }
        };
        self.getattr(ino)
    }

    /// A symlink's target.
    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        if self.inode(ino)?.dirent_type() != 7 {
            return Err(Errno::EINVAL);
        }
        self.meta
            .read_link(ext4_ino(ino)?)
            .map_err(|e| fail("reading the link", &self.path(ino), e))
    }

    /// The entries of directory `ino`, without `.` and `..`.
    pub(crate) fn dir(&self, ino: u64) -> Result<Arc<Dir>, Errno> {
        if !self.inode(ino)?.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        self.meta
            .read_dir(ext4_ino(ino)?)
            .map_err(|e| fail("listing", &self.path(ino), e))
    }

    /// Entry `i` of the listing of directory `ino` (`.` and `..` first),
    /// or `None` past the end.
    pub(crate) fn item<'a>(
        &self,
        ino: u64,
        dir: &'a Dir,
        i: usize,
    ) -> Result<Option<Item<'a>>, Errno> {
        let dot = |ino, name| Item {
            ino,
            kind: FileType::Directory,
            name,
        };
        Ok(Some(match i {
            0 => dot(ino, b"."),
            1 => dot(self.parent(ino), b".."),
            _ => {
                let Some(e) = dir.entries.get(i - 2) else {
                    return Ok(None);
                };
                let kind = match dirent_kind(e.file_type) {
                    Some(k) => k,
                    // No type in the entry (no `filetype` feature): the
                    // inode has it.
                    None => {
                        let inode = self.inode(fuse_ino(e.ino))?;
                        dirent_kind(inode.dirent_type()).unwrap_or(FileType::RegularFile)
                    }
                };
                Item {
                    ino: fuse_ino(e.ino),
                    kind,
                    name: &e.name,
                }
            }
        }))
    }

    /// The extent map of regular file `ino`.
    pub(crate) fn file_map(&self, ino: u64) -> Result<Arc<FileMap>, Errno> {
        let e4 = ext4_ino(ino)?;
        let lock = || self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = lock().get(&e4) {
            return Ok(Arc::clone(m));
        }
        match self.inode(ino)?.dirent_type() {
            1 => {}
            2 => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        let map = Arc::new(
            self.meta
                .file_map(e4)
                .map_err(|e| fail("mapping the extents of", &self.path(ino), e))?,
        );
        let mut maps = lock();
        if maps.len() >= MAX_MAPS {
            maps.clear();
        }
        maps.insert(e4, Arc::clone(&map));
        Ok(map)
    }

    /// The extended attributes of inode `ino` (all of them; the caller
    /// picks what Linux shows).
    pub(crate) fn xattrs(&self, ino: u64) -> Result<Arc<[Xattr]>, Errno> {
        self.meta
            .xattrs(ext4_ino(ino)?)
            .map_err(|e| fail("reading the xattrs of", &self.path(ino), e))
    }

    /// The numbers `statfs` reports.
    pub(crate) fn stats(&self) -> FsStats {
        self.stats
    }
}
