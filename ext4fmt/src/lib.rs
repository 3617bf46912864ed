//! The ext4 on-disk format, written once for the writer (chunker) and the
//! reader (imagefs): every structure with its named offsets and constants
//! and an `encode`/`decode` pair side by side, in the manner of
//! `ext4-view` and Nydus's RAFS v6 layout.
//!
//! Layers, bottom up:
//! - [`bytes`]: little-endian fields at fixed offsets, checked on read.
//! - [`error`]: what a decode can find wrong ([`Corrupt`]) or not decode
//!   ([`Unsupported`]), carrying the numbers.
//! - One module per on-disk concept: [`superblock`], [`group`]
//!   (descriptors), [`inode`] (with [`time`] and [`device`] numbers),
//!   [`extent`] (header, index and leaf), [`blockmap`] (the pre-extent
//!   direct and indirect block numbers), [`dir`] (entries), [`xattr`]
//!   (entries, block header, name indexes, hashes) and [`acl`].
//!
//! Decoders check what the structure itself says (sizes, magics, counts);
//! whether a block number lies inside the filesystem is the reader's
//! business, since only it knows the geometry in use.

#![forbid(unsafe_code)]

pub mod acl;
pub mod blockmap;
pub mod bytes;
pub mod device;
pub mod dir;
pub mod error;
pub mod extent;
pub mod group;
pub mod inode;
pub mod superblock;
pub mod time;
pub mod xattr;

pub use error::{Corrupt, FormatError, Unsupported};
pub use time::Timestamp;

#[cfg(test)]
mod roundtrip;
