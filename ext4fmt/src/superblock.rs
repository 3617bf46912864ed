//! The superblock (`struct ext4_super_block`): 1024 bytes at byte 1024 of
//! the filesystem. Only the fields this project reads or writes are
//! represented; the others encode as zero.

use crate::bytes::{Fields, put16, put32};
use crate::error::Corrupt;

/// Byte offset of the superblock in the filesystem.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// `EXT4_SUPER_MAGIC`.
pub const MAGIC: u16 = 0xEF53;
/// The largest `s_log_block_size` (64 KiB blocks).
pub const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// `EXT4_MIN_DESC_SIZE_64BIT` and `EXT4_MAX_DESC_SIZE`.
pub const MIN_DESC_SIZE_64BIT: u16 = 64;
/// The largest group descriptor.
pub const MAX_DESC_SIZE: u16 = 1024;
/// Descriptor size without `64bit`.
pub const DESC_SIZE_32: u16 = 32;
/// `EXT2_FLAGS_SIGNED_HASH`.
pub const FLAGS_SIGNED_HASH: u32 = 0x0001;
/// `DX_HASH_HALF_MD4`.
pub const DEF_HASH_HALF_MD4: u8 = 1;
/// `s_rev_level` with dynamic inode sizes.
pub const DYNAMIC_REV: u32 = 1;
/// Revision 0's fixed inode size and first file inode.
pub const GOOD_OLD_INODE_SIZE: u16 = 128;
/// Revision 0's first inode for files.
pub const GOOD_OLD_FIRST_INO: u32 = 11;

/// `s_feature_compat` bits.
pub mod compat {
    /// Extended attributes.
    pub const EXT_ATTR: u32 = 0x0008;
    /// Backup superblocks only in the groups `s_backup_bgs` names.
    pub const SPARSE_SUPER2: u32 = 0x0200;
}

/// `s_feature_incompat` bits.
pub mod incompat {
    /// Directory entries carry the file type.
    pub const FILETYPE: u32 = 0x0002;
    /// Group descriptors spread over the block groups.
    pub const META_BG: u32 = 0x0010;
    /// Extent trees.
    pub const EXTENTS: u32 = 0x0040;
    /// 64-bit block numbers.
    pub const BIT64: u32 = 0x0080;
    /// Bitmaps and inode tables may live anywhere.
    pub const FLEX_BG: u32 = 0x0200;
}

/// `s_feature_ro_compat` bits.
pub mod ro_compat {
    /// Files over 2 GiB.
    pub const LARGE_FILE: u32 = 0x0002;
    /// 48-bit `i_blocks`, in filesystem blocks with `HUGE_FILE_FL`.
    pub const HUGE_FILE: u32 = 0x0008;
    /// More than 65000 subdirectories.
    pub const DIR_NLINK: u32 = 0x0020;
    /// `s_min_extra_isize` is honoured.
    pub const EXTRA_ISIZE: u32 = 0x0040;
    /// Allocation in clusters of blocks.
    pub const BIGALLOC: u32 = 0x0200;
}

/// Field offsets.
pub mod off {
    #![allow(missing_docs)]
    pub const INODES_COUNT: usize = 0x00;
    pub const BLOCKS_COUNT_LO: usize = 0x04;
    pub const R_BLOCKS_COUNT_LO: usize = 0x08;
    pub const FREE_BLOCKS_COUNT_LO: usize = 0x0C;
    pub const FREE_INODES_COUNT: usize = 0x10;
    pub const FIRST_DATA_BLOCK: usize = 0x14;
    pub const LOG_BLOCK_SIZE: usize = 0x18;
    pub const LOG_CLUSTER_SIZE: usize = 0x1C;
    pub const BLOCKS_PER_GROUP: usize = 0x20;
    pub const CLUSTERS_PER_GROUP: usize = 0x24;
    pub const INODES_PER_GROUP: usize = 0x28;
    pub const MAX_MNT_COUNT: usize = 0x36;
    pub const MAGIC: usize = 0x38;
    pub const STATE: usize = 0x3A;
    pub const ERRORS: usize = 0x3C;
    pub const REV_LEVEL: usize = 0x4C;
    pub const FIRST_INO: usize = 0x54;
    pub const INODE_SIZE: usize = 0x58;
    pub const BLOCK_GROUP_NR: usize = 0x5A;
    pub const FEATURE_COMPAT: usize = 0x5C;
    pub const FEATURE_INCOMPAT: usize = 0x60;
    pub const FEATURE_RO_COMPAT: usize = 0x64;
    pub const UUID: usize = 0x68;
    pub const HASH_SEED: usize = 0xEC;
    pub const DEF_HASH_VERSION: usize = 0xFC;
    pub const DESC_SIZE: usize = 0xFE;
    pub const BLOCKS_COUNT_HI: usize = 0x150;
    pub const R_BLOCKS_COUNT_HI: usize = 0x154;
    pub const FREE_BLOCKS_COUNT_HI: usize = 0x158;
    pub const MIN_EXTRA_ISIZE: usize = 0x15C;
    pub const WANT_EXTRA_ISIZE: usize = 0x15E;
    pub const FLAGS: usize = 0x160;
    pub const LOG_GROUPS_PER_FLEX: usize = 0x174;
    pub const BACKUP_BGS: usize = 0x24C;
}

