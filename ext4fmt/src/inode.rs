//! The on-disk inode (`struct ext4_inode`), decoded as Linux's
//! `__ext4_iget` decodes it: the 128-byte base, then `i_extra_isize` bytes
//! of extra fields (times' nanoseconds and epochs, creation time), then the
//! in-inode xattr area up to the inode's end.

use crate::bytes::{Fields, put16, put32};
use crate::error::Corrupt;
use crate::time::Timestamp;
use crate::xattr;

/// The root directory's inode number.
pub const ROOT_INO: u32 = 2;
/// Bytes of the base inode, before the extra fields.
pub const GOOD_OLD_INODE_SIZE: usize = 128;
/// `sizeof(struct ext4_inode)`: the kernel's extra size when an inode
/// says 0 (it then reads the extra fields anyway).
pub const FULL_INODE_SIZE: usize = 160;
/// Bytes of `i_block`.
pub const N_BLOCK_BYTES: usize = 60;

/// `i_flags` bits.
pub mod flags {
    /// `i_blocks` counts filesystem blocks.
    pub const HUGE_FILE: u32 = 0x0004_0000;
    /// `i_block` holds an extent tree.
    pub const EXTENTS: u32 = 0x0008_0000;
    /// The inode holds a large xattr value.
    pub const EA_INODE: u32 = 0x0020_0000;
    /// The directory is hashed.
    pub const INDEX: u32 = 0x0000_1000;
    /// The data lives in `i_block` and an xattr.
    pub const INLINE_DATA: u32 = 0x1000_0000;
}

/// `i_mode` type bits.
pub mod mode {
    /// The type bits.
    pub const S_IFMT: u16 = 0o170000;
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

/// Field offsets.
pub mod off {
    #![allow(missing_docs)]
    pub const MODE: usize = 0x00;
    pub const UID: usize = 0x02;
    pub const SIZE_LO: usize = 0x04;
    pub const ATIME: usize = 0x08;
    pub const CTIME: usize = 0x0C;
    pub const MTIME: usize = 0x10;
    pub const GID: usize = 0x18;
    pub const LINKS_COUNT: usize = 0x1A;
    pub const BLOCKS_LO: usize = 0x1C;
    pub const FLAGS: usize = 0x20;
    pub const BLOCK: usize = 0x28;
    pub const GENERATION: usize = 0x64;
    pub const FILE_ACL_LO: usize = 0x68;
    pub const SIZE_HIGH: usize = 0x6C;
    pub const BLOCKS_HIGH: usize = 0x74;
    pub const FILE_ACL_HIGH: usize = 0x76;
    pub const UID_HIGH: usize = 0x78;
    pub const GID_HIGH: usize = 0x7A;
    pub const EXTRA_ISIZE: usize = 0x80;
    pub const CTIME_EXTRA: usize = 0x84;
    pub const MTIME_EXTRA: usize = 0x88;
    pub const ATIME_EXTRA: usize = 0x8C;
    pub const CRTIME: usize = 0x90;
    pub const CRTIME_EXTRA: usize = 0x94;
}

/// A file type, from the type bits of a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A symbolic link.
    Symlink,
}

impl FileType {
    /// The type `mode`'s type bits name; `None` for a value no type has.
    pub fn from_mode(m: u16) -> Option<FileType> {
        Some(match m & mode::S_IFMT {
            mode::S_IFREG => FileType::Regular,
            mode::S_IFDIR => FileType::Directory,
            mode::S_IFCHR => FileType::CharDevice,
            mode::S_IFBLK => FileType::BlockDevice,
            mode::S_IFIFO => FileType::Fifo,
            mode::S_IFSOCK => FileType::Socket,
            mode::S_IFLNK => FileType::Symlink,
            _ => return None,
        })
    }

    /// The directory-entry type code ([`crate::dir::file_type`]).
    pub fn dirent_type(self) -> u8 {
        use crate::dir::file_type as ft;
        match self {
            FileType::Regular => ft::REG,
            FileType::Directory => ft::DIR,
            FileType::CharDevice => ft::CHRDEV,
            FileType::BlockDevice => ft::BLKDEV,
            FileType::Fifo => ft::FIFO,
            FileType::Socket => ft::SOCK,
            FileType::Symlink => ft::SYMLINK,
        }
    }
}

