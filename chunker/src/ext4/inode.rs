//! The 256-byte on-disk inode, with nanosecond timestamps and room for
//! in-inode xattrs.
//!
//! Offsets follow `struct ext4_inode` (kernel `fs/ext4/ext4.h`): the
//! 128-byte base, then `i_extra_isize` = 32 bytes of extra fields, then the
//! in-inode xattr area up to byte 256.

use super::bytes::{put_u16, put_u32};
use crate::tree::Timestamp;

/// Bytes per on-disk inode.
pub(crate) const INODE_SIZE: usize = 256;
/// Bytes of extra fields after the 128-byte base.
pub(crate) const EXTRA_ISIZE: u16 = 32;
/// Where the in-inode xattr area starts.
pub(crate) const INLINE_XATTR_OFFSET: usize = 128 + EXTRA_ISIZE as usize;
/// Size of the in-inode xattr area (magic, entries and values).
pub(crate) const INLINE_XATTR_SIZE: usize = INODE_SIZE - INLINE_XATTR_OFFSET;

/// `EXT4_EXTENTS_FL`: `i_block` holds an extent tree.
pub(crate) const EXTENTS_FL: u32 = 0x0008_0000;
/// `EXT4_HUGE_FILE_FL`: `i_blocks` counts filesystem blocks, not sectors.
const HUGE_FILE_FL: u32 = 0x0004_0000;

/// File type bits of `i_mode`.
pub(crate) mod mode {
    /// FIFO.
    pub const S_IFIFO: u16 = 0o010000;
    /// Character device.
    pub const S_IFCHR: u16 = 0o020000;
    /// Directory.
    pub const S_IFDIR: u16 = 0o040000;
    /// Block device.
    pub const S_IFBLK: u16 = 0o060000;
    /// Regular file.
    pub const S_IFREG: u16 = 0o100000;
    /// Symbolic link.
    pub const S_IFLNK: u16 = 0o120000;
    /// Socket.
    pub const S_IFSOCK: u16 = 0o140000;
}

/// The earliest second an ext4 timestamp can hold (signed 32-bit base).
pub(crate) const MIN_SECS: i64 = -(1 << 31);
/// The latest second: two epoch bits extend the base by 3 × 2^32.
pub(crate) const MAX_SECS: i64 = (1 << 34) - (1 << 31) - 1;

/// Encode a time as ext4 does (`ext4_encode_extra_time`): the low field is
/// the seconds truncated to 32 bits (read back as signed), the extra field
/// holds two epoch bits that extend the range past 2038, and the
/// nanoseconds shifted left by 2. Times outside ext4's range are clamped.
pub(crate) fn encode_time(t: Timestamp) -> (u32, u32) {
    let secs = t.secs.clamp(MIN_SECS, MAX_SECS);
    let nanos = t.nanos.min(999_999_999);
    let lo = secs as i32;
    let epoch = ((secs - i64::from(lo)) >> 32) as u32 & 3;
    (lo as u32, epoch | (nanos << 2))
}

/// Encode a device number into `i_block` as the kernel does: the old 8:8
/// form in word 0 when both numbers fit a byte, otherwise the new 12:20
/// form (`new_encode_dev`) in word 1. `None` when the numbers exceed 12:20
/// bits, which Linux cannot represent.
pub(crate) fn encode_device(major: u32, minor: u32) -> Option<[u8; 60]> {
    if major > 0xFFF || minor > 0xF_FFFF {
        return None;
    }
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        put_u32(&mut b, 0, (major << 8) | minor);
    } else {
        put_u32(
            &mut b,
            4,
            (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12),
        );
    }
    Some(b)
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
        let (time_lo, time_extra) = encode_time(self.time);
        put_u16(&mut b, 0x00, self.mode);
        put_u16(&mut b, 0x02, self.uid as u16);
        put_u32(&mut b, 0x04, self.size as u32);
        put_u32(&mut b, 0x08, time_lo); // i_atime
        put_u32(&mut b, 0x0C, time_lo); // i_ctime
        put_u32(&mut b, 0x10, time_lo); // i_mtime
        put_u16(&mut b, 0x18, self.gid as u16);
        put_u16(&mut b, 0x1A, self.links);
        // i_blocks is in 512-byte sectors, 48 bits with huge_file. Beyond
        // that (a file of 128 PiB, not reachable in practice) the count is
        // in filesystem blocks with HUGE_FILE_FL, rather than truncated.
        let sectors = self.fs_blocks * 8;
        let (count, flags) = if sectors >> 48 == 0 {
            (sectors, self.flags)
        } else {
            (self.fs_blocks, self.flags | HUGE_FILE_FL)
        };
        put_u32(&mut b, 0x1C, count as u32);
        put_u32(&mut b, 0x20, flags);
        b[0x28..0x64].copy_from_slice(&self.block);
        put_u32(&mut b, 0x68, self.xattr_block as u32); // i_file_acl_lo
        put_u32(&mut b, 0x6C, (self.size >> 32) as u32); // i_size_high
        put_u16(&mut b, 0x74, (count >> 32) as u16); // l_i_blocks_high
        put_u16(&mut b, 0x76, (self.xattr_block >> 32) as u16); // l_i_file_acl_high
        put_u16(&mut b, 0x78, (self.uid >> 16) as u16); // l_i_uid_high
        put_u16(&mut b, 0x7A, (self.gid >> 16) as u16); // l_i_gid_high
        put_u16(&mut b, 0x80, EXTRA_ISIZE);
        put_u32(&mut b, 0x84, time_extra); // i_ctime_extra
        put_u32(&mut b, 0x88, time_extra); // i_mtime_extra
        put_u32(&mut b, 0x8C, time_extra); // i_atime_extra
        put_u32(&mut b, 0x90, time_lo); // i_crtime
        put_u32(&mut b, 0x94, time_extra); // i_crtime_extra
        b[INLINE_XATTR_OFFSET..].copy_from_slice(&self.inline_xattrs);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_encoding_matches_kernel() {
        let t = |secs, nanos| encode_time(Timestamp { secs, nanos });
        assert_eq!(t(0, 0), (0, 0));
        assert_eq!(t(1, 5), (1, 5 << 2));
        // Negative times stay in epoch 0, read back as signed.
        assert_eq!(t(-1, 999_999_999), (u32::MAX, 999_999_999 << 2));
        // 2^31 s (2038): base wraps to i32::MIN, epoch 1.
        assert_eq!(t(1 << 31, 0), (0x8000_0000, 1));
        assert_eq!(t(i64::MAX, 0), t(MAX_SECS, 0));
        let (lo, extra) = t(MAX_SECS, 0);
        assert_eq!(
            i64::from(lo as i32) + (i64::from(extra & 3) << 32),
            MAX_SECS
        );
    }

    #[test]
    fn device_encoding() {
        let d = encode_device(8, 1).unwrap();
        assert_eq!(&d[0..4], &0x0801u32.to_le_bytes());
        let d = encode_device(300, 70000).unwrap();
        assert_eq!(&d[0..4], &[0; 4]);
        let want = (70000 & 0xFF) | (300 << 8) | ((70000 & !0xFF) << 12);
        assert_eq!(&d[4..8], &(want as u32).to_le_bytes());
        assert!(encode_device(4096, 0).is_none());
    }

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