/// The superblock's fields, as stored (revision-0 defaults and feature
/// checks are the reader's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    /// Inodes in the filesystem.
    pub inodes_count: u32,
    /// Blocks (the high half only with `64bit`).
    pub blocks_count: u64,
    /// Blocks reserved for root.
    pub r_blocks_count: u64,
    /// Free blocks.
    pub free_blocks_count: u64,
    /// Free inodes.
    pub free_inodes_count: u32,
    /// The block holding the superblock (1 with 1 KiB blocks, else 0).
    pub first_data_block: u32,
    /// Block size is 1024 << this.
    pub log_block_size: u32,
    /// Cluster size is 1024 << this (equal to the block's without bigalloc).
    pub log_cluster_size: u32,
    /// Blocks per group.
    pub blocks_per_group: u32,
    /// Clusters per group.
    pub clusters_per_group: u32,
    /// Inodes per group.
    pub inodes_per_group: u32,
    /// Mounts before a check (0xFFFF: never).
    pub max_mnt_count: u16,
    /// 1: cleanly unmounted.
    pub state: u16,
    /// What to do on errors (1: continue).
    pub errors: u16,
    /// 0: fixed 128-byte inodes; 1: dynamic.
    pub rev_level: u32,
    /// First inode for files (dynamic revision).
    pub first_ino: u32,
    /// Bytes per inode (dynamic revision).
    pub inode_size: u16,
    /// The group this copy sits in.
    pub block_group_nr: u16,
    /// [`compat`] bits.
    pub feature_compat: u32,
    /// [`incompat`] bits.
    pub feature_incompat: u32,
    /// [`ro_compat`] bits.
    pub feature_ro_compat: u32,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Seed for directory hashes.
    pub hash_seed: [u8; 16],
    /// Default directory hash.
    pub def_hash_version: u8,
    /// Bytes per group descriptor (with `64bit`).
    pub desc_size: u16,
    /// Extra inode bytes every inode has.
    pub min_extra_isize: u16,
    /// Extra inode bytes new inodes should have.
    pub want_extra_isize: u16,
    /// Miscellaneous flags ([`FLAGS_SIGNED_HASH`]).
    pub flags: u32,
    /// Groups per flex group is 2 to this.
    pub log_groups_per_flex: u8,
    /// The groups holding backups with `sparse_super2`.
    pub backup_bgs: [u32; 2],
}

impl Superblock {
    /// Whether the filesystem has 64-bit block numbers.
    pub fn is_64bit(&self) -> bool {
        self.feature_incompat & incompat::BIT64 != 0
    }

