//! Our own deterministic ext4 writer.
//!
//! Layout of an image (4 KiB blocks):
//!
//! ```text
//! chunk 0            superblock, group descriptors (written last); the
//!                    rest of the chunk is free space
//! chunk 1 ..         layer 1 file data, layer 2 file data (each layer
//!                    starting on a chunk boundary), in tar order
//! next chunk ..      metadata: bitmaps, inode tables, directories, extent
//!                    tree blocks, xattr blocks, long symlinks
//! then               free space (zeros), as configured, plus what Linux
//!                    holds back; padded to a whole chunk
//! ```
//!
//! One file per on-disk concept: `superblock`, `group` (descriptors and
//! bitmaps), `inode`, `extent` (extent trees), `dir` (directory
//! blocks), `xattr`; `layout` sizes and places the metadata, `plan`
//! numbers the inodes, and `writer` writes it all out.
//!
//! File data streams out while the layers are read ([`DataOut::write_file`],
//! or a detached layer's [`LayerWriter`], attached in order afterwards); the
//! metadata region is written by [`Ext4Builder::finish`] from the flattened
//! [`Tree`]. Nothing depends on the clock, random numbers or hash-map order.

mod acl;
mod data;
mod dir;
mod extent;
mod group;
mod inode;
mod layout;
mod plan;
mod superblock;
#[cfg(test)]
mod tests;
mod writer;
mod xattr;

use data::DataWriter;
pub use data::{FileSource, MAX_EXTENT_LEN};

use std::io::{self, Read};

use crate::sink::{DetachedSink, ImageSink};
use crate::tree::{FileData, Tree};

/// Where a layer's file data goes: the image itself
/// ([`Ext4Builder`]), or a detached layer ([`LayerWriter`]).
pub trait DataOut {
    /// Stream exactly `size` bytes of one regular file from `src`.
    /// All-zero blocks become holes.
    fn write_file(&mut self, src: &mut dyn Read, size: u64) -> io::Result<FileData>;
    /// As [`DataOut::write_file`], never reading the holes `src` knows of.
    fn write_sparse_file(&mut self, src: &mut dyn FileSource, size: u64) -> io::Result<FileData>;
}

/// One layer's data written before its place in the image is known
/// ([`Ext4Builder::detach_layer`]): its extents count blocks from the
/// layer's start, and are moved to its place when the tree gets them.
pub struct LayerWriter {
    data: DataWriter,
    sink: Box<dyn DetachedSink>,
}

impl DataOut for LayerWriter {
    fn write_file(&mut self, src: &mut dyn Read, size: u64) -> io::Result<FileData> {
        self.data.write_file(&mut *self.sink, src, size)
    }

    fn write_sparse_file(&mut self, src: &mut dyn FileSource, size: u64) -> io::Result<FileData> {
        self.data.write_sparse_file(&mut *self.sink, src, size)
    }
}

/// The filesystem block size; the only one we write.
pub const BLOCK_SIZE: u32 = 4096;

/// The default chunk size, to which layers are aligned.
pub const DEFAULT_CHUNK_SIZE: u64 = 512 * 1024;

/// Options that shape an image. The same options and input give the same
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Options {
    /// Chunk size in bytes: a power of two from 64 KiB to 4 MiB.
    pub chunk_size: u64,
    /// Extra free space in bytes, beyond what the tree needs.
    pub free_bytes: u64,
    /// Free inodes beyond the ones the tree uses.
    pub spare_inodes: u32,
}

impl Default for Ext4Options {
    fn default() -> Self {
        Ext4Options {
            chunk_size: DEFAULT_CHUNK_SIZE,
            free_bytes: 64 * 1024 * 1024,
            spare_inodes: 4096,
        }
    }
}

/// What an image ended up holding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Summary {
    /// Image size in bytes.
    pub size: u64,
    /// First block of the metadata region.
    pub metadata_start: u64,
    /// Inodes in use, the reserved ones included.
    pub inodes_used: u64,
    /// Blocks in use.
    pub blocks_used: u64,
}

