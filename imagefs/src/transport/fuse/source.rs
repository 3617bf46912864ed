//! Reads of the mount's device with errors naming the range.

use crate::device::BlockDevice;
use crate::error_chain;
use std::error::Error;
use std::fmt;
use std::io;

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
    source: &dyn BlockDevice,
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
