//! The 256-byte on-disk inode, with nanosecond timestamps and room for
//! in-inode xattrs.
//!
//! Encoded through [`ext4fmt::inode`]: the 128-byte base, then
//! `i_extra_isize` = 32 bytes of extra fields, then the in-inode xattr
//! area up to byte 256.

use crate::tree::Timestamp;

/// Bytes per on-disk inode.
pub(crate) const INODE_SIZE: usize = 256;
/// Bytes of extra fields after the 128-byte base.
pub(crate) const EXTRA_ISIZE: u16 = 32;
/// Where the in-inode xattr area starts.
pub(crate) const INLINE_XATTR_OFFSET: usize = 128 + EXTRA_ISIZE as usize;
/// Size of the in-inode xattr area (magic, entries and values).
pub(crate) const INLINE_XATTR_SIZE: usize = INODE_SIZE - INLINE_XATTR_OFFSET;

pub(crate) use ext4fmt::inode::flags::EXTENTS as EXTENTS_FL;
use ext4fmt::inode::flags::HUGE_FILE as HUGE_FILE_FL;
/// File type bits of `i_mode`.
pub(crate) use ext4fmt::inode::mode;
/// Encode a device number into `i_block` as the kernel does
/// ([`ext4fmt::device::encode`]); `None` when Linux cannot represent it.
pub(crate) fn encode_device(major: u32, minor: u32) -> Option<[u8; 60]> {
    ext4fmt::device::encode(major, minor)
}

/// One inode's on-disk fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiskInode {
    /// Type and permission bits.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// atime, ctime, mtime and crtime alike.
    pub time: Timestamp,
    /// Hard link count.
    pub links: u16,
    /// Blocks charged to the inode (data, extent tree, xattr block).
    pub fs_blocks: u64,
    /// `i_flags`.
    pub flags: u32,
    /// The 60-byte `i_block`: extent root, fast symlink target or device.
    pub block: [u8; 60],
    /// The external xattr block, or 0.
    pub xattr_block: u64,
    /// The in-inode xattr area (all zero when there are none).
    pub inline_xattrs: [u8; INLINE_XATTR_SIZE],
}

impl DiskInode {
    /// The 256 on-disk bytes.
    pub(crate) fn encode(&self) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        let time = ext4fmt::Timestamp {
            secs: self.time.secs,
            nsecs: self.time.nanos,
        };
        // i_blocks is in 512-byte sectors, 48 bits with huge_file. Beyond
        // that (a file of 128 PiB, not reachable in practice) the count is
        // in filesystem blocks with HUGE_FILE_FL, rather than truncated.
        let sectors = self.fs_blocks * 8;
        let (blocks, flags) = if sectors >> 48 == 0 {
            (sectors, self.flags)
        } else {
            (self.fs_blocks, self.flags | HUGE_FILE_FL)
        };
        ext4fmt::inode::DiskInode {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: time,
            ctime: time,
            mtime: time,
            crtime: Some(time),
            links: self.links,
            blocks,
            flags,
            block: self.block,
            generation: 0,
            file_acl: self.xattr_block,
            extra_isize: EXTRA_ISIZE,
        }
        .encode(&mut b);
        b[INLINE_XATTR_OFFSET..].copy_from_slice(&self.inline_xattrs);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets() {
        let ino = DiskInode {
            mode: mode::S_IFREG | 0o644,
            uid: 0x0001_0002,
            gid: 0x0003_0004,
            size: 0x1_0000_0005,
            time: Timestamp { secs: 7, nanos: 3 },
            links: 2,
            fs_blocks: 3,
            flags: EXTENTS_FL,
            block: [0; 60],
            xattr_block: 9,
            inline_xattrs: [0; INLINE_XATTR_SIZE],
        };
        let b = ino.encode();
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0o100644);
        assert_eq!(b[2], 2);
        assert_eq!(b[0x78], 1);
        assert_eq!(b[0x18], 4);
        assert_eq!(b[0x7A], 3);
        assert_eq!(b[4], 5);
        assert_eq!(b[0x6C], 1);
        assert_eq!(b[0x1C], 24);
        assert_eq!(b[0x68], 9);
        assert_eq!(b[0x10], 7);
        assert_eq!(b[0x88], 12);
        assert_eq!(b[0x80], 32);
    }
}
