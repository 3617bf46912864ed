//! A read-only ext4 reader: everything the FUSE view shows. It resolves
//! names to inode numbers (reading directories linearly, htree or not),
//! decodes inodes (type, permissions, owner, the four times, sizes, link
//! counts, device numbers), reads symlink targets, maps files' blocks and
//! reads xattrs from the inode and the xattr block. It reads through a
//! [`BlockDevice`], and caches what it decodes (bounded, sharded behind
//! locks), since FUSE threads ask for the same inodes over and over, all at
//! once.
//!
//! One file per on-disk concept: `superblock`, `group` (descriptors),
//! `inode`, `extent` and `blockmap` (where a file's blocks are), `dir`
//! (directory blocks), `xattr` and `acl`. Every offset and count read from
//! the image is checked before use: corrupt bytes give
//! [`MetaError::Corrupt`] naming the inode or block, never a panic or an
//! endless loop. It does not verify metadata checksums and does not
//! replay the journal (images from the converter have none; `ext4-view`
//! replays it for what it reads).

mod acl;
mod blockmap;
mod cache;
mod dir;
mod extent;
mod filemap;
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod inode;
mod superblock;
mod xattr;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

pub use dir::DirEntry;
pub use filemap::FileMap;
pub use inode::{FileType, Inode, ROOT_INO, Timestamp};
pub use superblock::FsStats;
pub use xattr::Xattr;

use crate::device::BlockDevice;
use cache::Cache;
use extent::Run;
use superblock::{Geometry, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};

/// Errors from reading ext4 metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The image's bytes could not be read.
    #[error("reading image bytes {start}..{end}")]
    Read {
        /// The first byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// The source's error (naming the chunk and the tier).
        #[source]
        source: io::Error,
    },
    /// The metadata is malformed; the text names the inode or block.
    #[error("corrupt ext4 metadata: {0}")]
    Corrupt(String),
    /// A structure breaks the ext4 format: `at` names the inode or block,
    /// the source says what is wrong.
    #[error("corrupt ext4 metadata: {at}: {source}")]
    Format {
        /// The inode or block.
        at: String,
        /// What the format decoder found.
        #[source]
        source: ext4fmt::FormatError,
    },
    /// A format this reader does not decode.
    #[error("unsupported ext4 layout: {0}")]
    Unsupported(String),
    /// A name was looked up in something that is not a directory.
    #[error("inode {0} is not a directory")]
    NotADirectory(u32),
    /// A link target was asked of something that is not a symlink.
    #[error("inode {0} is not a symbolic link")]
    NotASymlink(u32),
}

impl MetaError {
    /// A mapper from a format error to [`MetaError::Format`] at `at()`.
    pub(crate) fn format<E: Into<ext4fmt::FormatError>>(
        at: impl Fn() -> String,
    ) -> impl Fn(E) -> MetaError {
        move |e| MetaError::Format {
            at: at(),
            source: e.into(),
        }
    }

    /// Whether the metadata was found malformed (in either form).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, MetaError::Corrupt(_) | MetaError::Format { .. })
    }
}

/// The most decoded inodes, directories' entries and xattr lists kept;
/// past that, the cache starts over (simple, and bounded).
const MAX_CACHED: usize = 16 * 1024;
/// The most directory entries kept over all cached directories.
const MAX_CACHED_NAMES: usize = 256 * 1024;
/// The largest directory read: 2 GiB, ext4's limit without `largedir`.
const MAX_DIR_BYTES: u64 = 1 << 31;

/// A directory's names, in on-disk order, with an index by name.
#[derive(Debug)]
pub struct Dir {
    /// The entries (without `.` and `..`).
    pub entries: Vec<DirEntry>,
    by_name: HashMap<Vec<u8>, usize>,
}

impl Dir {
    /// The entry called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&DirEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }
}

/// The reader, with its caches; shared by the threads that serve a mount.
pub struct Ext4Meta {
    source: Arc<dyn BlockDevice>,
    geom: Geometry,
    tables: Cache<u64>,
    inodes: Cache<Inode>,
    dirs: Cache<Dir>,
    xattrs: Cache<[Xattr]>,
}

impl std::fmt::Debug for Ext4Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Meta")
            .field("geom", &self.geom)
            .finish_non_exhaustive()
    }
}

impl Ext4Meta {
    /// Reads and checks the superblock.
    pub fn open(source: Arc<dyn BlockDevice>) -> Result<Ext4Meta, MetaError> {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        read(&*source, &mut sb, SUPERBLOCK_OFFSET)?;
        let geom = Geometry::decode(&sb)?;
        Ok(Ext4Meta {
            source,
            geom,
            tables: Cache::new(MAX_CACHED, MAX_CACHED),
            inodes: Cache::new(MAX_CACHED, MAX_CACHED),
            dirs: Cache::new(MAX_CACHED, MAX_CACHED_NAMES),
            xattrs: Cache::new(MAX_CACHED, MAX_CACHED),
        })
    }

