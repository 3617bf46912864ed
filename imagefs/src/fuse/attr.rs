//! Attributes: `ext4-view` metadata to FUSE attributes, and the
//! filesystem-wide numbers `statfs` reports, read from the ext4 superblock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ext4_view::{FileType as Ext4Type, Metadata, Timestamp};
use fuser::{FileAttr, FileType, INodeNo};

use super::source::{SourceError, read_range};
use crate::device::BlockDevice;

/// How long the kernel may cache attributes and names. The image never
/// changes while mounted, so this is long.
pub(crate) const TTL: Duration = Duration::from_secs(3600);

/// The file type FUSE reports for an ext4 type.
pub(crate) fn kind(t: Ext4Type) -> FileType {
    match t {
        Ext4Type::Directory => FileType::Directory,
        Ext4Type::Regular => FileType::RegularFile,
        Ext4Type::Symlink => FileType::Symlink,
        Ext4Type::CharacterDevice => FileType::CharDevice,
        Ext4Type::BlockDevice => FileType::BlockDevice,
        Ext4Type::Fifo => FileType::NamedPipe,
        Ext4Type::Socket => FileType::Socket,
    }
}

/// The file type of an ext4 directory entry's type code, if it is one.
pub(crate) fn dirent_kind(code: u8) -> Option<FileType> {
    Some(match code {
        1 => FileType::RegularFile,
        2 => FileType::Directory,
        3 => FileType::CharDevice,
        4 => FileType::BlockDevice,
        5 => FileType::NamedPipe,
        6 => FileType::Socket,
        7 => FileType::Symlink,
        _ => return None,
    })
}

/// A time stamp as a `SystemTime`.
pub(crate) fn time(t: Timestamp) -> SystemTime {
    system_time(t.seconds(), t.nanoseconds())
}

/// Seconds and nanoseconds since 1970 (negative: before) as a `SystemTime`.
fn system_time(secs: i64, nanos: u32) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(nanos));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// FUSE attributes of inode `ino` with metadata `md`, the link count and
/// device number from the inode (`rdev` packed as Linux's
/// `new_encode_dev`). `ext4-view` does not expose the inode change time
/// or the allocated size: ctime is the mtime, the block count follows the
/// size.
pub(crate) fn file_attr(ino: u64, md: &Metadata, nlink: u32, rdev: u32, blksize: u32) -> FileAttr {
    let mtime = time(md.modified());
    FileAttr {
        ino: INodeNo(ino),
        size: md.len(),
        blocks: md.len().div_ceil(512),
        atime: time(md.accessed()),
        mtime,
        ctime: mtime,
        crtime: md.created().map_or(mtime, time),
        kind: kind(md.file_type()),
        perm: md.mode(),
        nlink,
        uid: md.uid(),
        gid: md.gid(),
        rdev,
        blksize,
        flags: 0,
    }
}

/// What `statfs` reports, from the superblock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FsStats {
    /// Block size in bytes.
    pub(crate) block_size: u32,
    /// Blocks in the filesystem.
    pub(crate) blocks: u64,
    /// Free blocks.
    pub(crate) free_blocks: u64,
    /// Free blocks available to unprivileged users.
    pub(crate) avail_blocks: u64,
    /// Inodes.
    pub(crate) inodes: u64,
    /// Free inodes.
    pub(crate) free_inodes: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl FsStats {
    /// Reads the superblock (1024 bytes at offset 1024). `None` in
    /// `Ok` when it is not an ext4 superblock.
    pub(crate) fn read(source: &dyn BlockDevice) -> Result<Option<FsStats>, SourceError> {
        let mut sb = [0u8; 1024];
        read_range(source, &mut sb, 1024)?;
        if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
            return Ok(None);
        }
        let log = le32(&sb, 0x18);
        if log > 6 {
            return Ok(None);
        }
        let is_64bit = le32(&sb, 0x60) & 0x80 != 0;
        let wide = |lo: usize, hi: usize| {
            let high = if is_64bit {
                u64::from(le32(&sb, hi))
            } else {
                0
            };
            u64::from(le32(&sb, lo)) | high << 32
        };
        let free_blocks = wide(0x0C, 0x158);
        let reserved = wide(0x08, 0x154);
        Ok(Some(FsStats {
            block_size: 1024 << log,
            blocks: wide(0x04, 0x150),
            free_blocks,
            avail_blocks: free_blocks.saturating_sub(reserved),
            inodes: u64::from(le32(&sb, 0x00)),
            free_inodes: u64::from(le32(&sb, 0x10)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_and_after_1970() {
        assert_eq!(system_time(5, 7), UNIX_EPOCH + Duration::new(5, 7));
        assert_eq!(
            system_time(-2, 500),
            UNIX_EPOCH - Duration::from_secs(2) + Duration::from_nanos(500)
        );
        assert_eq!(system_time(0, 0), UNIX_EPOCH);
    }
}
