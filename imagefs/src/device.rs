//! The block-device seam: the one shape every layer that supplies an
//! image's bytes implements, and every layer that consumes them (the FUSE
//! view, the vhost-user-blk daemon, the ext4 reader) depends on.
//!
//! Two implementations: [`crate::LazyImage`] (chunks fetched through the
//! tiers, writes copy-on-write into the dedicated tier) and a plain
//! [`File`] (an exported or flattened image, for tests and `--raw`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A random-access block device, shared by the threads that serve it.
pub trait BlockDevice: Send + Sync {
    /// Fills `buf` with the bytes at `offset`; an error when any of them
    /// cannot be read (past the end, a chunk that cannot be fetched). The
    /// error's text names what failed (the chunk and the tier).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes `buf` at `offset`. Not durable until [`flush`](Self::flush).
    /// The default refuses: the device is read-only.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::ReadOnlyFilesystem,
            format!(
                "write of {} bytes at offset {offset}: the device is read-only",
                buf.len()
            ),
        ))
    }

    /// Makes every write so far durable. The default has nothing to do.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// The device's size in bytes.
    fn size(&self) -> u64;

    /// Whether [`write_at`](Self::write_at) can succeed.
    fn writable(&self) -> bool {
        false
    }

    /// Whether reading `len` bytes at `offset` needs no fetch: the bytes
    /// are on this host. Only then may a file be handed to the kernel for
    /// FUSE passthrough. The default, false, is always safe.
    fn is_local(&self, _offset: u64, _len: u64) -> bool {
        false
    }
}

/// A plain file holding an image. Read-only through this trait: a test
/// or `--raw` mount must never change the file it was given.
impl BlockDevice for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> u64 {
        // A file whose size cannot be read is an empty device: every read
        // then fails with an error naming the offset.
        self.metadata().map_or(0, |m| m.len())
    }

    fn is_local(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= BlockDevice::size(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_reads_its_bytes_refuses_writes_and_knows_its_range_is_local() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        let dev: &dyn BlockDevice = &f;
        let mut buf = [0u8; 4];
        dev.read_exact_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"3456");
        assert_eq!(dev.size(), 10);
        assert!(dev.read_exact_at(&mut buf, 8).is_err(), "past the end");
        let err = dev.write_at(b"x", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ReadOnlyFilesystem);
        assert!(!dev.writable());
        assert!(dev.is_local(0, 10));
        assert!(!dev.is_local(5, 6));
        assert!(!dev.is_local(u64::MAX, 2));
    }
}
