//! Sizing and placement: how many groups and inodes, and where each kind of
//! metadata goes.
//!
//! ```text
//! block 0            boot bytes, superblock at byte 1024
//! block 1 ..         group descriptor table (rest of chunk 0 free)
//! chunk 1 ..         file data, layer by layer
//! meta_start         block bitmaps (one per group)
//!                    inode bitmaps (one per group)
//!                    inode tables (one per group)
//!                    per-inode blocks: directory blocks, slow symlink
//!                    targets, extent tree blocks, xattr blocks
//! meta_end           free space, then padding to a chunk boundary
//! ```
//!
//! The group count depends on the total size, the total size on the
//! metadata size, and the metadata size on the group count (one bitmap pair
//! and one inode table per group), so [`Geometry::compute`] iterates to a
//! fixed point.

use super::group::DESC_SIZE;
use super::inode::INODE_SIZE;
use super::{BLOCK_SIZE, Ext4Error};

/// Blocks per group: one bitmap block's worth of bits.
pub(crate) const BLOCKS_PER_GROUP: u64 = 8 * BLOCK_SIZE as u64;
/// Inodes per inode-table block.
const INODES_PER_BLOCK: u64 = BLOCK_SIZE as u64 / INODE_SIZE as u64;
/// The most inodes a group can have: one inode bitmap block's worth.
const MAX_INODES_PER_GROUP: u64 = 8 * BLOCK_SIZE as u64;

/// The most blocks Linux holds back from allocation on a mounted ext4.
const KERNEL_RESERVE_MAX: u64 = 4096;

/// Where everything goes, in blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Blocks in the image.
    pub blocks: u64,
    /// Block groups.
    pub groups: u64,
    /// Inodes per group (a multiple of 16, at most 32768).
    pub inodes_per_group: u64,
    /// Blocks of the group descriptor table, from block 1.
    pub gdt_blocks: u64,
    /// First block of the metadata region: the block bitmaps.
    pub meta_start: u64,
    /// First inode bitmap.
    pub inode_bitmaps: u64,
    /// First inode table.
    pub inode_tables: u64,
    /// Blocks of one group's inode table.
    pub itable_blocks: u64,
    /// First per-inode block (directories, extent trees, …).
    pub extra_start: u64,
    /// First block after the metadata region.
    pub meta_end: u64,
}

impl Geometry {
    /// Size the image: file data ends before `first_free` (a chunk
    /// boundary), the tree needs `extra_blocks` per-inode blocks and
    /// `inodes_used` inodes (reserved ones included), plus `spare_inodes`
    /// and `free_blocks` of room (plus what the kernel holds back); the
    /// image ends on a `chunk_blocks` boundary.
    pub(crate) fn compute(
        first_free: u64,
        extra_blocks: u64,
        inodes_used: u64,
        spare_inodes: u64,
        free_blocks: u64,
        chunk_blocks: u64,
    ) -> Result<Geometry, Ext4Error> {
        let inodes_needed = inodes_used + spare_inodes;
        let mut groups = inodes_needed.div_ceil(MAX_INODES_PER_GROUP).max(1);
        let mut reserve = 0;
        let (blocks, inodes_per_group) = loop {
            let ipg = inodes_needed
                .div_ceil(groups)
                .next_multiple_of(INODES_PER_BLOCK)
                .min(MAX_INODES_PER_GROUP);
            let meta = groups * (2 + ipg / INODES_PER_BLOCK) + extra_blocks;
            let blocks = (first_free + meta + free_blocks + reserve).next_multiple_of(chunk_blocks);
            // Linux keeps min(2 %, 4096) blocks back from ordinary
            // allocation (`ext4_calculate_resv_clusters`); add them so
            // that the free space asked for is free space a mounted image
            // can use. An image asked to have none gets none.
            let want_reserve = if free_blocks > 0 {
                blocks.div_ceil(50).min(KERNEL_RESERVE_MAX)
            } else {
                0
            };
            if want_reserve > reserve {
                reserve = want_reserve;
                continue;
            }
            let need = blocks.div_ceil(BLOCKS_PER_GROUP);
            if need > groups {
                // More blocks than the groups cover: more groups, which
                // means more bitmaps and tables; go round again.
                groups = need;
                continue;
            }
            // The groups the inodes demand may outnumber what the blocks
            // need: grow the image so that every group has blocks.
            let min_blocks = ((groups - 1) * BLOCKS_PER_GROUP + 1).next_multiple_of(chunk_blocks);
            break (blocks.max(min_blocks), ipg);
        };
        let gdt_blocks = (groups * DESC_SIZE as u64).div_ceil(u64::from(BLOCK_SIZE));
        if 1 + gdt_blocks > chunk_blocks {
            return Err(Ext4Error::TooLarge(format!(
                "{groups} block groups need {gdt_blocks} descriptor blocks, more than the \
                 {}-byte header chunk holds; use a larger chunk size",
                chunk_blocks * u64::from(BLOCK_SIZE)
            )));
        }
        if blocks > u64::from(u32::MAX) {
            return Err(Ext4Error::TooLarge(format!(
                "{blocks} blocks exceed the 2^32 - 1 that ext4 without 64bit holds"
            )));
        }
        if groups * inodes_per_group > u64::from(u32::MAX) {
            return Err(Ext4Error::TooLarge(format!(
                "{} inodes exceed 2^32 - 1",
                groups * inodes_per_group
            )));
        }
        let itable_blocks = inodes_per_group / INODES_PER_BLOCK;
        let meta_start = first_free;
        let inode_bitmaps = meta_start + groups;
        let inode_tables = inode_bitmaps + groups;
        let extra_start = inode_tables + groups * itable_blocks;
        Ok(Geometry {
            blocks,
            groups,
            inodes_per_group,
            gdt_blocks,
            meta_start,
            inode_bitmaps,
            inode_tables,
            itable_blocks,
            extra_start,
            meta_end: extra_start + extra_blocks,
        })
    }

