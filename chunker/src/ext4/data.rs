//! Streaming file data into the data region, layer by layer.
//!
//! Each layer starts on a chunk boundary and its files follow one another
//! block-aligned in tar order, so a layer's data blocks are the same bytes at
//! the same chunk offsets in every image that contains it. All-zero blocks are
//! not written at all: they become holes in the file.

use std::io::{self, Read};

use super::BLOCK_SIZE;
use crate::sink::ImageSink;
use crate::tree::{Extent, FileData};

/// The largest length of one initialized ext4 extent, in blocks.
pub const MAX_EXTENT_LEN: u32 = 32768;

/// Bytes read from a file per step; a multiple of the block size.
const READ_STEP: usize = 256 * 1024;

/// A file's bytes for `DataWriter::write_file`: a reader that may know
/// where its holes are, so they are skipped instead of read as zeros.
pub trait FileSource: Read {
    /// Bytes from the current position known to read as zeros.
    fn hole_ahead(&mut self) -> u64 {
        0
    }
    /// Bytes from the current position before the next known hole.
    fn data_ahead(&mut self) -> u64 {
        u64::MAX
    }
    /// Move past `n` bytes of a hole (at most [`FileSource::hole_ahead`]).
    fn skip_hole(&mut self, n: u64) {
        let _ = n;
    }
}

/// A plain reader: no known holes (zero blocks still become holes).
struct Dense<'a>(&'a mut dyn Read);

impl Read for Dense<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl FileSource for Dense<'_> {}

/// Places file data at growing block numbers.
#[derive(Debug)]
pub struct DataWriter {
    /// Next free block.
    next: u64,
    /// Blocks per chunk.
    chunk_blocks: u64,
    buf: Vec<u8>,
}

impl DataWriter {
    /// Start writing at block `first` (a chunk boundary) with chunks of
    /// `chunk_blocks` blocks.
    pub fn new(first: u64, chunk_blocks: u64) -> Self {
        DataWriter {
            next: first,
            chunk_blocks,
            buf: vec![0; READ_STEP],
        }
    }

    /// The next block that would be written.
    pub fn next_block(&self) -> u64 {
        self.next
    }

    /// Blocks per chunk.
    pub fn chunk_blocks(&self) -> u64 {
        self.chunk_blocks
    }

    /// Go on from block `next`, past blocks written elsewhere (a detached
    /// layer).
    pub fn skip_to(&mut self, next: u64) {
        debug_assert!(next >= self.next, "data blocks only go forward");
        self.next = next;
    }

    /// Move to the next chunk boundary (a no-op when already on one).
    pub fn align_to_chunk(&mut self) {
        self.next = self.next.div_ceil(self.chunk_blocks) * self.chunk_blocks;
    }

    /// Copy exactly `size` bytes from `src` into the image and say where they
    /// went. Fails with `UnexpectedEof` when `src` ends early.
    pub fn write_file(
        &mut self,
        sink: &mut dyn ImageSink,
        src: &mut dyn Read,
        size: u64,
    ) -> io::Result<FileData> {
        self.write_sparse_file(sink, &mut Dense(src), size)
    }

