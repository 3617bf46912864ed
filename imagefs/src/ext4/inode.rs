//! One on-disk inode, decoded as Linux's `__ext4_iget` decodes it: type
//! and permissions, owner (both halves), the four times with their
//! nanoseconds and epoch bits, size, allocated blocks, link count, flags,
//! device number, xattr block and the in-inode xattr area.
//!
//! Layout (`struct ext4_inode`): mode 0x00, uid 0x02, size_lo 0x04, atime
//! 0x08, ctime 0x0C, mtime 0x10, gid 0x18, links 0x1A, blocks_lo 0x1C,
//! flags 0x20, i_block 0x28..0x64, file_acl_lo 0x68, size_high 0x6C,
//! blocks_high 0x74, file_acl_high 0x76, uid_high 0x78, gid_high 0x7A;
//! with inodes larger than 128 bytes, i_extra_isize at 0x80, then the
//! extra fields (ctime/mtime/atime_extra 0x84/0x88/0x8C, crtime 0x90,
//! crtime_extra 0x94), then the in-inode xattr area up to the inode's end.

use super::MetaError;
use super::superblock::Geometry;
use ext4fmt::device;
use ext4fmt::inode::DiskInode;
pub use ext4fmt::inode::{FileType, ROOT_INO};
pub use ext4fmt::time::Timestamp;

/// `EXT4_EXTENTS_FL`: `i_block` holds an extent tree.
pub(crate) use ext4fmt::inode::flags::EXTENTS as EXTENTS_FL;
/// `EXT4_INLINE_DATA_FL`: the data lives in `i_block` and an xattr.
pub(crate) use ext4fmt::inode::flags::INLINE_DATA as INLINE_DATA_FL;

/// A decoded inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Its number.
    pub ino: u32,
    /// `i_mode`: type and permission bits.
    pub mode: u16,
    /// Owner (`i_uid` and `l_i_uid_high`).
    pub uid: u32,
    /// Group (`i_gid` and `l_i_gid_high`).
    pub gid: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last inode change.
    pub ctime: Timestamp,
    /// Creation; `None` when the inode has no room for it (as `statx`
    /// then reports no birth time).
    pub crtime: Option<Timestamp>,
    /// `i_links_count`: the number of names (for directories, 2 plus
    /// subdirectories, or 1 once that passes 65000, as ext4 keeps it).
    pub links: u16,
    /// `i_flags`.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Allocated space in 512-byte units (`st_blocks`).
    pub blocks: u64,
    /// The block holding the rest of the xattrs, 0 when none.
    pub xattr_block: u64,
    /// The fields as stored.
    disk: DiskInode,
    /// The in-inode xattr area, from its magic to the inode's end; `None`
    /// when the inode has no room for one or it does not start with the
    /// magic.
    pub(crate) ibody: Option<Vec<u8>>,
}

impl Inode {
    /// Decodes inode `ino` from its `geom.inode_size` bytes.
    pub(crate) fn decode(geom: &Geometry, ino: u32, raw: &[u8]) -> Result<Inode, MetaError> {
        let bad = |why: String| MetaError::Corrupt(format!("inode {ino}: {why}"));
        let size = usize::from(geom.inode_size);
        if raw.len() != size {
            return Err(bad(format!("{} bytes, not {size}", raw.len())));
        }
        let disk = DiskInode::decode(raw, geom.is_64bit)
            .map_err(MetaError::format(|| format!("inode {ino}")))?;
        if disk.links == 0 {
            // Referenced by a directory entry yet free: the kernel calls
            // this a deleted inode and refuses it too.
            return Err(bad("link count 0 (a free inode)".into()));
        }
        if disk.file_acl >= geom.blocks_count {
            return Err(bad(format!(
                "xattr block {} is past the {} blocks",
                disk.file_acl, geom.blocks_count
            )));
        }
        Ok(Inode {
            ino,
            mode: disk.mode,
            uid: disk.uid,
            gid: disk.gid,
            atime: disk.atime,
            mtime: disk.mtime,
            ctime: disk.ctime,
            crtime: disk.crtime,
            links: disk.links,
            flags: disk.flags,
            size: disk.size,
            blocks: disk.st_blocks(geom.huge_file, geom.block_size),
            xattr_block: disk.file_acl,
            ibody: disk.xattr_area(raw).map(<[u8]>::to_vec),
            disk,
        })
    }

