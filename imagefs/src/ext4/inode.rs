//! One on-disk inode, decoded: the fields ext4-view does not expose
//! (link count, device number, xattr block, in-inode xattr area) and the
//! ones needed to read a directory (mode, flags, size, `i_block`).
//!
//! Layout (`struct ext4_inode`): mode 0x00, size_lo 0x04, links 0x1A,
//! flags 0x20, i_block 0x28..0x64, file_acl_lo 0x68, size_high 0x6C,
//! file_acl_high 0x76; with inodes larger than 128 bytes, i_extra_isize at
//! 0x80, then the extra fields, then the in-inode xattr area up to the
//! inode's end.

use super::MetaError;
use super::bytes::{le16, le32, slice};
use super::superblock::Geometry;
use super::xattr::XATTR_MAGIC;

/// The root directory's inode number.
pub const ROOT_INO: u32 = 2;

/// The size of the base inode, before the extra fields.
const GOOD_OLD_INODE_SIZE: usize = 128;
/// `EXT4_EXTENTS_FL`: `i_block` holds an extent tree.
pub(crate) const EXTENTS_FL: u32 = 0x0008_0000;
/// `EXT4_INLINE_DATA_FL`: the data lives in `i_block` and an xattr.
pub(crate) const INLINE_DATA_FL: u32 = 0x1000_0000;

/// The file type bits of `i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const S_IFCHR: u16 = 0o020000;
const S_IFBLK: u16 = 0o060000;

/// A decoded inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Its number.
    pub ino: u32,
    /// `i_mode`: type and permission bits.
    pub mode: u16,
    /// `i_links_count`: the number of names (for directories, 2 plus
    /// subdirectories, or 1 once that passes 65000, as ext4 keeps it).
    pub links: u16,
    /// `i_flags`.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// The block holding the rest of the xattrs, 0 when none.
    pub xattr_block: u64,
    /// `i_block`: extent tree root, block map, symlink target or device.
    pub(crate) i_block: [u8; 60],
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
        let short = || bad("shorter than its fields".into());
        let f16 = |at| le16(raw, at).ok_or_else(short);
        let f32 = |at| le32(raw, at).ok_or_else(short);
        let mode = f16(0x00)?;
        let links = f16(0x1A)?;
        if links == 0 {
            // Referenced by a directory entry yet free: the kernel calls
            // this a deleted inode and refuses it too.
            return Err(bad("link count 0 (a free inode)".into()));
        }
        let i_block: [u8; 60] = slice(raw, 0x28, 60)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(short)?;
        let acl_hi = if geom.is_64bit { f16(0x76)? } else { 0 };
        let xattr_block = u64::from(f32(0x68)?) | u64::from(acl_hi) << 32;
        if xattr_block >= geom.blocks_count {
            return Err(bad(format!(
                "xattr block {xattr_block} is past the {} blocks",
                geom.blocks_count
            )));
        }
        let ibody = if size > GOOD_OLD_INODE_SIZE {
            let extra = usize::from(f16(0x80)?);
            if !extra.is_multiple_of(4) || GOOD_OLD_INODE_SIZE + extra > size {
                return Err(bad(format!("i_extra_isize {extra} in a {size}-byte inode")));
            }
            let area = &raw[GOOD_OLD_INODE_SIZE + extra..];
            (le32(area, 0) == Some(XATTR_MAGIC)).then(|| area.to_vec())
        } else {
            None
        };
        Ok(Inode {
            ino,
            mode,
            links,
            flags: f32(0x20)?,
            size: u64::from(f32(0x04)?) | u64::from(f32(0x6C)?) << 32,
            xattr_block,
            i_block,
            ibody,
        })
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// The directory-entry type code (`EXT4_FT_*`) of this inode's mode;
    /// 0 for an unknown type.
    pub fn dirent_type(&self) -> u8 {
        match self.mode & S_IFMT {
            0o100000 => 1,
            S_IFDIR => 2,
            S_IFCHR => 3,
            S_IFBLK => 4,
            0o010000 => 5,
            0o140000 => 6,
            0o120000 => 7,
            _ => 0,
        }
    }

    /// The device number of a character or block device, as Linux's
    /// `new_encode_dev` packs it (what FUSE's `rdev` carries); 0 for
    /// other files. ext4 keeps small numbers in the old 16-bit form in
    /// `i_block[0]` and the others in the new form in `i_block[1]`.
    pub fn rdev(&self) -> u32 {
        let kind = self.mode & S_IFMT;
        if kind != S_IFCHR && kind != S_IFBLK {
            return 0;
        }
        let word = |i: usize| {
            u32::from_le_bytes([
                self.i_block[i * 4],
                self.i_block[i * 4 + 1],
                self.i_block[i * 4 + 2],
                self.i_block[i * 4 + 3],
            ])
        };
        let old = word(0);
        if old != 0 {
            let (major, minor) = ((old >> 8) & 0xFF, old & 0xFF);
            // Old minors fit 8 bits, so the new form is just major:minor.
            return (major << 8) | minor;
        }
        word(1)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ext4::superblock::tests::sample;

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
}