    /// The 1024 on-disk bytes.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        let wide = |b: &mut [u8], lo: usize, hi: usize, v: u64| {
            put32(b, lo, v as u32);
            put32(b, hi, (v >> 32) as u32);
        };
        put32(&mut b, off::INODES_COUNT, self.inodes_count);
        wide(
            &mut b,
            off::BLOCKS_COUNT_LO,
            off::BLOCKS_COUNT_HI,
            self.blocks_count,
        );
        wide(
            &mut b,
            off::R_BLOCKS_COUNT_LO,
            off::R_BLOCKS_COUNT_HI,
            self.r_blocks_count,
        );
        wide(
            &mut b,
            off::FREE_BLOCKS_COUNT_LO,
            off::FREE_BLOCKS_COUNT_HI,
            self.free_blocks_count,
        );
        put32(&mut b, off::FREE_INODES_COUNT, self.free_inodes_count);
        put32(&mut b, off::FIRST_DATA_BLOCK, self.first_data_block);
        put32(&mut b, off::LOG_BLOCK_SIZE, self.log_block_size);
        put32(&mut b, off::LOG_CLUSTER_SIZE, self.log_cluster_size);
        put32(&mut b, off::BLOCKS_PER_GROUP, self.blocks_per_group);
        put32(&mut b, off::CLUSTERS_PER_GROUP, self.clusters_per_group);
        put32(&mut b, off::INODES_PER_GROUP, self.inodes_per_group);
        put16(&mut b, off::MAX_MNT_COUNT, self.max_mnt_count);
        put16(&mut b, off::MAGIC, MAGIC);
        put16(&mut b, off::STATE, self.state);
        put16(&mut b, off::ERRORS, self.errors);
        put32(&mut b, off::REV_LEVEL, self.rev_level);
        put32(&mut b, off::FIRST_INO, self.first_ino);
        put16(&mut b, off::INODE_SIZE, self.inode_size);
        put16(&mut b, off::BLOCK_GROUP_NR, self.block_group_nr);
        put32(&mut b, off::FEATURE_COMPAT, self.feature_compat);
        put32(&mut b, off::FEATURE_INCOMPAT, self.feature_incompat);
        put32(&mut b, off::FEATURE_RO_COMPAT, self.feature_ro_compat);
        b[off::UUID..off::UUID + 16].copy_from_slice(&self.uuid);
        b[off::HASH_SEED..off::HASH_SEED + 16].copy_from_slice(&self.hash_seed);
        b[off::DEF_HASH_VERSION] = self.def_hash_version;
        put16(&mut b, off::DESC_SIZE, self.desc_size);
        put16(&mut b, off::MIN_EXTRA_ISIZE, self.min_extra_isize);
        put16(&mut b, off::WANT_EXTRA_ISIZE, self.want_extra_isize);
        put32(&mut b, off::FLAGS, self.flags);
        b[off::LOG_GROUPS_PER_FLEX] = self.log_groups_per_flex;
        put32(&mut b, off::BACKUP_BGS, self.backup_bgs[0]);
        put32(&mut b, off::BACKUP_BGS + 4, self.backup_bgs[1]);
        b
    }

    /// Decodes the 1024 bytes at offset 1024; checks the magic. The high
    /// halves of the block counts are read only with `64bit`, as Linux
    /// reads them.
    pub fn decode(b: &[u8]) -> Result<Superblock, Corrupt> {
        let f = Fields::new(b, "superblock");
        let magic = f.u16(off::MAGIC)?;
        if magic != MAGIC {
            return Err(Corrupt::Magic {
                what: "superblock",
                found: u32::from(magic),
                want: u32::from(MAGIC),
            });
        }
        let feature_incompat = f.u32(off::FEATURE_INCOMPAT)?;
        let is_64bit = feature_incompat & incompat::BIT64 != 0;
        let wide = |lo: usize, hi: usize| -> Result<u64, Corrupt> {
            let high = if is_64bit { f.u32(hi)? } else { 0 };
            Ok(u64::from(f.u32(lo)?) | u64::from(high) << 32)
        };
        Ok(Superblock {
            inodes_count: f.u32(off::INODES_COUNT)?,
            blocks_count: wide(off::BLOCKS_COUNT_LO, off::BLOCKS_COUNT_HI)?,
            r_blocks_count: wide(off::R_BLOCKS_COUNT_LO, off::R_BLOCKS_COUNT_HI)?,
            free_blocks_count: wide(off::FREE_BLOCKS_COUNT_LO, off::FREE_BLOCKS_COUNT_HI)?,
            free_inodes_count: f.u32(off::FREE_INODES_COUNT)?,
            first_data_block: f.u32(off::FIRST_DATA_BLOCK)?,
            log_block_size: f.u32(off::LOG_BLOCK_SIZE)?,
            log_cluster_size: f.u32(off::LOG_CLUSTER_SIZE)?,
            blocks_per_group: f.u32(off::BLOCKS_PER_GROUP)?,
            clusters_per_group: f.u32(off::CLUSTERS_PER_GROUP)?,
            inodes_per_group: f.u32(off::INODES_PER_GROUP)?,
            max_mnt_count: f.u16(off::MAX_MNT_COUNT)?,
            state: f.u16(off::STATE)?,
            errors: f.u16(off::ERRORS)?,
            rev_level: f.u32(off::REV_LEVEL)?,
            first_ino: f.u32(off::FIRST_INO)?,
            inode_size: f.u16(off::INODE_SIZE)?,
            block_group_nr: f.u16(off::BLOCK_GROUP_NR)?,
            feature_compat: f.u32(off::FEATURE_COMPAT)?,
            feature_incompat,
            feature_ro_compat: f.u32(off::FEATURE_RO_COMPAT)?,
            uuid: f.array(off::UUID)?,
            hash_seed: f.array(off::HASH_SEED)?,
            def_hash_version: f.u8(off::DEF_HASH_VERSION)?,
            desc_size: f.u16(off::DESC_SIZE)?,
            min_extra_isize: f.u16(off::MIN_EXTRA_ISIZE)?,
            want_extra_isize: f.u16(off::WANT_EXTRA_ISIZE)?,
            flags: f.u32(off::FLAGS)?,
            log_groups_per_flex: f.u8(off::LOG_GROUPS_PER_FLEX)?,
            backup_bgs: [f.u32(off::BACKUP_BGS)?, f.u32(off::BACKUP_BGS + 4)?],
        })
    }
}
