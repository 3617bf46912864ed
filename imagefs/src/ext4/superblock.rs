//! The superblock fields this reader needs: where the group descriptors
//! and inode tables are, how big inodes and descriptors are, and which
//! features change the formats it decodes.

use super::MetaError;
use ext4fmt::superblock::{
    DESC_SIZE_32, GOOD_OLD_FIRST_INO, GOOD_OLD_INODE_SIZE, MAX_DESC_SIZE, MAX_LOG_BLOCK_SIZE,
    MIN_DESC_SIZE_64BIT, Superblock, incompat, ro_compat,
};
pub(crate) use ext4fmt::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};

/// What the superblock says about the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Block size in bytes (1 KiB to 64 KiB).
    pub block_size: u32,
    /// Blocks in the filesystem.
    pub blocks_count: u64,
    /// Inodes in the filesystem.
    pub inodes_count: u32,
    /// Inodes in each block group.
    pub inodes_per_group: u32,
    /// The first inode files may use; below it only the root (2) is a
    /// file anyone can name.
    pub first_ino: u32,
    /// Bytes per on-disk inode (128 or more).
    pub inode_size: u16,
    /// Bytes per group descriptor (32, or 64 and up with `64bit`).
    pub desc_size: u16,
    /// Block groups.
    pub groups: u32,
    /// `64bit`: block numbers have high halves.
    pub is_64bit: bool,
    /// `filetype`: directory entries carry the file type.
    pub filetype: bool,
    /// `huge_file`: `i_blocks` has 48 bits and may count blocks.
    pub huge_file: bool,
    /// Bytes per allocation cluster (the block size without `bigalloc`).
    pub cluster_size: u64,
    /// The counts `statfs` reports.
    pub stats: FsStats,
}

/// The filesystem-wide counts `statfs` reports, from the superblock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Block size in bytes.
    pub block_size: u32,
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Free blocks available to unprivileged users: the free ones less
    /// the reserved ones, never below 0.
    pub avail_blocks: u64,
    /// Inodes.
    pub inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

fn bad(why: String) -> MetaError {
    MetaError::Corrupt(format!("superblock: {why}"))
}