    /// The filesystem-wide counts `statfs` reports, as the superblock
    /// had them when the reader opened it.
    pub fn statfs(&self) -> FsStats {
        self.geom.stats
    }

    /// Inode `ino`, decoded.
    pub fn inode(&self, ino: u32) -> Result<Arc<Inode>, MetaError> {
        if let Some(i) = self.inodes.get(ino) {
            return Ok(i);
        }
        if ino == 0 || ino > self.geom.inodes_count {
            return Err(MetaError::Corrupt(format!(
                "inode {ino} is outside 1..={}",
                self.geom.inodes_count
            )));
        }
        let group = (ino - 1) / self.geom.inodes_per_group;
        let index = (ino - 1) % self.geom.inodes_per_group;
        let table = self.inode_table(group)?;
        let size = usize::from(self.geom.inode_size);
        let offset = self
            .geom
            .block_offset(table)
            .and_then(|t| t.checked_add(u64::from(index) * size as u64))
            .ok_or_else(|| MetaError::Corrupt(format!("inode {ino}: table block {table}")))?;
        let mut raw = vec![0u8; size];
        read(&*self.source, &mut raw, offset)?;
        let inode = Arc::new(Inode::decode(&self.geom, ino, &raw)?);
        self.inodes.insert(ino, Arc::clone(&inode), 1);
        Ok(inode)
    }

    fn inode_table(&self, group: u32) -> Result<u64, MetaError> {
        if let Some(t) = self.tables.get(group) {
            return Ok(*t);
        }
        if group >= self.geom.groups {
            return Err(MetaError::Corrupt(format!(
                "block group {group} is past the {} groups",
                self.geom.groups
            )));
        }
        let offset = self.geom.descriptor_offset(group).ok_or_else(|| {
            MetaError::Corrupt(format!("group descriptor {group} is past the end"))
        })?;
        let mut desc = vec![0u8; usize::from(self.geom.desc_size)];
        read(&*self.source, &mut desc, offset)?;
        let table = group::inode_table(&self.geom, group, &desc)?;
        self.tables.insert(group, Arc::new(table), 1);
        Ok(table)
    }

    fn read_block(&self, block: u64) -> Result<Vec<u8>, MetaError> {
        let offset = self.geom.block_offset(block).ok_or_else(|| {
            MetaError::Corrupt(format!(
                "block {block} is past the {} blocks",
                self.geom.blocks_count
            ))
        })?;
        let mut buf = vec![0u8; self.geom.block_size as usize];
        read(&*self.source, &mut buf, offset)?;
        Ok(buf)
    }

    /// The written blocks among the first `blocks` logical blocks of
    /// `inode`.
    fn runs(&self, inode: &Inode, blocks: u32) -> Result<Vec<Run>, MetaError> {
        let mut read_block = |b| self.read_block(b);
        if inode.flags & inode::INLINE_DATA_FL != 0 {
            return Err(MetaError::Unsupported(format!(
                "inode {}: inline data",
                inode.ino
            )));
        }
        if inode.flags & inode::EXTENTS_FL != 0 {
            extent::runs(&self.geom, inode.ino, inode.i_block(), &mut read_block)
        } else {
            blockmap::runs(
                &self.geom,
                inode.ino,
                inode.i_block(),
                blocks,
                &mut read_block,
            )
        }
    }

    /// Where the bytes of regular file `ino` are on the device.
    pub fn file_map(&self, ino: u32) -> Result<FileMap, MetaError> {
        let inode = self.inode(ino)?;
        let bs = u64::from(self.geom.block_size);
        let blocks = u32::try_from(inode.size.div_ceil(bs)).map_err(|_| {
            MetaError::Corrupt(format!(
                "inode {ino}: size {} is past ext4's 2^32 blocks",
                inode.size
            ))
        })?;
        let runs = self.runs(&inode, blocks)?;
        FileMap::new(ino, inode.size, bs, runs)
    }

    /// The source the metadata is read from.
    pub fn source(&self) -> &dyn BlockDevice {
        &*self.source
    }

