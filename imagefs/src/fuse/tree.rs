//! The file tree, read by `ext4-view` on one thread that owns it.
//!
//! `ext4_view::Ext4` is an `Rc` around `RefCell`s: neither `Send` nor
//! `Sync`, so it cannot sit in the FUSE filesystem object that fuser
//! shares between threads. One dedicated thread owns it (with one block
//! cache and the inode table); FUSE handlers send that thread a closure
//! holding the request and its reply object, and return at once. The
//! thread runs the closures in arrival order and replies. Metadata requests
//! are therefore served one at a time; the kernel's page, attribute and
//! name caches absorb repeats. Reads of open files do not queue here: the
//! tree thread maps a file's extents at open, and the FUSE threads read by
//! that map (`open_files.rs`). (One
//! `Ext4` per FUSE thread would mean as many block caches and inode tables
//! to keep in step, for no gain with fuser's single event-loop thread.)
//!
//! The same thread owns the [`Ext4Meta`] reader, for what `ext4-view`
//! does not expose: names are resolved to ext4 inode numbers through it,
//! and those are the FUSE inode numbers (except the root: FUSE calls it 1,
//! ext4 2; ext4's inode 1 is never named). So hard links are one inode
//! with its real link count, device nodes have their numbers, and xattrs
//! are read by inode number.

use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use ext4_view::{Ext4, Ext4Error, PathBuf as Ext4Path};
use fuser::{Errno, FileAttr, FileType};

use super::MountError;
use super::attr::{FsStats, dirent_kind, file_attr};
use super::open_files::{OpenFile, OpenFiles};
use super::source::Ext4Reader;
use crate::device::BlockDevice;
use crate::error_chain;
use crate::ext4::{Ext4Meta, MetaError, ROOT_INO, Xattr};

/// Work for the tree thread.
type Job = Box<dyn FnOnce(&mut Tree) + Send>;

/// The handle the FUSE side holds: a queue to the tree thread. The thread
/// ends when the handle is dropped (when the session ends).
pub(crate) struct TreeHandle {
    jobs: Mutex<Sender<Job>>,
}

