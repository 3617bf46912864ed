//! A [`LazyImage`] behind the block-device seam, for the transports and
//! the ext4 reader.

use std::io;

use super::LazyImage;
use crate::device::BlockDevice;

/// A lazily fetched image: its errors name the chunk and what each tier
/// said (the [`LazyError`](super::LazyError) is the `io::Error`'s inner error).
impl BlockDevice for LazyImage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        LazyImage::read_exact_at(self, buf, offset).map_err(io::Error::other)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        LazyImage::write_at(self, buf, offset).map_err(io::Error::other)
    }

    fn flush(&self) -> io::Result<()> {
        LazyImage::flush(self).map_err(io::Error::other)
    }

    fn size(&self) -> u64 {
        LazyImage::size(self)
    }

    fn writable(&self) -> bool {
        LazyImage::writable(self)
    }

    fn is_local(&self, offset: u64, len: u64) -> bool {
        LazyImage::is_local(self, offset, len)
    }
}
