//! The file tree, read by `ext4-view` on one thread that owns it.
//!
//! `ext4_view::Ext4` is an `Rc` around `RefCell`s: neither `Send` nor
//! `Sync`, so it cannot sit in the FUSE filesystem object that fuser
//! shares between threads. One dedicated thread owns it (with one block
//! cache and the inode table); FUSE handlers send that thread a closure
//! holding the request and its reply object, and return at once. The
//! thread runs the closures in arrival order and replies. Requests are
//! therefore served one at a time; for a debug mount that is plenty, and
//! the kernel's page, attribute and name caches absorb repeats. (One
//! `Ext4` per FUSE thread would mean as many block caches and inode tables
//! to keep in step, for no gain with fuser's single event-loop thread.)

use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use ext4_view::{Ext4, Ext4Error, File as Ext4File, FileType as Ext4Type, PathBuf as Ext4Path};
use fuser::{Errno, FileAttr, FileType};

use super::MountError;
use super::attr::{FsStats, file_attr, kind};
use super::source::{ByteSource, Ext4Reader};
use crate::error_chain;

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
    pub(crate) fn start(source: Arc<dyn ByteSource>) -> Result<TreeHandle, MountError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, loaded) = mpsc::channel();
        thread::Builder::new()
            .name("imagefs-ext4".into())
            .spawn(move || {
                let mut tree = match Tree::load(source) {
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
            Ok(Err(source)) => Err(MountError::Ext4 { source }),
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

struct Node {
    path: Ext4Path,
    parent: u64,
    /// A directory's link count (2 + subdirectories), once counted.
    nlink: Option<u32>,
}

/// The tree thread's state.
pub(crate) struct Tree {
    fs: Ext4,
    stats: FsStats,
    /// Inode `n` is `nodes[n - 1]`; the root is 1.
    nodes: Vec<Node>,
    by_path: HashMap<Vec<u8>, u64>,
    files: HashMap<u64, Ext4File>,
    dirs: HashMap<u64, Vec<DirItem>>,
    next_fh: u64,
}

/// The root's FUSE inode number.
const ROOT: u64 = 1;

impl Tree {
    fn load(source: Arc<dyn ByteSource>) -> Result<Tree, Ext4Error> {
        // ext4-view has just read and checked the superblock, so reading
        // it again only fails if the source does.
        let fs = Ext4::load(Box::new(Ext4Reader(Arc::clone(&source))))?;
        let stats = FsStats::read(&*source)
            .map_err(|e| Ext4Error::Io(Box::new(e)))?
            .unwrap_or_default();
        let root = Ext4Path::new("/");
        let mut by_path = HashMap::new();
        by_path.insert(root.as_ref().to_vec(), ROOT);
        Ok(Tree {
            fs,
            stats,
            nodes: vec![Node {
                path: root,
                parent: ROOT,
                nlink: None,
            }],
            by_path,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
        })
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        usize::try_from(ino)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.nodes.get(i))
            .ok_or(Errno::ENOENT)
    }

    fn path(&self, ino: u64) -> Result<Ext4Path, Errno> {
        self.node(ino).map(|n| n.path.clone())
    }

    /// The inode number for `path`, a child of `parent`, assigned on
    /// first sight.
    fn intern(&mut self, path: Ext4Path, parent: u64) -> u64 {
        if let Some(&ino) = self.by_path.get(path.as_ref()) {
            return ino;
        }
        self.nodes.push(Node {
            path: path.clone(),
            parent,
            nlink: None,
        });
        let ino = self.nodes.len() as u64;
        self.by_path.insert(path.as_ref().to_vec(), ino);
        ino
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

    /// A directory's link count: 2 plus its subdirectories (as ext4 keeps
    /// it), counted once.
    fn dir_nlink(&mut self, ino: u64) -> Result<u32, Errno> {
        if let Some(n) = self.node(ino)?.nlink {
            return Ok(n);
        }
        let path = self.path(ino)?;
        let fail = |e| Self::fail("listing", &path, e);
        let mut subdirs = 0u32;
        for entry in self.fs.read_dir(&path).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name();
            if entry.file_type().map_err(fail)? == Ext4Type::Directory
                && name.as_ref() != b"."
                && name.as_ref() != b".."
            {
                subdirs = subdirs.saturating_add(1);
            }
        }
        let n = subdirs.saturating_add(2);
        let i = (ino - 1) as usize;
        self.nodes[i].nlink = Some(n);
        Ok(n)
    }

    fn attr_of(&mut self, ino: u64, path: &Ext4Path) -> Result<FileAttr, Errno> {
        let md = self
            .fs
            .symlink_metadata(path)
            .map_err(|e| Self::fail("reading metadata of", path, e))?;
        let nlink = if md.is_dir() { self.dir_nlink(ino)? } else { 1 };
        Ok(file_attr(ino, &md, nlink, self.stats.block_size.max(512)))
    }

    /// Attributes of `name` in directory `parent`.
    pub(crate) fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<FileAttr, Errno> {
        let ino = match name {
            b"." => parent,
            b".." => self.node(parent)?.parent,
            _ => {
                let path = self.child(parent, name)?;
                // Resolve before assigning an inode number to a name that
                // does not exist.
                self.fs
                    .symlink_metadata(&path)
                    .map_err(|e| Self::fail("looking up", &path, e))?;
                self.intern(path, parent)
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
        let file = self
            .fs
            .open(&path)
            .map_err(|e| Self::fail("opening", &path, e))?;
        let fh = self.new_fh();
        self.files.insert(fh, file);
        Ok(fh)
    }

    /// Up to `size` bytes of open file `fh` at `offset` (fewer at the end).
    pub(crate) fn read(
        &mut self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let path = self.path(ino)?;
        let file = self.files.get_mut(&fh).ok_or(Errno::EBADF)?;
        let len = file.metadata().len();
        if offset >= len {
            return Ok(Vec::new());
        }
        let want = (len - offset).min(u64::from(size)) as usize;
        let mut buf = vec![0u8; want];
        let what = || format!("reading at offset {offset} of");
        // Sequential reads continue where the last one stopped; seeking
        // walks the extent tree again.
        if file.position() != offset {
            file.seek_to(offset)
                .map_err(|e| Self::fail(&what(), &path, e))?;
        }
        let mut done = 0;
        while done < want {
            let n = file
                .read_bytes(&mut buf[done..])
                .map_err(|e| Self::fail(&what(), &path, e))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Closes an open file.
    pub(crate) fn release(&mut self, fh: u64) {
        self.files.remove(&fh);
    }

    /// Lists a directory (with `.` and `..`) into a new handle.
    pub(crate) fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let parent = self.node(ino)?.parent;
        let fail = |e| Self::fail("listing", &path, e);
        let mut raw = Vec::new();
        for entry in self.fs.read_dir(&path).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            raw.push((name, entry.file_type().map_err(fail)?));
        }
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
        let mut subdirs = 0u32;
        for (name, t) in raw {
            let child = self.child(ino, &name)?;
            if t == Ext4Type::Directory {
                subdirs = subdirs.saturating_add(1);
            }
            items.push(DirItem {
                ino: self.intern(child, ino),
                kind: kind(t),
                name,
            });
        }
        self.nodes[(ino - 1) as usize].nlink = Some(subdirs.saturating_add(2));
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

    /// Whether inode `ino` exists.
    pub(crate) fn exists(&self, ino: u64) -> bool {
        self.node(ino).is_ok()
    }

    /// The numbers `statfs` reports.
    pub(crate) fn stats(&self) -> FsStats {
        self.stats
    }
}
