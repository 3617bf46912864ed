//! Block groups: the 32-byte group descriptors and the two bitmaps of each
//! group.
//!
//! Descriptors are encoded through [`ext4fmt::group`] in the 32-byte
//! form (no 64bit feature). No checksums and no `bg_flags`: we set neither
//! `metadata_csum` nor `uninit_bg`, so every bitmap and inode table is
//! written out in full.

use super::BLOCK_SIZE;

/// Bytes per group descriptor (no 64bit feature).
pub(crate) const DESC_SIZE: usize = ext4fmt::superblock::DESC_SIZE_32 as usize;

/// One group descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupDesc {
    /// Block holding this group's block bitmap.
    pub block_bitmap: u32,
    /// Block holding this group's inode bitmap.
    pub inode_bitmap: u32,
    /// First block of this group's inode table.
    pub inode_table: u32,
    /// Free blocks in the group.
    pub free_blocks: u16,
    /// Free inodes in the group.
    pub free_inodes: u16,
    /// Directories among the group's inodes.
    pub used_dirs: u16,
}

impl GroupDesc {
    /// The 32 on-disk bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        ext4fmt::group::GroupDesc {
            block_bitmap: u64::from(self.block_bitmap),
            inode_bitmap: u64::from(self.inode_bitmap),
            inode_table: u64::from(self.inode_table),
            free_blocks: u32::from(self.free_blocks),
            free_inodes: u32::from(self.free_inodes),
            used_dirs: u32::from(self.used_dirs),
        }
        .encode(DESC_SIZE)
    }
}

/// A one-block bitmap; bit `i` is bit `i % 8` of byte `i / 8`.
#[derive(Clone)]
pub(crate) struct Bitmap {
    bytes: Vec<u8>,
}

impl Bitmap {
    /// An all-clear bitmap of one block.
    pub(crate) fn new() -> Self {
        Bitmap {
            bytes: vec![0; BLOCK_SIZE as usize],
        }
    }

    /// Set bits `start..end`.
    pub(crate) fn set_range(&mut self, start: usize, end: usize) {
        let mut i = start;
        // Bit by bit up to a byte boundary, then whole bytes.
        while i < end && !i.is_multiple_of(8) {
            self.bytes[i / 8] |= 1 << (i % 8);
            i += 1;
        }
        while i + 8 <= end {
            self.bytes[i / 8] = 0xFF;
            i += 8;
        }
        while i < end {
            self.bytes[i / 8] |= 1 << (i % 8);
            i += 1;
        }
    }

    /// Number of clear bits among the first `n`.
    pub(crate) fn count_clear(&self, n: usize) -> usize {
        let full = n / 8;
        let mut set: usize = self.bytes[..full]
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum();
        for i in full * 8..n {
            set += usize::from(self.bytes[i / 8] >> (i % 8) & 1);
        }
        n - set
    }

    /// The block's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_range_and_count() {
        let mut b = Bitmap::new();
        b.set_range(3, 21);
        assert_eq!(b.as_bytes()[0], 0b1111_1000);
        assert_eq!(b.as_bytes()[1], 0xFF);
        assert_eq!(b.as_bytes()[2], 0b0001_1111);
        assert_eq!(b.count_clear(32), 32 - 18);
        assert_eq!(b.count_clear(5), 3);
        b.set_range(0, 32768);
        assert_eq!(b.count_clear(32768), 0);
    }

    #[test]
    fn descriptor_offsets() {
        let d = GroupDesc {
            block_bitmap: 0x0102_0304,
            inode_bitmap: 5,
            inode_table: 6,
            free_blocks: 7,
            free_inodes: 8,
            used_dirs: 9,
        };
        let b = d.encode();
        assert_eq!(&b[0..4], &[4, 3, 2, 1]);
        assert_eq!(b[4], 5);
        assert_eq!(b[8], 6);
        assert_eq!(b[0x0C], 7);
        assert_eq!(b[0x0E], 8);
        assert_eq!(b[0x10], 9);
    }
}
