//! Block maps, the pre-extent layout (ext2/ext3 files, kept by ext4 for
//! inodes without [`crate::inode::flags::EXTENTS`]): `i_block` holds 12
//! direct block numbers, then the roots of one single, one double and
//! one triple indirect tree. An indirect block is an array of 32-bit
//! block numbers, each pointing at data (single) or at the next level
//! down. Block 0 is a hole, at any level.

use crate::bytes::{le32, put32};
use crate::error::Corrupt;
use crate::inode::N_BLOCK_BYTES;

/// Direct block numbers in `i_block`.
pub const DIRECT_BLOCKS: usize = 12;
/// Indirect levels: single, double and triple.
pub const INDIRECT_LEVELS: usize = 3;
/// Bytes per block number.
pub const POINTER_SIZE: usize = 4;

/// `i_block` read as a block map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockMap {
    /// The first 12 logical blocks' block numbers.
    pub direct: [u32; DIRECT_BLOCKS],
    /// The roots of the single, double and triple indirect trees.
    pub indirect: [u32; INDIRECT_LEVELS],
}

impl BlockMap {
    /// The 60 bytes of `i_block`.
    pub fn encode(&self) -> [u8; N_BLOCK_BYTES] {
        let mut b = [0u8; N_BLOCK_BYTES];
        for (i, &p) in self.direct.iter().chain(&self.indirect).enumerate() {
            put32(&mut b, i * POINTER_SIZE, p);
        }
        b
    }

    /// Decodes `i_block`; any 60 bytes are a block map (whether its
    /// numbers lie inside the filesystem is the reader's business).
    pub fn decode(i_block: &[u8; N_BLOCK_BYTES]) -> BlockMap {
        let word = |i: usize| le32(i_block, i * POINTER_SIZE).unwrap_or(0);
        BlockMap {
            direct: std::array::from_fn(word),
            indirect: std::array::from_fn(|l| word(DIRECT_BLOCKS + l)),
        }
    }
}

/// Block numbers per indirect block of `block_size` bytes.
pub fn pointers_per_block(block_size: u32) -> u32 {
    block_size / POINTER_SIZE as u32
}

/// An indirect block holding `pointers`.
pub fn encode_indirect(pointers: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; pointers.len() * POINTER_SIZE];
    for (i, &p) in pointers.iter().enumerate() {
        put32(&mut b, i * POINTER_SIZE, p);
    }
    b
}

/// The block numbers in an indirect block: whole 4-byte numbers, at
/// least one.
pub fn decode_indirect(block: &[u8]) -> Result<Vec<u32>, Corrupt> {
    if block.is_empty() || !block.len().is_multiple_of(POINTER_SIZE) {
        return Err(Corrupt::IndirectSize { len: block.len() });
    }
    Ok(block
        .chunks_exact(POINTER_SIZE)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect())
}