impl Geometry {
    /// Decodes and checks the superblock (the 1024 bytes at offset 1024).
    pub(crate) fn decode(raw: &[u8]) -> Result<Geometry, MetaError> {
        let sb = Superblock::decode(raw).map_err(MetaError::format(|| "superblock".into()))?;
        let log = sb.log_block_size;
        if log > MAX_LOG_BLOCK_SIZE {
            return Err(bad(format!("block size 1 KiB << {log} is too large")));
        }
        let block_size = 1024u32 << log;
        if sb.feature_incompat & incompat::META_BG != 0 {
            // Descriptors scattered over the groups: ext4-view refuses
            // these images too.
            return Err(MetaError::Unsupported(
                "meta_bg (group descriptors spread over the block groups)".into(),
            ));
        }
        let is_64bit = sb.is_64bit();
        let blocks_count = sb.blocks_count;
        let inodes_count = sb.inodes_count;
        let first_data_block = sb.first_data_block;
        let (blocks_per_group, inodes_per_group) = (sb.blocks_per_group, sb.inodes_per_group);
        if blocks_per_group == 0 || inodes_per_group == 0 {
            return Err(bad(format!(
                "{blocks_per_group} blocks and {inodes_per_group} inodes per group"
            )));
        }
        if inodes_per_group > block_size * 8 {
            return Err(bad(format!(
                "{inodes_per_group} inodes per group do not fit one bitmap block"
            )));
        }
        if u64::from(first_data_block) >= blocks_count {
            return Err(bad(format!(
                "first data block {first_data_block} is not below the block count {blocks_count}"
            )));
        }
        let groups =
            (blocks_count - u64::from(first_data_block)).div_ceil(u64::from(blocks_per_group));
        let groups = u32::try_from(groups).map_err(|_| bad(format!("{groups} block groups")))?;
        if u64::from(inodes_count) > u64::from(groups) * u64::from(inodes_per_group) {
            return Err(bad(format!(
                "{inodes_count} inodes do not fit {groups} groups of {inodes_per_group}"
            )));
        }
        // Revision 0 has fixed 128-byte inodes, inode 11 as the first
        // one for files, and neither s_inode_size nor s_first_ino.
        let dynamic = sb.rev_level != 0;
        let inode_size = if dynamic {
            sb.inode_size
        } else {
            GOOD_OLD_INODE_SIZE
        };
        let first_ino = if dynamic {
            sb.first_ino
        } else {
            GOOD_OLD_FIRST_INO
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || u32::from(inode_size) > block_size {
            return Err(bad(format!("inode size {inode_size}")));
        }
        let desc_size = if is_64bit {
            let d = sb.desc_size;
            if !(MIN_DESC_SIZE_64BIT..=MAX_DESC_SIZE).contains(&d) || !d.is_power_of_two() {
                return Err(bad(format!("group descriptor size {d}")));
            }
            d
        } else {
            DESC_SIZE_32
        };
        // s_log_cluster_size counts from 1 KiB like the block size; it
        // only differs from it with bigalloc.
        let cluster_size = if sb.feature_ro_compat & ro_compat::BIGALLOC != 0 {
            let log = sb.log_cluster_size;
            if log > MAX_LOG_BLOCK_SIZE + 16 {
                return Err(bad(format!("cluster size 1 KiB << {log} is too large")));
            }
            1024u64 << log
        } else {
            u64::from(block_size)
        };
        let stats = FsStats {
            block_size,
            blocks: blocks_count,
            free_blocks: sb.free_blocks_count,
            avail_blocks: sb.free_blocks_count.saturating_sub(sb.r_blocks_count),
            inodes: u64::from(inodes_count),
            free_inodes: u64::from(sb.free_inodes_count),
        };
        Ok(Geometry {
            block_size,
            blocks_count,
            inodes_count,
            inodes_per_group,
            first_ino,
            inode_size,
            desc_size,
            groups,
            is_64bit,
            filetype: sb.feature_incompat & incompat::FILETYPE != 0,
            huge_file: sb.feature_ro_compat & ro_compat::HUGE_FILE != 0,
            cluster_size,
            stats,
        })
    }

    /// The byte offset of block `block`, if the filesystem has that block.
    pub(crate) fn block_offset(&self, block: u64) -> Option<u64> {
        if block >= self.blocks_count {
            return None;
        }
        block.checked_mul(u64::from(self.block_size))
    }

    /// The byte offset of group descriptor `group`: the table starts in
    /// the block after the one holding the superblock.
    pub(crate) fn descriptor_offset(&self, group: u32) -> Option<u64> {
        let first = SUPERBLOCK_OFFSET / u64::from(self.block_size) + 1;
        let start = self.block_offset(first)?;
        start.checked_add(u64::from(group) * u64::from(self.desc_size))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid superblock: 4 KiB blocks, 64bit, 256-byte inodes,
    /// 2 groups of 32768 blocks and 128 inodes.
    pub(crate) fn sample() -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        let mut put32 = |at: usize, v: u32| sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(0x00, 256); // inodes
        put32(0x04, 65536); // blocks
        put32(0x18, 2); // 4 KiB
        put32(0x20, 32768);
        put32(0x28, 128);
        put32(0x4C, 1); // dynamic revision
        put32(0x54, 11); // first inode
        put32(0x60, incompat::FILETYPE | incompat::BIT64);
        sb[0x38..0x3A].copy_from_slice(&ext4fmt::superblock::MAGIC.to_le_bytes());
        sb[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        sb[0xFE..0x100].copy_from_slice(&64u16.to_le_bytes());
        sb
    }

    #[test]
    fn decodes_the_fields() {
        let g = Geometry::decode(&sample()).unwrap();
        assert_eq!(g.block_size, 4096);
        assert_eq!(g.groups, 2);
        assert_eq!(g.inode_size, 256);
        assert_eq!(g.desc_size, 64);
        assert!(g.is_64bit && g.filetype);
        assert_eq!(g.descriptor_offset(1), Some(4096 + 64));
        assert_eq!(g.block_offset(65535), Some(65535 * 4096));
        assert_eq!(g.block_offset(65536), None);
    }

    #[test]
    fn one_kib_blocks_put_descriptors_in_block_2() {
        let mut sb = sample();
        sb[0x18] = 0;
        sb[0x14] = 1; // first data block
        let g = Geometry::decode(&sb).unwrap();
        assert_eq!(g.descriptor_offset(0), Some(2048));
    }

    #[test]
    fn corrupt_fields_are_named() {
        let cases: &[(usize, &[u8], &str)] = &[
            (0x38, &[0, 0], "magic"),
            (0x18, &[7, 0, 0, 0], "block size"),
            (0x20, &[0, 0, 0, 0], "per group"),
            (0x28, &[0xFF, 0xFF, 0, 0], "bitmap"),
            (0x58, &[100, 0], "inode size"),
            (0x58, &[0, 0x20], "inode size"),
            (0xFE, &[32, 0], "descriptor size"),
            (0x00, &[0xFF, 0xFF, 0xFF, 0xFF], "inodes do not fit"),
            (0x14, &[0, 0, 1, 0], "first data block"),
        ];
        for (at, bytes, want) in cases {
            let mut sb = sample();
            sb[*at..*at + bytes.len()].copy_from_slice(bytes);
            let e = Geometry::decode(&sb).unwrap_err().to_string();
            assert!(e.contains(want), "{at:#x}: {e}");
        }
        let mut sb = sample();
        sb[0x60] |= 0x10;
        assert!(matches!(
            Geometry::decode(&sb),
            Err(MetaError::Unsupported(_))
        ));
        assert!(Geometry::decode(&sample()[..0x40]).is_err());
    }
}
