//! Where image bytes go: a file for `flatten`, a chunking pipeline later.
//!
//! The ext4 writer streams: file data goes out at growing offsets as the
//! layers are read, then metadata, and the header region (superblock and
//! group descriptors, below the first data chunk) is written last. A sink may
//! rely on that order; ranges never written read as zeros.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A destination for image bytes.
pub trait ImageSink {
    /// Write `buf` at byte `offset`. Outside the header region, offsets only
    /// grow from call to call.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// The image is complete and `len` bytes long.
    fn finish(&mut self, len: u64) -> io::Result<()>;
}

/// A sink writing into a file; unwritten ranges stay holes.
#[derive(Debug)]
pub struct FileSink {
    file: File,
}

impl FileSink {
    /// Write into `file`, which should be empty.
    pub fn new(file: File) -> Self {
        FileSink { file }
    }

    /// The file, once finished.
    pub fn into_inner(self) -> File {
        self.file
    }
}

impl ImageSink for FileSink {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn finish(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }
}

/// A sink that keeps the image in memory, for tests of small images.
#[derive(Debug, Default)]
pub struct VecSink {
    /// The image bytes.
    pub bytes: Vec<u8>,
}

impl ImageSink for VecSink {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let end = offset as usize + buf.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn finish(&mut self, len: u64) -> io::Result<()> {
        self.bytes.resize(len as usize, 0);
        Ok(())
    }
}
