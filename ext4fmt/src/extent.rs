//! Extent tree nodes: a 12-byte header (magic, entries, max, depth,
//! generation) and 12-byte entries, indexes above leaves. The root sits in
//! the inode's `i_block` (room for 4 entries); deeper nodes fill a block.

use crate::bytes::{Fields, put16, put32};
use crate::error::Corrupt;

/// `EXT4_EXT_MAGIC`.
pub const MAGIC: u16 = 0xF30A;
/// Bytes of the header.
pub const HEADER_SIZE: usize = 12;
/// Bytes of an index or leaf entry.
pub const ENTRY_SIZE: usize = 12;
/// Entries in the root in `i_block`.
pub const ROOT_ENTRIES: usize = 4;
/// `EXT4_MAX_EXTENT_DEPTH`.
pub const MAX_DEPTH: u16 = 5;
/// `EXT_INIT_MAX_LEN`: longer lengths mark unwritten extents.
pub const INIT_MAX_LEN: u16 = 32768;

/// Entries that fit a node of `node_size` bytes.
pub fn entries_in(node_size: usize) -> usize {
    node_size.saturating_sub(HEADER_SIZE) / ENTRY_SIZE
}

/// `struct ext4_extent_header`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Valid entries.
    pub entries: u16,
    /// Room for entries.
    pub max: u16,
    /// 0 for a leaf.
    pub depth: u16,
    /// `eh_generation`.
    pub generation: u32,
}

impl Header {
    /// The 12 on-disk bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        put16(&mut b, 0, MAGIC);
        put16(&mut b, 2, self.entries);
        put16(&mut b, 4, self.max);
        put16(&mut b, 6, self.depth);
        put32(&mut b, 8, self.generation);
        b
    }

    /// Decodes and checks the header of `node`: the magic, entries within
    /// max, max within the node, depth within [`MAX_DEPTH`].
    pub fn decode(node: &[u8]) -> Result<Header, Corrupt> {
        let f = Fields::new(node, "extent header");
        let magic = f.u16(0)?;
        if magic != MAGIC {
            return Err(Corrupt::Magic {
                what: "extent node",
                found: u32::from(magic),
                want: u32::from(MAGIC),
            });
        }
        let h = Header {
            entries: f.u16(2)?,
            max: f.u16(4)?,
            depth: f.u16(6)?,
            generation: f.u32(8)?,
        };
        if h.entries > h.max || usize::from(h.max) > entries_in(node.len()) {
            return Err(Corrupt::ExtentCounts {
                entries: h.entries,
                max: h.max,
                node_size: node.len(),
            });
        }
        if h.depth > MAX_DEPTH {
            return Err(Corrupt::ExtentDepth { depth: h.depth });
        }
        Ok(h)
    }
}

/// `struct ext4_extent_idx`: the child node covering logical blocks from
/// `logical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// First logical block covered.
    pub logical: u32,
    /// The child node's block.
    pub leaf: u64,
}

impl Index {
    /// The 12 on-disk bytes.
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        put32(&mut b, 0, self.logical);
        put32(&mut b, 4, self.leaf as u32);
        put16(&mut b, 8, (self.leaf >> 32) as u16);
        b
    }

    /// Decodes 12 bytes.
    pub fn decode(b: &[u8]) -> Result<Index, Corrupt> {
        let f = Fields::new(b, "extent index");
        Ok(Index {
            logical: f.u32(0)?,
            leaf: u64::from(f.u32(4)?) | u64::from(f.u16(8)?) << 32,
        })
    }
}

/// `struct ext4_extent`: `len` blocks from logical `logical` at `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leaf {
    /// First logical block.
    pub logical: u32,
    /// Blocks (1 to 32768; to 32767 when unwritten).
    pub len: u16,
    /// Unwritten (reads as zeros).
    pub unwritten: bool,
    /// First physical block.
    pub start: u64,
}

impl Leaf {
    /// The 12 on-disk bytes.
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        let len = if self.unwritten {
            self.len.saturating_add(INIT_MAX_LEN)
        } else {
            self.len
        };
        put32(&mut b, 0, self.logical);
        put16(&mut b, 4, len);
        put16(&mut b, 6, (self.start >> 32) as u16);
        put32(&mut b, 8, self.start as u32);
        b
    }

    /// Decodes 12 bytes.
    pub fn decode(b: &[u8]) -> Result<Leaf, Corrupt> {
        let f = Fields::new(b, "extent");
        let raw = f.u16(4)?;
        let (len, unwritten) = if raw > INIT_MAX_LEN {
            (raw - INIT_MAX_LEN, true)
        } else {
            (raw, false)
        };
        Ok(Leaf {
            logical: f.u32(0)?,
            len,
            unwritten,
            start: u64::from(f.u32(8)?) | u64::from(f.u16(6)?) << 32,
        })
    }
}

/// Entry `i` of a node (after the header), if the node holds it.
pub fn entry(node: &[u8], i: usize) -> Result<&[u8], Corrupt> {
    Fields::new(node, "extent node").bytes(HEADER_SIZE + i * ENTRY_SIZE, ENTRY_SIZE)
}

/// Writes a node: `header` and then `entries`, into `node`.
pub fn encode_node(node: &mut [u8], header: &Header, entries: &[[u8; ENTRY_SIZE]]) {
    node[..HEADER_SIZE].copy_from_slice(&header.encode());
    for (i, e) in entries.iter().enumerate() {
        let at = HEADER_SIZE + i * ENTRY_SIZE;
        node[at..at + ENTRY_SIZE].copy_from_slice(e);
    }
}
