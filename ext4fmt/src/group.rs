//! Group descriptors (`struct ext4_group_desc`): where each block group's
//! bitmaps and inode table are, and its free counts. 32 bytes, or
//! `s_desc_size` (64 and up) with `64bit`, which adds the high halves.
//! No checksums or `bg_flags`: they encode as zero.

use crate::bytes::{Fields, put16, put32};
use crate::error::Corrupt;

/// Field offsets (`_HI` ones only in the 64-byte form).
pub mod off {
    #![allow(missing_docs)]
    pub const BLOCK_BITMAP_LO: usize = 0x00;
    pub const INODE_BITMAP_LO: usize = 0x04;
    pub const INODE_TABLE_LO: usize = 0x08;
    pub const FREE_BLOCKS_COUNT_LO: usize = 0x0C;
    pub const FREE_INODES_COUNT_LO: usize = 0x0E;
    pub const USED_DIRS_COUNT_LO: usize = 0x10;
    pub const BLOCK_BITMAP_HI: usize = 0x20;
    pub const INODE_BITMAP_HI: usize = 0x24;
    pub const INODE_TABLE_HI: usize = 0x28;
    pub const FREE_BLOCKS_COUNT_HI: usize = 0x2C;
    pub const FREE_INODES_COUNT_HI: usize = 0x2E;
    pub const USED_DIRS_COUNT_HI: usize = 0x30;
}

/// The size from which a descriptor has high halves.
pub const WIDE_SIZE: usize = 64;

/// One group descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupDesc {
    /// Block holding the group's block bitmap.
    pub block_bitmap: u64,
    /// Block holding the group's inode bitmap.
    pub inode_bitmap: u64,
    /// First block of the group's inode table.
    pub inode_table: u64,
    /// Free blocks in the group.
    pub free_blocks: u32,
    /// Free inodes in the group.
    pub free_inodes: u32,
    /// Directories among the group's inodes.
    pub used_dirs: u32,
}

impl GroupDesc {
    /// The `size` on-disk bytes (32, or 64 and up with the high halves).
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        put32(&mut b, off::BLOCK_BITMAP_LO, self.block_bitmap as u32);
        put32(&mut b, off::INODE_BITMAP_LO, self.inode_bitmap as u32);
        put32(&mut b, off::INODE_TABLE_LO, self.inode_table as u32);
        put16(&mut b, off::FREE_BLOCKS_COUNT_LO, self.free_blocks as u16);
        put16(&mut b, off::FREE_INODES_COUNT_LO, self.free_inodes as u16);
        put16(&mut b, off::USED_DIRS_COUNT_LO, self.used_dirs as u16);
        if size >= WIDE_SIZE {
            put32(
                &mut b,
                off::BLOCK_BITMAP_HI,
                (self.block_bitmap >> 32) as u32,
            );
            put32(
                &mut b,
                off::INODE_BITMAP_HI,
                (self.inode_bitmap >> 32) as u32,
            );
            put32(&mut b, off::INODE_TABLE_HI, (self.inode_table >> 32) as u32);
            put16(
                &mut b,
                off::FREE_BLOCKS_COUNT_HI,
                (self.free_blocks >> 16) as u16,
            );
            put16(
                &mut b,
                off::FREE_INODES_COUNT_HI,
                (self.free_inodes >> 16) as u16,
            );
            put16(
                &mut b,
                off::USED_DIRS_COUNT_HI,
                (self.used_dirs >> 16) as u16,
            );
        }
        b
    }

    /// Decodes a descriptor; the high halves are read when `wide` (the
    /// filesystem has `64bit` and descriptors of 64 bytes or more).
    pub fn decode(b: &[u8], wide: bool) -> Result<GroupDesc, Corrupt> {
        let f = Fields::new(b, "group descriptor");
        let w32 = |lo: usize, hi: usize| -> Result<u64, Corrupt> {
            let high = if wide { f.u32(hi)? } else { 0 };
            Ok(u64::from(f.u32(lo)?) | u64::from(high) << 32)
        };
        let w16 = |lo: usize, hi: usize| -> Result<u32, Corrupt> {
            let high = if wide { f.u16(hi)? } else { 0 };
            Ok(u32::from(f.u16(lo)?) | u32::from(high) << 16)
        };
        Ok(GroupDesc {
            block_bitmap: w32(off::BLOCK_BITMAP_LO, off::BLOCK_BITMAP_HI)?,
            inode_bitmap: w32(off::INODE_BITMAP_LO, off::INODE_BITMAP_HI)?,
            inode_table: w32(off::INODE_TABLE_LO, off::INODE_TABLE_HI)?,
            free_blocks: w16(off::FREE_BLOCKS_COUNT_LO, off::FREE_BLOCKS_COUNT_HI)?,
            free_inodes: w16(off::FREE_INODES_COUNT_LO, off::FREE_INODES_COUNT_HI)?,
            used_dirs: w16(off::USED_DIRS_COUNT_LO, off::USED_DIRS_COUNT_HI)?,
        })
    }
}