    /// As [`DataWriter::write_file`], skipping the holes `src` knows of:
    /// whole blocks of them are never read, so the work follows the data,
    /// not the file size.
    pub fn write_sparse_file(
        &mut self,
        sink: &mut dyn ImageSink,
        src: &mut dyn FileSource,
        size: u64,
    ) -> io::Result<FileData> {
        let bs = u64::from(BLOCK_SIZE);
        let mut extents: Vec<Extent> = Vec::new();
        // Every step but the last consumes whole blocks, so `logical` stays
        // block-aligned.
        let mut logical = 0u64;
        let mut remaining = size;
        while remaining > 0 {
            let skip = src.hole_ahead().min(remaining) / bs * bs;
            if skip > 0 {
                src.skip_hole(skip);
                remaining -= skip;
                logical += skip / bs;
                continue;
            }
            let mut want = remaining.min(READ_STEP as u64);
            let data = src.data_ahead();
            if data < want {
                // Stop at the first block boundary past the data, where the
                // next hole can be skipped.
                want = data.max(1).next_multiple_of(bs).min(remaining);
            }
            let want = want as usize;
            let buf = &mut self.buf[..want];
            src.read_exact(buf)?;
            remaining -= want as u64;
            // A short last block ends in zeros in the image.
            let blocks = want.div_ceil(BLOCK_SIZE as usize);
            let mut run_start: Option<usize> = None;
            for b in 0..=blocks {
                let data = (b < blocks).then(|| {
                    let end = ((b + 1) * BLOCK_SIZE as usize).min(want);
                    &buf[b * BLOCK_SIZE as usize..end]
                });
                let is_data = data.is_some_and(|d| d.iter().any(|&x| x != 0));
                match (is_data, run_start) {
                    (true, None) => run_start = Some(b),
                    (false, Some(start)) => {
                        let bytes =
                            &buf[start * BLOCK_SIZE as usize..(b * BLOCK_SIZE as usize).min(want)];
                        // A short last block as it is: the rest of it is
                        // never written, and a sink reads that as zeros.
                        sink.write_at(self.next * u64::from(BLOCK_SIZE), bytes)?;
                        let count = (b - start) as u64;
                        push_extent(&mut extents, logical + start as u64, self.next, count);
                        self.next += count;
                        run_start = None;
                    }
                    _ => {}
                }
            }
            logical += blocks as u64;
        }
        Ok(FileData { size, extents })
    }
}

/// Append a run, merging with the previous extent when contiguous in both
/// file and image, and splitting at the ext4 extent length limit.
fn push_extent(extents: &mut Vec<Extent>, mut logical: u64, mut physical: u64, mut count: u64) {
    if let Some(last) = extents.last_mut() {
        let room = u64::from(MAX_EXTENT_LEN - last.len);
        if last.logical + u64::from(last.len) == logical
            && last.physical + u64::from(last.len) == physical
            && room > 0
        {
            let take = room.min(count);
            last.len += take as u32;
            logical += take;
            physical += take;
            count -= take;
        }
    }
    while count > 0 {
        let take = count.min(u64::from(MAX_EXTENT_LEN));
        extents.push(Extent {
            logical,
            physical,
            len: take as u32,
        });
        logical += take;
        physical += take;
        count -= take;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::VecSink;

    #[test]
    fn zero_blocks_become_holes_and_runs_merge() {
        let bs = BLOCK_SIZE as usize;
        // data, zero, data, data, then a short non-zero tail.
        let mut file = vec![0u8; 4 * bs + 10];
        file[0] = 1;
        file[2 * bs] = 2;
        file[3 * bs + 5] = 3;
        file[4 * bs + 9] = 4;
        let mut sink = VecSink::default();
        let mut w = DataWriter::new(16, 16);
        let d = w
            .write_file(&mut sink, &mut file.as_slice(), file.len() as u64)
            .unwrap();
        assert_eq!(d.size, file.len() as u64);
        assert_eq!(
            d.extents,
            [
                Extent {
                    logical: 0,
                    physical: 16,
                    len: 1
                },
                Extent {
                    logical: 2,
                    physical: 17,
                    len: 3
                },
            ]
        );
        assert_eq!(w.next_block(), 20);
        assert_eq!(sink.bytes[16 * bs], 1);
        assert_eq!(sink.bytes[17 * bs], 2);
        assert_eq!(sink.bytes[19 * bs + 9], 4);
        w.align_to_chunk();
        assert_eq!(w.next_block(), 32);
    }

    #[test]
    fn merges_across_read_steps_and_splits_at_limit() {
        let mut v = Vec::new();
        push_extent(&mut v, 0, 100, u64::from(MAX_EXTENT_LEN) - 1);
        push_extent(
            &mut v,
            u64::from(MAX_EXTENT_LEN) - 1,
            100 + u64::from(MAX_EXTENT_LEN) - 1,
            3,
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].len, MAX_EXTENT_LEN);
        assert_eq!(
            v[1],
            Extent {
                logical: u64::from(MAX_EXTENT_LEN),
                physical: 100 + u64::from(MAX_EXTENT_LEN),
                len: 2
            }
        );
    }

    #[test]
    fn short_source_is_an_error() {
        let mut sink = VecSink::default();
        let mut w = DataWriter::new(0, 16);
        let err = w
            .write_file(&mut sink, &mut [1u8; 10].as_slice(), 20)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
