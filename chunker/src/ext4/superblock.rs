//! The superblock: the filesystem's geometry, features and free counts,
//! encoded through [`ext4fmt::superblock`]. There are no clock-derived
//! fields: mount, write, check and mkfs times are all 0, so the same input
//! always gives the same bytes.

use ext4fmt::superblock::{
    self as fmt, DEF_HASH_HALF_MD4, DYNAMIC_REV, FLAGS_SIGNED_HASH, compat, incompat, ro_compat,
};

pub(crate) use ext4fmt::superblock::SUPERBLOCK_SIZE;
/// Byte offset of the superblock in the image.
pub(crate) const SUPERBLOCK_OFFSET: usize = fmt::SUPERBLOCK_OFFSET as usize;

/// `COMPAT_SPARSE_SUPER2` with `s_backup_bgs` both 0: the only superblock
/// is group 0's and nothing fixed lands in the data region. `FLEX_BG`:
/// bitmaps and inode tables may live anywhere, which is what lets all
/// metadata sit in its own region after the file data.
const COMPAT: u32 = compat::EXT_ATTR | compat::SPARSE_SUPER2;
const INCOMPAT: u32 = incompat::FILETYPE | incompat::EXTENTS | incompat::FLEX_BG;
const RO_COMPAT: u32 =
    ro_compat::LARGE_FILE | ro_compat::HUGE_FILE | ro_compat::DIR_NLINK | ro_compat::EXTRA_ISIZE;
/// 2^4 = 16 groups per flex group, as mke2fs uses.
const LOG_GROUPS_PER_FLEX: u8 = 4;

/// The superblock fields that vary between images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Superblock {
    /// Total inodes (groups × inodes per group).
    pub inodes_count: u32,
    /// Total blocks.
    pub blocks_count: u32,
    /// Free blocks, matching the sum over the group descriptors.
    pub free_blocks: u32,
    /// Free inodes, matching the sum over the group descriptors.
    pub free_inodes: u32,
    /// Blocks per group.
    pub blocks_per_group: u32,
    /// Inodes per group.
    pub inodes_per_group: u32,
    /// First non-reserved inode.
    pub first_ino: u32,
    /// Inode size in bytes.
    pub inode_size: u16,
    /// Extra inode bytes beyond the 128-byte base that every inode has.
    pub extra_isize: u16,
    /// Filesystem UUID, derived from the image content.
    pub uuid: [u8; 16],
    /// Seed for directory hashes, derived from the image content.
    pub hash_seed: [u8; 16],
}

impl Superblock {
    /// The 1024 on-disk bytes. Signed directory hashes (`FLAGS_SIGNED_HASH`,
    /// what mke2fs sets on x86) only matter for htree directories, which
    /// we do not write, but e2fsck expects one of the two hash flags.
    pub(crate) fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        fmt::Superblock {
            inodes_count: self.inodes_count,
            blocks_count: u64::from(self.blocks_count),
            // Nothing reserved: the free space is the configured headroom.
            r_blocks_count: 0,
            free_blocks_count: u64::from(self.free_blocks),
            free_inodes_count: self.free_inodes,
            // 4 KiB blocks: the superblock is in block 0.
            first_data_block: 0,
            log_block_size: 2,
            log_cluster_size: 2,
            blocks_per_group: self.blocks_per_group,
            clusters_per_group: self.blocks_per_group,
            inodes_per_group: self.inodes_per_group,
            // -1: no forced checks; cleanly unmounted; continue on errors.
            max_mnt_count: 0xFFFF,
            state: 1,
            errors: 1,
            rev_level: DYNAMIC_REV,
            first_ino: self.first_ino,
            inode_size: self.inode_size,
            block_group_nr: 0,
            feature_compat: COMPAT,
            feature_incompat: INCOMPAT,
            feature_ro_compat: RO_COMPAT,
            uuid: self.uuid,
            hash_seed: self.hash_seed,
            def_hash_version: DEF_HASH_HALF_MD4,
            // 32-byte descriptors (no 64bit); no journal, no resize inode.
            desc_size: 0,
            min_extra_isize: self.extra_isize,
            want_extra_isize: self.extra_isize,
            flags: FLAGS_SIGNED_HASH,
            log_groups_per_flex: LOG_GROUPS_PER_FLEX,
            backup_bgs: [0, 0],
        }
        .encode()
    }
}
