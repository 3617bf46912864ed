//! Writer → reader round trips, one per on-disk structure: each test
//! builds a small image with chunker's ext4 writer (in memory, or a sparse
//! temporary file), reads it back with this reader and checks, field by
//! field, that the reader sees what the writer was given. No root, no
//! mount, no outside tools.
//!
//! - `superblock`, `group`: geometry, counts, every group's descriptor.
//! - `inode`: modes, owners, the four times, sizes, allocated blocks, link
//!   counts, device numbers, fast and slow symlinks.
//! - `extent`: extent trees of depth 0, 1 and 2, holes, sparse files.
//! - `dir`: many entries over many blocks, every file type.
//! - `xattr`: in-inode and block xattrs, each name index, on-disk ACLs.

mod dir;
mod extent;
mod group;
mod inode;
mod superblock;
mod xattr;

use std::fs::File;
use std::sync::Arc;

use chunker::ext4::{DataOut, Ext4Builder, Ext4Options, Ext4Summary};
use chunker::sink::{FileSink, ImageSink, VecSink};
use chunker::tree::{self, FileData, InodeKind, Metadata, Tree};

use super::tests::mem;
use super::{Ext4Meta, Inode};

/// An image being built: file data goes in as it is added, the tree is
/// written by [`Image::finish`].
pub(super) struct Image<S: ImageSink> {
    builder: Ext4Builder<S>,
    tree: Tree,
}

/// Options for a small image: 64 KiB chunks, no spare room unless asked.
pub(super) fn opts(free_bytes: u64, spare_inodes: u32) -> Ext4Options {
    Ext4Options {
        chunk_size: 64 * 1024,
        free_bytes,
        spare_inodes,
    }
}

pub(super) fn path(p: &str) -> Vec<&[u8]> {
    p.split('/').map(str::as_bytes).collect()
}

/// Metadata with permission bits `mode`, owner `uid:gid` and every time
/// at `secs.nanos`.
pub(super) fn meta(mode: u16, uid: u32, gid: u32, secs: i64, nanos: u32) -> Metadata {
    Metadata {
        mode,
        uid,
        gid,
        mtime: tree::Timestamp { secs, nanos },
        ..Metadata::default()
    }
}

impl Image<VecSink> {
    /// An image built in memory.
    pub(super) fn in_memory(opts: Ext4Options) -> Self {
        Image {
            builder: Ext4Builder::new(VecSink::default(), opts).unwrap(),
            tree: Tree::new(),
        }
    }

    /// Writes the metadata and opens the image with the reader.
    pub(super) fn open(self) -> (Ext4Meta, Ext4Summary, Vec<u8>) {
        let (sink, summary) = self.builder.finish(&self.tree).unwrap();
        assert_eq!(sink.bytes.len() as u64, summary.size);
        let meta = Ext4Meta::open(mem(sink.bytes.clone())).unwrap();
        (meta, summary, sink.bytes)
    }
}

impl Image<FileSink> {
    /// An image built in `file` (sparse where it is free space).
    pub(super) fn in_file(file: File, opts: Ext4Options) -> Self {
        Image {
            builder: Ext4Builder::new(FileSink::new(file), opts).unwrap(),
            tree: Tree::new(),
        }
    }

    /// Writes the metadata and opens the image with the reader.
    pub(super) fn open(self) -> (Ext4Meta, Ext4Summary, Arc<File>) {
        let (sink, summary) = self.builder.finish(&self.tree).unwrap();
        let file = Arc::new(sink.into_inner());
        assert_eq!(file.metadata().unwrap().len(), summary.size);
        let meta = Ext4Meta::open(file.clone()).unwrap();
        (meta, summary, file)
    }
}

impl<S: ImageSink> Image<S> {
    /// Starts the next layer's data on a chunk boundary.
    pub(super) fn layer(&mut self) {
        self.builder.begin_layer();
    }

    /// A regular file holding `data`; returns where its blocks went.
    pub(super) fn file(&mut self, p: &str, data: &[u8], m: Metadata) -> FileData {
        let fd = self
            .builder
            .write_file(&mut &data[..], data.len() as u64)
            .unwrap();
        self.node(p, InodeKind::File(fd.clone()), m);
        fd
    }

    /// Any inode, as given.
    pub(super) fn node(&mut self, p: &str, kind: InodeKind, m: Metadata) {
        self.tree.insert(&path(p), kind, m).unwrap();
    }

    /// A second name for `target`.
    pub(super) fn link(&mut self, p: &str, target: &str) {
        self.tree.link(&path(p), &path(target)).unwrap();
    }
}

/// The inode `p` names.
pub(super) fn inode_at(meta: &Ext4Meta, p: &str) -> Arc<Inode> {
    let ino = ino_at(meta, p);
    meta.inode(ino).unwrap()
}

/// The inode number `p` names.
pub(super) fn ino_at(meta: &Ext4Meta, p: &str) -> u32 {
    meta.resolve(p.as_bytes())
        .unwrap()
        .unwrap_or_else(|| panic!("{p} is not in the image"))
}