    /// The names in directory `ino`.
    pub fn read_dir(&self, ino: u32) -> Result<Arc<Dir>, MetaError> {
        if let Some(d) = self.dirs.get(ino) {
            return Ok(d);
        }
        let inode = self.inode(ino)?;
        if !inode.is_dir() {
            return Err(MetaError::NotADirectory(ino));
        }
        if inode.size > MAX_DIR_BYTES {
            return Err(MetaError::Corrupt(format!(
                "directory inode {ino}: size {} is over {MAX_DIR_BYTES}",
                inode.size
            )));
        }
        let bs = u64::from(self.geom.block_size);
        // Below 2^31 / 1024.
        let blocks = inode.size.div_ceil(bs) as u32;
        let mut entries = Vec::new();
        for run in self.runs(&inode, blocks)? {
            // Blocks past the size, from a sloppy tree, are not read;
            // holes (and unwritten extents) are skipped as the kernel
            // skips them.
            let end = run.logical.saturating_add(run.len).min(blocks);
            for logical in run.logical..end {
                let physical = run.physical + u64::from(logical - run.logical);
                let data = self.read_block(physical)?;
                dir::parse_block(&self.geom, ino, logical, &data, &mut entries)?;
            }
        }
        let mut by_name = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_name.entry(e.name.clone()).or_insert(i);
        }
        let dir = Arc::new(Dir { entries, by_name });
        self.dirs
            .insert(ino, Arc::clone(&dir), dir.entries.len().max(1));
        Ok(dir)
    }

    /// The entry `name` in directory `dir`, if there is one.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Result<Option<DirEntry>, MetaError> {
        Ok(self.read_dir(dir)?.get(name).cloned())
    }

    /// The inode a path names, from the root, without following symlinks
    /// (`None` when a component does not exist).
    pub fn resolve(&self, path: &[u8]) -> Result<Option<u32>, MetaError> {
        let mut stack = vec![ROOT_INO];
        for part in path.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                }
                name => {
                    let dir = *stack.last().unwrap_or(&ROOT_INO);
                    match self.lookup(dir, name)? {
                        Some(e) => stack.push(e.ino),
                        None => return Ok(None),
                    }
                }
            }
        }
        Ok(stack.last().copied())
    }

    /// The extended attributes of inode `ino`: the in-inode ones first,
    /// then the block's, as Linux lists them. Includes the ones Linux does
    /// not show ([`Xattr::shown_by_linux`]).
    pub fn xattrs(&self, ino: u32) -> Result<Arc<[Xattr]>, MetaError> {
        if let Some(x) = self.xattrs.get(ino) {
            return Ok(x);
        }
        let inode = self.inode(ino)?;
        let mut out = Vec::new();
        if let Some(area) = &inode.ibody {
            xattr::parse_ibody(ino, area, &mut out)?;
        }
        if inode.xattr_block != 0 {
            let data = self.read_block(inode.xattr_block)?;
            xattr::parse_block(ino, inode.xattr_block, &data, &mut out)?;
        }
        let list: Arc<[Xattr]> = out.into();
        self.xattrs.insert(ino, Arc::clone(&list), 1);
        Ok(list)
    }

    /// The target of symlink `ino`, as `readlink` returns it: from
    /// `i_block` for a fast symlink, else from the first data block (up
    /// to a NUL, as the kernel reads it as a string).
    pub fn read_link(&self, ino: u32) -> Result<Vec<u8>, MetaError> {
        let inode = self.inode(ino)?;
        if inode.file_type() != Some(FileType::Symlink) {
            return Err(MetaError::NotASymlink(ino));
        }
        if inode.is_fast_symlink(self.geom.cluster_size) {
            return inode.fast_symlink_target();
        }
        let bs = u64::from(self.geom.block_size);
        if inode.size == 0 || inode.size >= bs {
            return Err(MetaError::Corrupt(format!(
                "symlink inode {ino}: size {} is not 1..{bs}",
                inode.size
            )));
        }
        let first = self
            .runs(&inode, 1)?
            .into_iter()
            .find(|r| r.logical == 0 && r.len > 0)
            .ok_or_else(|| {
                MetaError::Corrupt(format!("symlink inode {ino}: block 0 is not mapped"))
            })?;
        let mut data = self.read_block(first.physical)?;
        // Below the block size, checked above.
        data.truncate(inode.size as usize);
        if let Some(nul) = data.iter().position(|&b| b == 0) {
            data.truncate(nul);
        }
        Ok(data)
    }
}

fn read(source: &dyn BlockDevice, buf: &mut [u8], offset: u64) -> Result<(), MetaError> {
    source
        .read_exact_at(buf, offset)
        .map_err(|source| MetaError::Read {
            start: offset,
            end: offset.saturating_add(buf.len() as u64),
            source,
        })
}

#[cfg(test)]
mod fuzz_walk;
#[cfg(test)]
mod roundtrip;
#[cfg(test)]
mod tests;
