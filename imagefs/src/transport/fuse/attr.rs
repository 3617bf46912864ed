//! Attributes: a decoded ext4 inode as FUSE attributes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::ext4::{Inode, Timestamp};

/// How long the kernel may cache attributes and names. The image never
/// changes while mounted, so this is as long as the kernel keeps them
/// anyway: every lookup or getattr the kernel can skip is a round trip
/// through `/dev/fuse` saved.
pub(crate) const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

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
fn time(t: Timestamp) -> SystemTime {
    system_time(t.secs, t.nsecs)
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

/// FUSE attributes of `inode`, numbered `ino` for FUSE; `blksize` is the
/// filesystem's block size (what `st_blksize` shows on a loop mount).
pub(crate) fn file_attr(ino: u64, inode: &Inode, blksize: u32) -> FileAttr {
    let mtime = time(inode.mtime);
    FileAttr {
        ino: INodeNo(ino),
        size: inode.size,
        blocks: inode.blocks,
        atime: time(inode.atime),
        mtime,
        ctime: time(inode.ctime),
        crtime: inode.crtime.map_or(mtime, time),
        kind: dirent_kind(inode.dirent_type()).unwrap_or(FileType::RegularFile),
        perm: inode.mode & 0o7777,
        nlink: u32::from(inode.links),
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev(),
        blksize,
        flags: 0,
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