    /// The file type; `None` when the mode's type bits name none.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.mode)
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == Some(FileType::Directory)
    }

    /// The directory-entry type code (`EXT4_FT_*`) of this inode's mode;
    /// 0 for an unknown type.
    pub fn dirent_type(&self) -> u8 {
        self.file_type().map_or(0, FileType::dirent_type)
    }

    /// The device number of a character or block device, as Linux's
    /// `new_encode_dev` packs it (what FUSE's `rdev` carries); 0 for
    /// other files. ext4 keeps small numbers in the old 16-bit form in
    /// `i_block[0]` and the others in the new form in `i_block[1]`.
    pub fn rdev(&self) -> u32 {
        match self.file_type() {
            Some(FileType::CharDevice | FileType::BlockDevice) => device::decode(&self.disk.block),
            _ => 0,
        }
    }

    /// `ext4_inode_is_fast_symlink`: a symlink whose target sits in
    /// `i_block`. `cluster_size` is the filesystem's cluster size in bytes.
    pub(crate) fn is_fast_symlink(&self, cluster_size: u64) -> bool {
        self.disk.is_fast_symlink(self.blocks, cluster_size)
    }

    /// The target of a fast symlink, checked as `__ext4_iget` checks it.
    pub(crate) fn fast_symlink_target(&self) -> Result<Vec<u8>, MetaError> {
        self.disk
            .fast_symlink_target()
            .map(<[u8]>::to_vec)
            .map_err(MetaError::format(|| format!("inode {}", self.ino)))
    }

    /// `i_block`: extent tree root, block map, symlink target or device.
    pub(crate) fn i_block(&self) -> &[u8; 60] {
        &self.disk.block
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ext4::superblock::tests::sample;
    use ext4fmt::xattr::MAGIC as XATTR_MAGIC;

    /// A 256-byte regular file inode with one link.
    pub(crate) fn raw(mode: u16) -> Vec<u8> {
        let mut b = vec![0u8; 256];
        b[0..2].copy_from_slice(&mode.to_le_bytes());
        b[0x1A] = 1;
        b[0x80] = 32;
        b
    }

    fn geom() -> Geometry {
        Geometry::decode(&sample()).unwrap()
    }

    #[test]
    fn fields_and_ibody() {
        let mut b = raw(0o100644);
        b[0x04] = 5;
        b[0x6C] = 1;
        b[0x68..0x6C].copy_from_slice(&7u32.to_le_bytes());
        b[160..164].copy_from_slice(&XATTR_MAGIC.to_le_bytes());
        let i = Inode::decode(&geom(), 12, &b).unwrap();
        assert_eq!(i.size, (1 << 32) + 5);
        assert_eq!(i.xattr_block, 7);
        assert_eq!(i.ibody.as_ref().map(Vec::len), Some(96));
        assert!(!i.is_dir());
        assert_eq!(i.dirent_type(), 1);
        assert_eq!(i.rdev(), 0);
        // No magic: no in-inode area.
        b[163] = 0;
        assert_eq!(Inode::decode(&geom(), 12, &b).unwrap().ibody, None);
    }

    #[test]
    fn device_numbers_old_and_new() {
        let mut b = raw(0o020666);
        // Old form: major 1, minor 3.
        b[0x28..0x2C].copy_from_slice(&0x0103u32.to_le_bytes());
        assert_eq!(Inode::decode(&geom(), 12, &b).unwrap().rdev(), 0x0103);
        // New form (major 300, minor 70000) in i_block[1].
        let new = (70000 & 0xFF) | (300 << 8) | ((70000 & !0xFF) << 12);
        b[0x28..0x2C].copy_from_slice(&[0; 4]);
        b[0x2C..0x30].copy_from_slice(&(new as u32).to_le_bytes());
        assert_eq!(Inode::decode(&geom(), 12, &b).unwrap().rdev(), new as u32);
    }

    #[test]
    fn corrupt_inodes_are_errors() {
        let g = geom();
        let mut b = raw(0o100644);
        b[0x80] = 30;
        assert!(
            Inode::decode(&g, 9, &b)
                .unwrap_err()
                .to_string()
                .contains("inode 9")
        );
        b[0x80] = 132;
        assert!(Inode::decode(&g, 9, &b).is_err());
        let mut b = raw(0o100644);
        b[0x1A] = 0;
        assert!(
            Inode::decode(&g, 9, &b)
                .unwrap_err()
                .to_string()
                .contains("link count 0")
        );
        let mut b = raw(0o100644);
        b[0x76] = 1; // xattr block beyond the 65536 blocks
        assert!(
            Inode::decode(&g, 9, &b)
                .unwrap_err()
                .to_string()
                .contains("xattr block")
        );
        assert!(Inode::decode(&g, 9, &raw(0o100644)[..200]).is_err());
    }

    #[test]
    fn owner_halves_and_times_with_extra_fields() {
        let mut b = raw(0o100644);
        b[0x02..0x04].copy_from_slice(&0x1234u16.to_le_bytes());
        b[0x78..0x7A].copy_from_slice(&0x0005u16.to_le_bytes());
        b[0x18..0x1A].copy_from_slice(&0x4321u16.to_le_bytes());
        b[0x7A..0x7C].copy_from_slice(&0x0006u16.to_le_bytes());
        let put =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(&mut b, 0x08, 100); // atime
        put(&mut b, 0x8C, 7 << 2);
        put(&mut b, 0x0C, (-5i32) as u32); // ctime before 1970
        put(&mut b, 0x84, 1 << 2);
        put(&mut b, 0x10, 0x8000_0000); // mtime: base -2^31, epoch 1
        put(&mut b, 0x88, 1 | (999_999_999 << 2));
        put(&mut b, 0x90, 42); // crtime
        put(&mut b, 0x94, 3 | (5 << 2));
        let i = Inode::decode(&geom(), 12, &b).unwrap();
        assert_eq!((i.uid, i.gid), (0x0005_1234, 0x0006_4321));
        assert_eq!(
            i.atime,
            Timestamp {
                secs: 100,
                nsecs: 7
            }
        );
        assert_eq!(i.ctime, Timestamp { secs: -5, nsecs: 1 });
        assert_eq!(
            i.mtime,
            Timestamp {
                secs: (1 << 31),
                nsecs: 999_999_999
            }
        );
        assert_eq!(
            i.crtime,
            Some(Timestamp {
                secs: 42 + (3 << 32),
                nsecs: 5
            })
        );
        // i_extra_isize 4: only the checksum's high half fits, so no
        // extra time fields and no crtime.
        b[0x80] = 4;
        let i = Inode::decode(&geom(), 12, &b).unwrap();
        assert_eq!(
            i.mtime,
            Timestamp {
                secs: -(1 << 31),
                nsecs: 0
            }
        );
        assert_eq!(i.crtime, None);
        // i_extra_isize 20: ctime/mtime/atime_extra and crtime, not
        // crtime_extra.
        b[0x80] = 20;
        let i = Inode::decode(&geom(), 12, &b).unwrap();
        assert_eq!(
            i.atime,
            Timestamp {
                secs: 100,
                nsecs: 7
            }
        );
        assert_eq!(i.crtime, Some(Timestamp { secs: 42, nsecs: 0 }));
        // i_extra_isize 0: the kernel reads all extra fields anyway.
        b[0x80] = 0;
        b[160..164].copy_from_slice(&XATTR_MAGIC.to_le_bytes());
        let i = Inode::decode(&geom(), 12, &b).unwrap();
        assert_eq!(i.crtime.map(|t| t.nsecs), Some(5));
        assert_eq!(i.ibody, None);
        // A 128-byte inode has no extra fields at all.
        let small = Geometry {
            inode_size: 128,
            ..geom()
        };
        let i = Inode::decode(&small, 12, &b[..128]).unwrap();
        assert_eq!(
            i.atime,
            Timestamp {
                secs: 100,
                nsecs: 0
            }
        );
        assert_eq!(i.crtime, None);
        assert_eq!(i.ibody, None);
    }

    #[test]
    fn allocated_blocks_with_and_without_huge_file() {
        let mut b = raw(0o100644);
        b[0x1C..0x20].copy_from_slice(&16u32.to_le_bytes());
        b[0x74..0x76].copy_from_slice(&1u16.to_le_bytes());
        let plain = Geometry {
            huge_file: false,
            ..geom()
        };
        assert_eq!(Inode::decode(&plain, 12, &b).unwrap().blocks, 16);
        let huge = Geometry {
            huge_file: true,
            ..geom()
        };
        assert_eq!(Inode::decode(&huge, 12, &b).unwrap().blocks, (1 << 32) + 16);
        // HUGE_FILE_FL: counted in 4 KiB blocks.
        b[0x22] = 0x04;
        assert_eq!(
            Inode::decode(&huge, 12, &b).unwrap().blocks,
            ((1 << 32) + 16) * 8
        );
    }

    #[test]
    fn fast_symlinks_as_the_kernel_decides() {
        let mut b = raw(0o120777);
        b[0x04] = 3;
        b[0x28..0x2B].copy_from_slice(b"abc");
        let i = Inode::decode(&geom(), 12, &b).unwrap();
        assert!(i.is_fast_symlink(4096));
        assert_eq!(i.fast_symlink_target().unwrap(), b"abc");
        // With an xattr block its cluster is charged, and still fast.
        b[0x68] = 9;
        b[0x1C] = 8;
        assert!(
            Inode::decode(&geom(), 12, &b)
                .unwrap()
                .is_fast_symlink(4096)
        );
        // Any other block makes it slow.
        b[0x1C] = 16;
        assert!(
            !Inode::decode(&geom(), 12, &b)
                .unwrap()
                .is_fast_symlink(4096)
        );
        // A NUL inside the target, or none after it, is corrupt.
        b[0x1C] = 0;
        b[0x68] = 0;
        b[0x29] = 0;
        assert!(
            Inode::decode(&geom(), 12, &b)
                .unwrap()
                .fast_symlink_target()
                .is_err()
        );
        b[0x29] = b'b';
        b[0x2B] = b'd';
        assert!(
            Inode::decode(&geom(), 12, &b)
                .unwrap()
                .fast_symlink_target()
                .is_err()
        );
        assert!(
            !Inode::decode(&geom(), 12, &raw(0o100644))
                .unwrap()
                .is_fast_symlink(4096)
        );
    }
}