/// An inode's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInode {
    /// Type and permission bits.
    pub mode: u16,
    /// Owner (both halves).
    pub uid: u32,
    /// Group (both halves).
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last inode change.
    pub ctime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Creation; `None` when the inode has no room for it.
    pub crtime: Option<Timestamp>,
    /// Hard links.
    pub links: u16,
    /// `i_blocks` as stored (48 bits): see [`DiskInode::st_blocks`].
    pub blocks: u64,
    /// `i_flags` ([`flags`]).
    pub flags: u32,
    /// Extent root, block map, symlink target or device number.
    pub block: [u8; N_BLOCK_BYTES],
    /// `i_generation`.
    pub generation: u32,
    /// The xattr block, or 0.
    pub file_acl: u64,
    /// `i_extra_isize` as stored (0 in 128-byte inodes).
    pub extra_isize: u16,
}

impl DiskInode {
    /// Writes the base and the extra fields `extra_isize` has room for
    /// into `out` (one inode's bytes); the rest of `out` is left as is.
    pub fn encode(&self, out: &mut [u8]) {
        let (atime, atime_x) = self.atime.encode();
        let (ctime, ctime_x) = self.ctime.encode();
        let (mtime, mtime_x) = self.mtime.encode();
        put16(out, off::MODE, self.mode);
        put16(out, off::UID, self.uid as u16);
        put32(out, off::SIZE_LO, self.size as u32);
        put32(out, off::ATIME, atime);
        put32(out, off::CTIME, ctime);
        put32(out, off::MTIME, mtime);
        put16(out, off::GID, self.gid as u16);
        put16(out, off::LINKS_COUNT, self.links);
        put32(out, off::BLOCKS_LO, self.blocks as u32);
        put32(out, off::FLAGS, self.flags);
        out[off::BLOCK..off::BLOCK + N_BLOCK_BYTES].copy_from_slice(&self.block);
        put32(out, off::GENERATION, self.generation);
        put32(out, off::FILE_ACL_LO, self.file_acl as u32);
        put32(out, off::SIZE_HIGH, (self.size >> 32) as u32);
        put16(out, off::BLOCKS_HIGH, (self.blocks >> 32) as u16);
        put16(out, off::FILE_ACL_HIGH, (self.file_acl >> 32) as u16);
        put16(out, off::UID_HIGH, (self.uid >> 16) as u16);
        put16(out, off::GID_HIGH, (self.gid >> 16) as u16);
        if out.len() <= GOOD_OLD_INODE_SIZE {
            return;
        }
        put16(out, off::EXTRA_ISIZE, self.extra_isize);
        let end = GOOD_OLD_INODE_SIZE + usize::from(self.extra_isize);
        let mut put = |at: usize, v: u32| {
            if at + 4 <= end {
                put32(out, at, v);
            }
        };
        put(off::CTIME_EXTRA, ctime_x);
        put(off::MTIME_EXTRA, mtime_x);
        put(off::ATIME_EXTRA, atime_x);
        if let Some(cr) = self.crtime {
            let (base, extra) = cr.encode();
            put(off::CRTIME, base);
            put(off::CRTIME_EXTRA, extra);
        }
    }