/// Errors from building an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ext4Error {
    /// The options cannot give a valid image.
    #[error("invalid ext4 option: {0}")]
    Options(String),
    /// The tree does not fit ext4's limits.
    #[error("the tree does not fit in ext4: {0}")]
    TooLarge(String),
    /// The tree holds something ext4 cannot represent as given (a bad
    /// name, device number, symlink target or file extent).
    #[error("{path}: {reason}")]
    BadEntry {
        /// The path of the offending entry.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `system.posix_acl_*` xattr whose value is not a valid ACL, so it
    /// cannot be converted to ext4's on-disk ACL format.
    #[error("{path}: ACL xattr {name}: {reason}")]
    Acl {
        /// The path of the entry carrying the ACL.
        path: String,
        /// The xattr name.
        name: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// An xattr that ext4 cannot store: unknown namespace, or too large
    /// for the inode plus one block.
    #[error("{path}: {reason}")]
    Xattr {
        /// The path of the entry carrying the xattrs.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing to the sink failed.
    #[error("writing the image failed")]
    Io(#[from] io::Error),
}

/// Builds one image: data first, layer by layer, then metadata.
pub struct Ext4Builder<S: ImageSink> {
    sink: S,
    opts: Ext4Options,
    data: DataWriter,
    identity: Vec<u8>,
}

impl<S: ImageSink> Ext4Builder<S> {
    /// Start an image in `sink`.
    pub fn new(sink: S, opts: Ext4Options) -> Result<Self, Ext4Error> {
        let cs = opts.chunk_size;
        if !cs.is_power_of_two() || !(64 * 1024..=4 * 1024 * 1024).contains(&cs) {
            return Err(Ext4Error::Options(format!(
                "chunk size {cs} is not a power of two from 64 KiB to 4 MiB"
            )));
        }
        let chunk_blocks = cs / u64::from(BLOCK_SIZE);
        Ok(Ext4Builder {
            sink,
            opts,
            // Chunk 0 is the header region.
            data: DataWriter::new(chunk_blocks, chunk_blocks),
            identity: Vec::new(),
        })
    }

    /// Begin a layer: its data starts on the next chunk boundary.
    pub fn begin_layer(&mut self) {
        self.data.align_to_chunk();
    }

    /// A writer for a layer whose place is not known yet, to fill on
    /// another thread; `None` when the sink is written in order only.
    pub fn detach_layer(&mut self) -> Option<LayerWriter> {
        let sink = self.sink.detach()?;
        Some(LayerWriter {
            data: DataWriter::new(0, self.data.chunk_blocks()),
            sink,
        })
    }

    /// Begin the next layer ([`Ext4Builder::begin_layer`]) and say its
    /// first block: where a detached layer attached now goes.
    pub fn layer_start(&mut self) -> u64 {
        self.begin_layer();
        self.data.next_block()
    }

    /// Put a detached layer, complete, at the next layer's start (what
    /// [`Ext4Builder::layer_start`] said); the layers after it follow it.
    pub fn attach_layer(&mut self, mut layer: LayerWriter) -> io::Result<()> {
        let blocks = layer.data.next_block();
        layer.sink.finish(blocks * u64::from(BLOCK_SIZE))?;
        let start = self.layer_start();
        self.sink
            .attach(layer.sink, start * u64::from(BLOCK_SIZE))?;
        self.data.skip_to(start + blocks);
        Ok(())
    }

    /// Mix bytes that identify the content (layer digests, say) into the
    /// filesystem UUID. Without them the UUID follows the metadata alone,
    /// so two images differing only in file bytes would share it. Calls
    /// accumulate in order; the same calls give the same UUID.
    pub fn identify(&mut self, bytes: &[u8]) {
        self.identity
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.identity.extend_from_slice(bytes);
    }

    /// Write the metadata for `tree` and the header, and finish the sink.
    pub fn finish(mut self, tree: &Tree) -> Result<(S, Ext4Summary), Ext4Error> {
        self.data.align_to_chunk();
        let summary = writer::write_metadata(
            &mut self.sink,
            tree,
            self.data.next_block(),
            &self.opts,
            &self.identity,
        )?;
        self.sink.finish(summary.size)?;
        Ok((self.sink, summary))
    }
}

impl<S: ImageSink> DataOut for Ext4Builder<S> {
    fn write_file(&mut self, src: &mut dyn Read, size: u64) -> io::Result<FileData> {
        self.data.write_file(&mut self.sink, src, size)
    }

    fn write_sparse_file(&mut self, src: &mut dyn FileSource, size: u64) -> io::Result<FileData> {
        self.data.write_sparse_file(&mut self.sink, src, size)
    }
}