impl TreeHandle {
    /// Starts the tree thread: loads the filesystem (superblock, group
    /// descriptors, journal) and reports whether that worked.
    pub(crate) fn start(
        source: Arc<dyn BlockDevice>,
        files: OpenFiles,
    ) -> Result<TreeHandle, MountError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, loaded) = mpsc::channel();
        thread::Builder::new()
            .name("imagefs-ext4".into())
            .spawn(move || {
                let mut tree = match Tree::load(source, files) {
                    Ok(t) => {
                        let _ = ready.send(Ok(()));
                        t
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                for job in queue {
                    job(&mut tree);
                }
            })
            .map_err(MountError::Thread)?;
        match loaded.recv() {
            Ok(Ok(())) => Ok(TreeHandle {
                jobs: Mutex::new(jobs),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(MountError::Thread(std::io::Error::other(
                "the ext4 thread ended while loading the filesystem",
            ))),
        }
    }

    /// Queues `job`. If the thread is gone (it panicked), the job and the
    /// reply inside it are dropped, and fuser answers `EIO`.
    pub(crate) fn run(&self, job: impl FnOnce(&mut Tree) + Send + 'static) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.send(Box::new(job)).is_err() {
            eprintln!("imagefs: the ext4 thread has ended; answering EIO");
        }
    }
}

/// One directory entry as readdir reports it.
pub(crate) struct DirItem {
    pub(crate) ino: u64,
    pub(crate) kind: FileType,
    pub(crate) name: Vec<u8>,
}

/// An inode the kernel has been told about.
struct Node {
    /// The first path it was found under (any name of a hard-linked file
    /// reads the same).
    path: Ext4Path,
    /// The FUSE inode number of that path's directory.
    parent: u64,
}

/// The tree thread's state.
pub(crate) struct Tree {
    fs: Ext4,
    meta: Ext4Meta,
    stats: FsStats,
    /// By FUSE inode number.
    nodes: HashMap<u64, Node>,
    /// Open files, read by the FUSE threads.
    files: OpenFiles,
    dirs: HashMap<u64, Vec<DirItem>>,
    next_fh: u64,
}

/// The root's FUSE inode number.
const ROOT: u64 = 1;

/// The FUSE inode number of ext4 inode `ino`.
fn fuse_ino(ino: u32) -> u64 {
    if ino == ROOT_INO {
        ROOT
    } else {
        u64::from(ino)
    }
}

/// The ext4 inode number of FUSE inode `ino` (one the tree knows).
fn ext4_ino(ino: u64) -> u32 {
    if ino == ROOT {
        ROOT_INO
    } else {
        // Every other known number came from `fuse_ino`.
        u32::try_from(ino).unwrap_or(0)
    }
}

impl Tree {
    fn load(source: Arc<dyn BlockDevice>, files: OpenFiles) -> Result<Tree, MountError> {
        let fs = Ext4::load(Box::new(Ext4Reader(Arc::clone(&source))))
            .map_err(|source| MountError::Ext4 { source })?;
        // ext4-view has just read and checked the superblock, so reading
        // it again only fails if the source does.
        let stats = FsStats::read(&*source)
            .map_err(|e| MountError::Ext4 {
                source: Ext4Error::Io(Box::new(e)),
            })?
            .unwrap_or_default();
        let meta = Ext4Meta::open(source).map_err(|source| MountError::Meta { source })?;
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                path: Ext4Path::new("/"),
                parent: ROOT,
            },
        );
        Ok(Tree {
            fs,
            meta,
            stats,
            nodes,
            files,
            dirs: HashMap::new(),
            next_fh: 1,
        })
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn path(&self, ino: u64) -> Result<Ext4Path, Errno> {
        self.node(ino).map(|n| n.path.clone())
    }

    /// Remembers ext4 inode `ino`, found as `name` in directory `parent`,
    /// and returns its FUSE inode number. A hard link already known under
    /// another name keeps that name.
    fn intern(&mut self, ino: u32, parent: u64, name: &[u8]) -> Result<u64, Errno> {
        let fuse = fuse_ino(ino);
        if !self.nodes.contains_key(&fuse) {
            let path = self.child(parent, name)?;
            self.nodes.insert(fuse, Node { path, parent });
        }
        Ok(fuse)
    }

    /// The child path `name` of directory `parent`.
    fn child(&self, parent: u64, name: &[u8]) -> Result<Ext4Path, Errno> {
        let base = self.node(parent)?.path.as_ref();
        let mut bytes = Vec::with_capacity(base.len() + 1 + name.len());
        bytes.extend_from_slice(base);
        if base != b"/" {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        Ext4Path::try_from(bytes).map_err(|_| Errno::ENAMETOOLONG)
    }

    /// The errno for an `ext4-view` error; failures of the image itself
    /// (unreadable bytes, corruption) are logged with the path.
    fn fail(what: &str, path: &Ext4Path, e: Ext4Error) -> Errno {
        match e {
            Ext4Error::NotFound => Errno::ENOENT,
            Ext4Error::NotADirectory => Errno::ENOTDIR,
            Ext4Error::IsADirectory => Errno::EISDIR,
            Ext4Error::IsASpecialFile | Ext4Error::NotASymlink => Errno::EINVAL,
            Ext4Error::PathTooLong => Errno::ENAMETOOLONG,
            Ext4Error::TooManySymlinks => Errno::ELOOP,
            e => {
                eprintln!("imagefs: {what} {}: {}", path.display(), error_chain(&e));
                Errno::EIO
            }
        }
    }

    /// The errno for an error of the metadata reader, logged like
    /// [`Self::fail`]'s.
    fn meta_fail(what: &str, path: &Ext4Path, e: MetaError) -> Errno {
        match e {
            MetaError::NotADirectory(_) => Errno::ENOTDIR,
            e => {
                eprintln!("imagefs: {what} {}: {}", path.display(), error_chain(&e));
                Errno::EIO
            }
        }
    }

    fn attr_of(&mut self, ino: u64, path: &Ext4Path) -> Result<FileAttr, Errno> {
        let md = self
            .fs
            .symlink_metadata(path)
            .map_err(|e| Self::fail("reading metadata of", path, e))?;
        let inode = self
            .meta
            .inode(ext4_ino(ino))
            .map_err(|e| Self::meta_fail("reading the inode of", path, e))?;
        let blksize = self.stats.block_size.max(512);
        Ok(file_attr(
            ino,
            &md,
            inode.links.into(),
            inode.rdev(),
            blksize,
        ))
    }

    /// Attributes of `name` in directory `parent`.
    pub(crate) fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<FileAttr, Errno> {
        let ino = match name {
            b"." => parent,
            b".." => self.node(parent)?.parent,
            _ => {
                let dir = ext4_ino(parent);
                let path = self.child(parent, name)?;
                let entry = self
                    .meta
                    .lookup(dir, name)
                    .map_err(|e| Self::meta_fail("looking up", &path, e))?
                    .ok_or(Errno::ENOENT)?;
                self.intern(entry.ino, parent, name)?
            }
        };
        self.getattr(ino)
    }

    /// Attributes of inode `ino`.
    pub(crate) fn getattr(&mut self, ino: u64) -> Result<FileAttr, Errno> {
        let path = self.path(ino)?;
        self.attr_of(ino, &path)
    }

    /// A symlink's target.
    pub(crate) fn readlink(&mut self, ino: u64) -> Result<Vec<u8>, Errno> {
        let path = self.path(ino)?;
        let target = self
            .fs
            .read_link(&path)
            .map_err(|e| Self::fail("reading link", &path, e))?;
        Ok(target.as_ref().to_vec())
    }

    fn new_fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    /// Opens a regular file; returns the handle.
    pub(crate) fn open(&mut self, ino: u64) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        // ext4-view checks that the path is a regular file it can read.
        self.fs
            .open(&path)
            .map_err(|e| Self::fail("opening", &path, e))?;
        // Reads then go by the file's extents, one device read per extent
        // a request covers, instead of ext4-view's block-sized reads.
        let map = self
            .meta
            .file_map(ext4_ino(ino))
            .map_err(|e| Self::meta_fail("mapping the extents of", &path, e))?;
        let fh = self.new_fh();
        self.files.insert(
            fh,
            OpenFile {
                map,
                path: path.display().to_string(),
            },
        );
        Ok(fh)
    }

    /// Lists a directory (with `.` and `..`) into a new handle.
    pub(crate) fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let parent = self.node(ino)?.parent;
        let dir = self
            .meta
            .read_dir(ext4_ino(ino))
            .map_err(|e| Self::meta_fail("listing", &path, e))?;
        let mut items = vec![
            DirItem {
                ino,
                kind: FileType::Directory,
                name: b".".to_vec(),
            },
            DirItem {
                ino: parent,
                kind: FileType::Directory,
                name: b"..".to_vec(),
            },
        ];
        for e in &dir.entries {
            let kind = match dirent_kind(e.file_type) {
                Some(k) => k,
                // No type in the entry (no `filetype` feature): the inode
                // has it.
                None => {
                    let inode = self
                        .meta
                        .inode(e.ino)
                        .map_err(|err| Self::meta_fail("listing", &path, err))?;
                    dirent_kind(inode.dirent_type()).unwrap_or(FileType::RegularFile)
                }
            };
            items.push(DirItem {
                ino: self.intern(e.ino, ino, &e.name)?,
                kind,
                name: e.name.clone(),
            });
        }
        let fh = self.new_fh();
        self.dirs.insert(fh, items);
        Ok(fh)
    }

    /// The entries of an open directory.
    pub(crate) fn dir_items(&self, fh: u64) -> Option<&[DirItem]> {
        self.dirs.get(&fh).map(Vec::as_slice)
    }

    /// Closes an open directory.
    pub(crate) fn releasedir(&mut self, fh: u64) {
        self.dirs.remove(&fh);
    }

    /// The extended attributes of inode `ino` (all of them; the caller
    /// picks what Linux shows).
    pub(crate) fn xattrs(&mut self, ino: u64) -> Result<Arc<[Xattr]>, Errno> {
        let path = self.path(ino)?;
        self.meta
            .xattrs(ext4_ino(ino))
            .map_err(|e| Self::meta_fail("reading the xattrs of", &path, e))
    }

    /// The numbers `statfs` reports.
    pub(crate) fn stats(&self) -> FsStats {
        self.stats
    }
}