    /// Blocks in group `g` (the last one may be short).
    pub(crate) fn group_blocks(&self, g: u64) -> u64 {
        (self.blocks - g * BLOCKS_PER_GROUP).min(BLOCKS_PER_GROUP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_image_is_one_group() {
        let g = Geometry::compute(32, 3, 12, 100, 0, 16).unwrap();
        assert_eq!(g.groups, 1);
        let roomy = Geometry::compute(32, 3, 12, 100, 10_000, 16).unwrap();
        // 2 % of the total on top of the free blocks asked for.
        assert!(roomy.blocks >= 32 + 12 + 10_000 + roomy.blocks / 50);
        assert_eq!(g.inodes_per_group, 112);
        assert_eq!(g.itable_blocks, 7);
        assert_eq!(g.meta_end, 32 + 2 + 7 + 3);
        assert_eq!(g.blocks, 48);
        assert_eq!(g.group_blocks(0), 48);
    }

    #[test]
    fn many_groups_reach_a_fixed_point() {
        let free = 30 * BLOCKS_PER_GROUP + 5;
        let g = Geometry::compute(16, 10, 20, 4096, free, 16).unwrap();
        assert!(g.groups > 20);
        assert_eq!(g.groups, g.blocks.div_ceil(BLOCKS_PER_GROUP));
        assert!(g.meta_end + free + 4096 <= g.blocks);
        assert_eq!(g.inodes_per_group % 16, 0);
        assert!(g.inodes_per_group * g.groups >= 4116);
        assert!(g.group_blocks(g.groups - 1) < BLOCKS_PER_GROUP);
    }

    #[test]
    fn inodes_can_force_groups() {
        let g = Geometry::compute(16, 10, 100_000, 0, 0, 16).unwrap();
        assert_eq!(g.groups, 4);
        assert!(g.inodes_per_group <= 32768);
        assert_eq!(g.groups, g.blocks.div_ceil(BLOCKS_PER_GROUP));
    }

    #[test]
    fn header_chunk_limits_groups() {
        // 64 KiB chunks: 15 descriptor blocks, 1920 groups at most.
        let free = 2000 * BLOCKS_PER_GROUP;
        assert!(matches!(
            Geometry::compute(16, 0, 11, 0, free, 16),
            Err(Ext4Error::TooLarge(_))
        ));
    }
}
