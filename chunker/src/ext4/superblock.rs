//! The superblock: the filesystem's geometry, features and free counts.
//!
//! Offsets follow `struct ext4_super_block` (kernel `fs/ext4/ext4.h`). Only
//! the fields we use are represented; everything else is zero. There are no
//! clock-derived fields: mount, write, check and mkfs times are all 0, so the
//! same input always gives the same bytes.

use super::bytes::{put_u16, put_u32};

/// Bytes of the superblock, which starts at byte 1024 of the image.
pub(crate) const SUPERBLOCK_SIZE: usize = 1024;
/// Byte offset of the superblock in the image.
pub(crate) const SUPERBLOCK_OFFSET: usize = 1024;

const EXT4_MAGIC: u16 = 0xEF53;

/// `COMPAT_EXT_ATTR`: extended attributes.
const COMPAT_EXT_ATTR: u32 = 0x0008;
/// `COMPAT_SPARSE_SUPER2`: backup superblocks only in the groups named by
/// `s_backup_bgs`; both are 0, so the only superblock is group 0's and
/// nothing fixed lands in the data region.
const COMPAT_SPARSE_SUPER2: u32 = 0x0200;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_EXTENTS: u32 = 0x0040;
/// `INCOMPAT_FLEX_BG`: bitmaps and inode tables may live anywhere, which
/// is what lets all metadata sit in its own region after the file data.
const INCOMPAT_FLEX_BG: u32 = 0x0200;
const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;

/// `EXT2_FLAGS_SIGNED_HASH`, what mke2fs sets on x86; only matters for
/// htree directories, which we do not write, but e2fsck expects one of the
/// two hash flags.
const FLAGS_SIGNED_HASH: u32 = 0x0001;
/// `DX_HASH_HALF_MD4`.
const DEF_HASH_HALF_MD4: u8 = 1;
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
    /// The 1024 on-disk bytes.
    pub(crate) fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        put_u32(&mut b, 0x00, self.inodes_count);
        put_u32(&mut b, 0x04, self.blocks_count);
        put_u32(&mut b, 0x08, 0); // s_r_blocks_count_lo: nothing reserved
        put_u32(&mut b, 0x0C, self.free_blocks);
        put_u32(&mut b, 0x10, self.free_inodes);
        put_u32(&mut b, 0x14, 0); // s_first_data_block: 0 for 4 KiB blocks
        put_u32(&mut b, 0x18, 2); // s_log_block_size: 1024 << 2
        put_u32(&mut b, 0x1C, 2); // s_log_cluster_size: no bigalloc
        put_u32(&mut b, 0x20, self.blocks_per_group);
        put_u32(&mut b, 0x24, self.blocks_per_group); // s_clusters_per_group
        put_u32(&mut b, 0x28, self.inodes_per_group);
        // s_mtime, s_wtime (0x2C, 0x30), s_mnt_count (0x34): 0.
        put_u16(&mut b, 0x36, 0xFFFF); // s_max_mnt_count: -1, no forced checks
        put_u16(&mut b, 0x38, EXT4_MAGIC);
        put_u16(&mut b, 0x3A, 1); // s_state: cleanly unmounted
        put_u16(&mut b, 0x3C, 1); // s_errors: continue
        // s_minor_rev_level, s_lastcheck, s_checkinterval, s_creator_os
        // (Linux = 0): 0.
        put_u32(&mut b, 0x4C, 1); // s_rev_level: dynamic inode sizes
        put_u32(&mut b, 0x54, self.first_ino);
        put_u16(&mut b, 0x58, self.inode_size);
        put_u16(&mut b, 0x5A, 0); // s_block_group_nr: this copy is group 0's
        put_u32(&mut b, 0x5C, COMPAT_EXT_ATTR | COMPAT_SPARSE_SUPER2);
        put_u32(
            &mut b,
            0x60,
            INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG,
        );
        put_u32(
            &mut b,
            0x64,
            RO_COMPAT_LARGE_FILE
                | RO_COMPAT_HUGE_FILE
                | RO_COMPAT_DIR_NLINK
                | RO_COMPAT_EXTRA_ISIZE,
        );
        b[0x68..0x78].copy_from_slice(&self.uuid);
        // s_volume_name, s_last_mounted, s_algorithm_usage_bitmap,
        // s_prealloc_*: 0. s_reserved_gdt_blocks (0xCE): 0, no resize inode.
        // Journal fields (0xD0..0xEC): 0, no journal.
        b[0xEC..0xFC].copy_from_slice(&self.hash_seed);
        b[0xFC] = DEF_HASH_HALF_MD4;
        // s_jnl_backup_type 0; s_desc_size (0xFE) 0: 32-byte descriptors.
        // s_default_mount_opts, s_first_meta_bg, s_mkfs_time, s_jnl_blocks,
        // the _hi counts: 0.
        put_u16(&mut b, 0x15C, self.extra_isize); // s_min_extra_isize
        put_u16(&mut b, 0x15E, self.extra_isize); // s_want_extra_isize
        put_u32(&mut b, 0x160, FLAGS_SIGNED_HASH);
        b[0x174] = LOG_GROUPS_PER_FLEX;
        // s_backup_bgs[2] (0x24C, 0x250): 0, 0 — no backup superblocks.
        put_u32(&mut b, 0x24C, 0);
        put_u32(&mut b, 0x250, 0);
        b
    }
}
