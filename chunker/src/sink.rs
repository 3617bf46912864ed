//! Where image bytes go: a file for `flatten`, a chunking pipeline later.
//!
//! The ext4 writer streams: file data goes out at growing offsets as the
//! layers are read, then metadata, and the header region (superblock and
//! group descriptors, below the first data chunk) is written last. A sink may
//! rely on that order; ranges never written read as zeros.
//!
//! A sink may also take *detached* layers: a layer's data written, on
//! another thread, at offsets from 0 before the layers below it are done
//! and its place is known, then attached at its place. A layer's data
//! starts on a chunk boundary and no byte of it depends on where it
//! goes, so a chunking sink can cut and store it at once and only number
//! its chunks when it is attached.

use std::any::Any;
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
    /// A sink for one layer whose place is not known yet (see the module
    /// docs), or `None` when this sink is written in order only.
    fn detach(&mut self) -> Option<Box<dyn DetachedSink>> {
        None
    }
    /// Put a layer written into a sink from [`ImageSink::detach`] at
    /// `offset`: a chunk boundary past everything written so far, and
    /// where the next writes go on from.
    fn attach(&mut self, layer: Box<dyn DetachedSink>, offset: u64) -> io::Result<()> {
        let _ = (layer, offset);
        Err(io::Error::other("this sink takes no detached layers"))
    }
}

/// One layer's bytes, written at offsets from 0 in growing order;
/// [`ImageSink::finish`] says the layer is complete (its length).
pub trait DetachedSink: ImageSink + Send {
    /// For the sink that made it, to take it back.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
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

    // Detached layers too, so that tests can compare the two ways.
    fn detach(&mut self) -> Option<Box<dyn DetachedSink>> {
        Some(Box::new(VecSink::default()))
    }

    fn attach(&mut self, layer: Box<dyn DetachedSink>, offset: u64) -> io::Result<()> {
        let layer = layer
            .into_any()
            .downcast::<VecSink>()
            .map_err(|_| io::Error::other("not a layer of this sink"))?;
        if (offset as usize) < self.bytes.len() {
            return Err(io::Error::other(format!(
                "a layer attached at {offset}, below bytes written up to {}",
                self.bytes.len()
            )));
        }
        self.write_at(offset, &layer.bytes)
    }
}

impl DetachedSink for VecSink {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
