//! Where a mount's bytes come from, and the adapter `ext4-view` reads
//! through.

use crate::error_chain;
use std::error::Error;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A read-only, random-access view of an image's bytes, shared by the
/// threads that serve a mount.
pub trait ByteSource: Send + Sync {
    /// Fills `buf` with the bytes at `offset`; an error when any of them
    /// cannot be read (past the end, a chunk that cannot be fetched). The
    /// error's text should name what failed (the chunk and the tier).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The image's size in bytes.
    fn size(&self) -> u64;

    /// Whether reading `len` bytes at `offset` needs no fetch: the bytes
    /// are on this host. Only then may a file be handed to the kernel for
    /// passthrough (see `passthrough.rs`). The default, false, is always
    /// safe.
    fn is_local(&self, _offset: u64, _len: u64) -> bool {
        false
    }
}

/// A plain file holding an image (an exported image, a flattened image).
impl ByteSource for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> u64 {
        // A file whose size cannot be read is an empty image: every read
        // then fails with an error naming the offset.
        self.metadata().map_or(0, |m| m.len())
    }

    fn is_local(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= ByteSource::size(self))
    }
}

/// A failed read of the image's bytes, naming the range.
#[derive(Debug)]
pub(crate) struct SourceError {
    pub(crate) offset: u64,
    pub(crate) len: usize,
    pub(crate) source: io::Error,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reading image bytes {}..{}: {}",
            self.offset,
            self.offset + self.len as u64,
            error_chain(&self.source)
        )
    }
}

impl Error for SourceError {}

/// Reads the range, with an error naming it.
pub(crate) fn read_range(
    source: &dyn ByteSource,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), SourceError> {
    source
        .read_exact_at(buf, offset)
        .map_err(|source| SourceError {
            offset,
            len: buf.len(),
            source,
        })
}

/// `ext4-view`'s reader over a [`ByteSource`].
pub(crate) struct Ext4Reader(pub(crate) Arc<dyn ByteSource>);

impl ext4_view::Ext4Read for Ext4Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn Error + Send + Sync + 'static>> {
        read_range(&*self.0, dst, start_byte).map_err(|e| Box::new(e) as _)
    }
}

/// A lazily fetched image: its errors name the chunk and what each tier
/// said.
impl ByteSource for crate::lazy::LazyImage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        crate::lazy::LazyImage::read_exact_at(self, buf, offset).map_err(io::Error::other)
    }

    fn size(&self) -> u64 {
        crate::lazy::LazyImage::size(self)
    }

    fn is_local(&self, offset: u64, len: u64) -> bool {
        crate::lazy::LazyImage::is_local(self, offset, len)
    }
}
