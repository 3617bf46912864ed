//! The superblock fields this reader needs: where the group descriptors
//! and inode tables are, how big inodes and descriptors are, and which
//! features change the formats it decodes.

use super::MetaError;
use super::bytes::{le16, le32};

/// The superblock's offset and size.
pub(crate) const SUPERBLOCK_OFFSET: u64 = 1024;
pub(crate) const SUPERBLOCK_SIZE: usize = 1024;

const MAGIC: u16 = 0xEF53;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_META_BG: u32 = 0x0010;
const INCOMPAT_64BIT: u32 = 0x0080;
const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
const RO_COMPAT_BIGALLOC: u32 = 0x0200;
/// The largest block size ext4 allows (log 6 above 1 KiB).
const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// `EXT4_MIN_DESC_SIZE_64BIT` and `EXT4_MAX_DESC_SIZE`.
const MIN_DESC_SIZE_64BIT: u16 = 64;
const MAX_DESC_SIZE: u16 = 1024;

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
    pub(crate) fn decode(sb: &[u8]) -> Result<Geometry, MetaError> {
        let field16 = |at| le16(sb, at).ok_or_else(|| bad(format!("shorter than {at:#x}")));
        let field32 = |at| le32(sb, at).ok_or_else(|| bad(format!("shorter than {at:#x}")));
        let magic = field16(0x38)?;
        if magic != MAGIC {
            return Err(bad(format!("magic {magic:#06x} is not {MAGIC:#06x}")));
        }
        let log = field32(0x18)?;
        if log > MAX_LOG_BLOCK_SIZE {
            return Err(bad(format!("block size 1 KiB << {log} is too large")));
        }
        let block_size = 1024u32 << log;
        let incompat = field32(0x60)?;
        if incompat & INCOMPAT_META_BG != 0 {
            // Descriptors scattered over the groups: ext4-view refuses
            // these images too, so a mount never gets here.
            return Err(MetaError::Unsupported(
                "meta_bg (group descriptors spread over the block groups)".into(),
            ));
        }
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let wide = |lo: usize, hi: usize| -> Result<u64, MetaError> {
            let high = if is_64bit { field32(hi)? } else { 0 };
            Ok(u64::from(field32(lo)?) | u64::from(high) << 32)
        };
        let blocks_count = wide(0x04, 0x150)?;
        let inodes_count = field32(0x00)?;
        let first_data_block = field32(0x14)?;
        let blocks_per_group = field32(0x20)?;
        let inodes_per_group = field32(0x28)?;
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
        let dynamic = field32(0x4C)? != 0;
        let inode_size = if dynamic { field16(0x58)? } else { 128 };
        let first_ino = if dynamic { field32(0x54)? } else { 11 };
        if inode_size < 128 || !inode_size.is_power_of_two() || u32::from(inode_size) > block_size {
            return Err(bad(format!("inode size {inode_size}")));
        }
        let desc_size = if is_64bit {
            let d = field16(0xFE)?;
            if !(MIN_DESC_SIZE_64BIT..=MAX_DESC_SIZE).contains(&d) || !d.is_power_of_two() {
                return Err(bad(format!("group descriptor size {d}")));
            }
            d
        } else {
            32
        };
        let ro_compat = field32(0x64)?;
        // s_log_cluster_size counts from 1 KiB like the block size; it
        // only differs from it with bigalloc.
        let cluster_size = if ro_compat & RO_COMPAT_BIGALLOC != 0 {
            let log = field32(0x1C)?;
            if log > MAX_LOG_BLOCK_SIZE + 16 {
                return Err(bad(format!("cluster size 1 KiB << {log} is too large")));
            }
            1024u64 << log
        } else {
            u64::from(block_size)
        };
        let free_blocks = wide(0x0C, 0x158)?;
        let reserved = wide(0x08, 0x154)?;
        let stats = FsStats {
            block_size,
            blocks: blocks_count,
            free_blocks,
            avail_blocks: free_blocks.saturating_sub(reserved),
            inodes: u64::from(inodes_count),
            free_inodes: u64::from(field32(0x10)?),
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
            filetype: incompat & INCOMPAT_FILETYPE != 0,
            huge_file: ro_compat & RO_COMPAT_HUGE_FILE != 0,
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
        put32(0x60, INCOMPAT_FILETYPE | INCOMPAT_64BIT);
        sb[0x38..0x3A].copy_from_slice(&MAGIC.to_le_bytes());
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