    /// Decodes one inode of `raw.len()` bytes (the superblock's inode
    /// size). The high half of `i_file_acl` is read only when `is_64bit`.
    pub fn decode(raw: &[u8], is_64bit: bool) -> Result<DiskInode, Corrupt> {
        let f = Fields::new(raw, "inode");
        let size = raw.len();
        if size < GOOD_OLD_INODE_SIZE {
            return Err(Corrupt::Short {
                what: "inode",
                len: size,
                need: GOOD_OLD_INODE_SIZE,
            });
        }
        let extra_isize = if size > GOOD_OLD_INODE_SIZE {
            f.u16(off::EXTRA_ISIZE)?
        } else {
            0
        };
        let extra = usize::from(extra_isize);
        if !extra.is_multiple_of(4) || GOOD_OLD_INODE_SIZE + extra > size {
            return Err(Corrupt::ExtraIsize {
                extra: extra_isize,
                inode_size: size,
            });
        }
        // "The extra space is currently unused. Use it.": a large inode
        // saying 0 has its extra fields read anyway.
        let extra = if size > GOOD_OLD_INODE_SIZE && extra == 0 {
            FULL_INODE_SIZE - GOOD_OLD_INODE_SIZE
        } else {
            extra
        };
        // EXT4_FITS_IN_INODE: a field is read when it ends inside the base
        // plus the extra fields.
        let fits = |at: usize| at + 4 <= GOOD_OLD_INODE_SIZE + extra;
        let extra_of = |at: usize| -> Result<Option<u32>, Corrupt> {
            if fits(at) {
                f.u32(at).map(Some)
            } else {
                Ok(None)
            }
        };
        let crtime = if fits(off::CRTIME) {
            Some(Timestamp::decode(
                f.u32(off::CRTIME)?,
                extra_of(off::CRTIME_EXTRA)?,
            ))
        } else {
            None
        };
        let acl_hi = if is_64bit {
            f.u16(off::FILE_ACL_HIGH)?
        } else {
            0
        };
        Ok(DiskInode {
            mode: f.u16(off::MODE)?,
            uid: u32::from(f.u16(off::UID)?) | u32::from(f.u16(off::UID_HIGH)?) << 16,
            gid: u32::from(f.u16(off::GID)?) | u32::from(f.u16(off::GID_HIGH)?) << 16,
            size: u64::from(f.u32(off::SIZE_LO)?) | u64::from(f.u32(off::SIZE_HIGH)?) << 32,
            atime: Timestamp::decode(f.u32(off::ATIME)?, extra_of(off::ATIME_EXTRA)?),
            ctime: Timestamp::decode(f.u32(off::CTIME)?, extra_of(off::CTIME_EXTRA)?),
            mtime: Timestamp::decode(f.u32(off::MTIME)?, extra_of(off::MTIME_EXTRA)?),
            crtime,
            links: f.u16(off::LINKS_COUNT)?,
            blocks: u64::from(f.u32(off::BLOCKS_LO)?) | u64::from(f.u16(off::BLOCKS_HIGH)?) << 32,
            flags: f.u32(off::FLAGS)?,
            block: f.array(off::BLOCK)?,
            generation: f.u32(off::GENERATION)?,
            file_acl: u64::from(f.u32(off::FILE_ACL_LO)?) | u64::from(acl_hi) << 32,
            extra_isize,
        })
    }

    /// The in-inode xattr area of `raw` (this inode's bytes), from its
    /// magic to the inode's end; `None` when there is none (the kernel's
    /// `EXT4_STATE_XATTR`).
    pub fn xattr_area<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        if raw.len() <= GOOD_OLD_INODE_SIZE || self.extra_isize == 0 {
            return None;
        }
        let area = raw.get(GOOD_OLD_INODE_SIZE + usize::from(self.extra_isize)..)?;
        xattr::decode_ibody_header(area).is_ok().then_some(area)
    }

    /// `st_blocks` (512-byte units), as `ext4_inode_blocks` computes it:
    /// 32 bits without `huge_file`; else 48, in filesystem blocks of
    /// `block_size` bytes when the inode has [`flags::HUGE_FILE`].
    pub fn st_blocks(&self, huge_file: bool, block_size: u32) -> u64 {
        if !huge_file {
            return self.blocks & 0xFFFF_FFFF;
        }
        if self.flags & flags::HUGE_FILE != 0 {
            self.blocks << (block_size.trailing_zeros().saturating_sub(9))
        } else {
            self.blocks
        }
    }

    /// The file type, if the mode names one.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.mode)
    }

    /// `ext4_inode_is_fast_symlink`: a symlink whose target sits in
    /// `i_block`, charged no blocks besides its xattr block's cluster.
    /// `st_blocks` is [`DiskInode::st_blocks`]; `cluster_size` in bytes.
    pub fn is_fast_symlink(&self, st_blocks: u64, cluster_size: u64) -> bool {
        if self.file_type() != Some(FileType::Symlink) {
            return false;
        }
        if self.flags & flags::EA_INODE != 0 {
            return self.size != 0 && self.size < N_BLOCK_BYTES as u64;
        }
        if self.flags & flags::INLINE_DATA != 0 {
            return false;
        }
        let ea_blocks = if self.file_acl != 0 {
            cluster_size >> 9
        } else {
            0
        };
        st_blocks.wrapping_sub(ea_blocks) == 0
    }

    /// A fast symlink's target, checked as `__ext4_iget` checks it: 1 to
    /// 59 bytes, no NUL among them, a NUL after them.
    pub fn fast_symlink_target(&self) -> Result<&[u8], Corrupt> {
        let bad = Corrupt::FastSymlink { size: self.size };
        let len = usize::try_from(self.size).map_err(|_| bad.clone())?;
        match self.block.get(..len) {
            Some(t)
                if len > 0 && len < N_BLOCK_BYTES && !t.contains(&0) && self.block[len] == 0 =>
            {
                Ok(t)
            }
            _ => Err(bad),
        }
    }
}
