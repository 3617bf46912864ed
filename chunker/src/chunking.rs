//! Cutting the image byte stream into fixed-size chunks.
//!
//! [`ChunkingSink`] is an [`ImageSink`]: the ext4 writer streams into it and
//! it hands each completed chunk to a [`ChunkConsumer`] as soon as the writer
//! has moved past it, so only one chunk (plus the header chunk, which the
//! writer fills last) is held at a time. A chunk that was never written, or
//! whose bytes are all zero, is a hole and is not handed on.
//!
//! A detached layer ([`ImageSink::detach`]) is cut the same way by a
//! [`DetachedChunks`], whose consumer numbers its chunks from 0 within the
//! layer; attaching it tells this sink's consumer the layer's first chunk.

use std::any::Any;
use std::io;

use crate::sink::{DetachedSink, ImageSink};

/// Receives the non-hole chunks of an image.
pub trait ChunkConsumer {
    /// Chunk number `index` holds `data` (exactly one chunk size long, not
    /// all zeros). Data chunks arrive in increasing order; chunk 0 comes last.
    fn chunk(&mut self, index: u64, data: Vec<u8>) -> io::Result<()>;

    /// A buffer of `size` bytes for the next chunk, whatever they hold:
    /// the sink zeroes every byte it does not write. A consumer that gets
    /// its buffers back (from the threads it hands chunks to) may hand
    /// them out again as they are, instead of a fresh allocation a chunk.
    fn buffer(&mut self, size: usize) -> Vec<u8> {
        vec![0; size]
    }

    /// A consumer for a detached layer's chunks, numbered from 0 within
    /// the layer, and the token that [`ChunkConsumer::attach`] will name
    /// it by; `None` (the default) when this consumer takes chunks in
    /// order only.
    fn detach(&mut self) -> Option<(u64, Box<dyn ChunkConsumer + Send>)> {
        None
    }

    /// The detached layer `token` starts at chunk `first`.
    fn attach(&mut self, token: u64, first: u64) -> io::Result<()> {
        let _ = (token, first);
        Err(io::Error::other("this consumer takes no detached layers"))
    }
}

impl ChunkConsumer for Box<dyn ChunkConsumer + Send> {
    fn chunk(&mut self, index: u64, data: Vec<u8>) -> io::Result<()> {
        (**self).chunk(index, data)
    }

    fn buffer(&mut self, size: usize) -> Vec<u8> {
        (**self).buffer(size)
    }
}

/// A chunk being filled: bytes below `filled` are written or zeroed, the
/// rest still hold whatever the buffer held, and are zeroed before the
/// chunk is handed on. So a reused buffer is not cleared twice.
#[derive(Debug)]
struct Filling {
    data: Vec<u8>,
    filled: usize,
}

impl Filling {
    fn new(data: Vec<u8>) -> Self {
        Filling { data, filled: 0 }
    }

    fn write(&mut self, within: usize, buf: &[u8]) {
        if within > self.filled {
            self.data[self.filled..within].fill(0);
        }
        let end = within + buf.len();
        self.data[within..end].copy_from_slice(buf);
        self.filled = self.filled.max(end);
    }

    /// The whole chunk, zeroed past what was written; `None` when it is
    /// all zeros (a hole).
    fn finish(mut self) -> Option<Vec<u8>> {
        let written = &self.data[..self.filled];
        if !written.iter().any(|&b| b != 0) {
            return None;
        }
        let filled = self.filled;
        self.data[filled..].fill(0);
        Some(self.data)
    }
}

/// An [`ImageSink`] that cuts the image into chunks.
#[derive(Debug)]
pub struct ChunkingSink<C: ChunkConsumer> {
    chunk_size: u64,
    /// Whether chunk 0 is the header region, written last (not in a
    /// detached layer).
    header_region: bool,
    header: Option<Filling>,
    current: Option<(u64, Filling)>,
    consumer: C,
    chunks: u64,
}

impl<C: ChunkConsumer> ChunkingSink<C> {
    /// Cut into chunks of `chunk_size` bytes (a power of two).
    pub fn new(chunk_size: u64, consumer: C) -> Self {
        ChunkingSink {
            chunk_size,
            header_region: true,
            header: None,
            current: None,
            consumer,
            chunks: 0,
        }
    }

    /// The number of chunks in the finished image, holes included.
    pub fn chunk_count(&self) -> u64 {
        self.chunks
    }

    /// The consumer, to collect its results after [`ImageSink::finish`].
    pub fn into_consumer(self) -> C {
        self.consumer
    }

    fn flush_current(&mut self) -> io::Result<()> {
        if let Some((index, filling)) = self.current.take()
            && let Some(data) = filling.finish()
        {
            self.consumer.chunk(index, data)?;
        }
        Ok(())
    }

    fn write_in_chunk(&mut self, index: u64, within: usize, buf: &[u8]) -> io::Result<()> {
        let size = self.chunk_size as usize;
        if index == 0 && self.header_region {
            let consumer = &mut self.consumer;
            self.header
                .get_or_insert_with(|| Filling::new(consumer.buffer(size)))
                .write(within, buf);
            return Ok(());
        }
        match &self.current {
            Some((cur, _)) if *cur == index => {}
            Some((cur, _)) if *cur > index => {
                return Err(io::Error::other(format!(
                    "chunking: write to chunk {index} after chunk {cur} was started"
                )));
            }
            _ => {
                self.flush_current()?;
                self.current = Some((index, Filling::new(self.consumer.buffer(size))));
            }
        }
        let (_, filling) = self.current.as_mut().expect("current chunk was just set");
        filling.write(within, buf);
        Ok(())
    }
}

impl<C: ChunkConsumer> ImageSink for ChunkingSink<C> {
    fn write_at(&mut self, offset: u64, mut buf: &[u8]) -> io::Result<()> {
        let mut offset = offset;
        while !buf.is_empty() {
            let index = offset / self.chunk_size;
            let within = (offset % self.chunk_size) as usize;
            let n = buf.len().min(self.chunk_size as usize - within);
            self.write_in_chunk(index, within, &buf[..n])?;
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn finish(&mut self, len: u64) -> io::Result<()> {
        if !len.is_multiple_of(self.chunk_size) {
            return Err(io::Error::other(format!(
                "chunking: image length {len} is not a multiple of the chunk size {}",
                self.chunk_size
            )));
        }
        if let Some((cur, _)) = &self.current
            && *cur >= len / self.chunk_size
        {
            return Err(io::Error::other(format!(
                "chunking: chunk {cur} was written past the image end {len}"
            )));
        }
        self.flush_current()?;
        if let Some(header) = self.header.take().and_then(Filling::finish) {
            self.consumer.chunk(0, header)?;
        }
        self.chunks = len / self.chunk_size;
        Ok(())
    }

    fn detach(&mut self) -> Option<Box<dyn DetachedSink>> {
        let (token, consumer) = self.consumer.detach()?;
        let mut sink = ChunkingSink::new(self.chunk_size, consumer);
        sink.header_region = false;
        Some(Box::new(DetachedChunks { token, sink }))
    }

    fn attach(&mut self, layer: Box<dyn DetachedSink>, offset: u64) -> io::Result<()> {
        let layer = layer
            .into_any()
            .downcast::<DetachedChunks>()
            .map_err(|_| io::Error::other("chunking: not a layer of this sink"))?;
        let first = offset / self.chunk_size;
        if !offset.is_multiple_of(self.chunk_size) || first == 0 {
            return Err(io::Error::other(format!(
                "chunking: a layer attached at {offset}, not a data chunk boundary"
            )));
        }
        if let Some((cur, _)) = &self.current
            && *cur >= first
        {
            return Err(io::Error::other(format!(
                "chunking: a layer attached at chunk {first} after chunk {cur} was started"
            )));
        }
        self.flush_current()?;
        self.consumer.attach(layer.token, first)
    }
}

/// A detached layer's chunks ([`ChunkingSink`]'s [`ImageSink::detach`]),
/// numbered from 0 within the layer.
pub struct DetachedChunks {
    token: u64,
    sink: ChunkingSink<Box<dyn ChunkConsumer + Send>>,
}

impl ImageSink for DetachedChunks {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.sink.write_at(offset, buf)
    }

    /// Hands on the last chunk; `len` need not be a whole number of them.
    fn finish(&mut self, len: u64) -> io::Result<()> {
        if let Some((cur, _)) = &self.sink.current
            && *cur >= len.div_ceil(self.sink.chunk_size)
        {
            return Err(io::Error::other(format!(
                "chunking: chunk {cur} was written past the layer's end {len}"
            )));
        }
        self.sink.flush_current()
    }
}

impl DetachedSink for DetachedChunks {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<(u64, Vec<u8>)>);

    impl ChunkConsumer for Collect {
        fn chunk(&mut self, index: u64, data: Vec<u8>) -> io::Result<()> {
            self.0.push((index, data));
            Ok(())
        }
    }

    #[test]
    fn chunks_in_order_header_last_holes_skipped() {
        let mut s = ChunkingSink::new(8, Collect::default());
        s.write_at(8, &[1; 4]).unwrap();
        // Spans chunks 1 and 2.
        s.write_at(14, &[2; 4]).unwrap();
        // Chunk 3 written with zeros only: a hole.
        s.write_at(24, &[0; 8]).unwrap();
        s.write_at(40, &[3]).unwrap();
        s.write_at(1, &[9]).unwrap();
        s.finish(56).unwrap();
        assert_eq!(s.chunk_count(), 7);
        let got = s.into_consumer().0;
        let idx: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, [1, 2, 5, 0]);
        assert_eq!(got[0].1, [1, 1, 1, 1, 0, 0, 2, 2]);
        assert_eq!(got[1].1, [2, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(got[3].1[1], 9);
    }

    /// A chunk as a test consumer got it: its layer's token, its number
    /// (within the layer) and its bytes.
    type Got = (Option<u64>, u64, Vec<u8>);

    /// Chunks of detached layers, sent with their layer's token, and where
    /// each layer was attached.
    #[derive(Clone, Default)]
    struct Layers {
        token: Option<u64>,
        next: u64,
        got: std::sync::Arc<std::sync::Mutex<Vec<Got>>>,
        starts: Vec<(u64, u64)>,
    }

    impl ChunkConsumer for Layers {
        fn chunk(&mut self, index: u64, data: Vec<u8>) -> io::Result<()> {
            self.got.lock().unwrap().push((self.token, index, data));
            Ok(())
        }

        fn detach(&mut self) -> Option<(u64, Box<dyn ChunkConsumer + Send>)> {
            let token = self.next;
            self.next += 1;
            let layer = Layers {
                token: Some(token),
                ..self.clone()
            };
            Some((token, Box::new(layer)))
        }

        fn attach(&mut self, token: u64, first: u64) -> io::Result<()> {
            self.starts.push((token, first));
            Ok(())
        }
    }

    #[test]
    fn a_detached_layer_is_cut_from_its_own_start_and_placed_when_attached() {
        let mut s = ChunkingSink::new(8, Layers::default());
        let mut a = s.detach().unwrap();
        let mut b = s.detach().unwrap();
        // Written in another order than they go; chunk 0 of a layer is
        // data like any other, and a layer's last chunk may be short.
        b.write_at(0, &[7; 3]).unwrap();
        b.finish(3).unwrap();
        a.write_at(2, &[1; 8]).unwrap();
        a.write_at(20, &[2]).unwrap();
        a.finish(21).unwrap();
        s.write_at(8, &[5]).unwrap();
        s.attach(a, 16).unwrap();
        s.attach(b, 40).unwrap();
        s.write_at(48, &[6]).unwrap();
        s.write_at(0, &[9]).unwrap();
        s.finish(56).unwrap();
        let c = s.into_consumer();
        assert_eq!(c.starts, [(0, 2), (1, 5)]);
        let mut got = c.got.lock().unwrap().clone();
        got.sort_by_key(|(t, i, _)| (t.map_or(0, |t| t + 1), *i));
        let want: Vec<Got> = vec![
            (None, 0, vec![9, 0, 0, 0, 0, 0, 0, 0]),
            (None, 1, vec![5, 0, 0, 0, 0, 0, 0, 0]),
            (None, 6, vec![6, 0, 0, 0, 0, 0, 0, 0]),
            (Some(0), 0, vec![0, 0, 1, 1, 1, 1, 1, 1]),
            (Some(0), 1, vec![1, 1, 0, 0, 0, 0, 0, 0]),
            (Some(0), 2, vec![0, 0, 0, 0, 2, 0, 0, 0]),
            (Some(1), 0, vec![7, 7, 7, 0, 0, 0, 0, 0]),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_layer_attached_off_a_boundary_or_below_what_was_written_is_an_error() {
        let mut s = ChunkingSink::new(8, Layers::default());
        let a = s.detach().unwrap();
        let err = s.attach(a, 12).unwrap_err();
        assert!(
            err.to_string().contains("not a data chunk boundary"),
            "{err}"
        );
        let a = s.detach().unwrap();
        assert!(s.attach(a, 0).is_err(), "chunk 0 is the header's");
        s.write_at(24, &[1]).unwrap();
        let a = s.detach().unwrap();
        let err = s.attach(a, 16).unwrap_err();
        assert!(
            err.to_string().contains("after chunk 3 was started"),
            "{err}"
        );
        // A layer of another sink.
        let err = s
            .attach(Box::new(crate::sink::VecSink::default()), 32)
            .unwrap_err();
        assert!(
            err.to_string().contains("not a layer of this sink"),
            "{err}"
        );
        // Written past the end it was finished at.
        let mut a = s.detach().unwrap();
        a.write_at(16, &[1]).unwrap();
        assert!(a.finish(8).is_err());
    }

    /// Hands out buffers full of 0xee, as a reused one may be.
    #[derive(Default)]
    struct Dirty(Collect);

    impl ChunkConsumer for Dirty {
        fn chunk(&mut self, index: u64, data: Vec<u8>) -> io::Result<()> {
            self.0.chunk(index, data)
        }

        fn buffer(&mut self, size: usize) -> Vec<u8> {
            vec![0xee; size]
        }
    }

    #[test]
    fn what_is_not_written_is_zero_whatever_the_buffer_held() {
        let mut s = ChunkingSink::new(8, Dirty::default());
        // A gap before, between and after writes, one of them backwards
        // within the chunk.
        s.write_at(10, &[1, 2]).unwrap();
        s.write_at(14, &[3]).unwrap();
        s.write_at(8, &[4]).unwrap();
        // Zeros only: still a hole, dirty buffer or not.
        s.write_at(26, &[0; 3]).unwrap();
        s.write_at(5, &[5]).unwrap();
        s.finish(32).unwrap();
        let got = s.into_consumer().0.0;
        assert_eq!(
            got,
            [
                (1, vec![4, 0, 1, 2, 0, 0, 3, 0]),
                (0, vec![0, 0, 0, 0, 0, 5, 0, 0])
            ]
        );
    }

    #[test]
    fn going_backwards_or_past_the_end_is_an_error() {
        let mut s = ChunkingSink::new(8, Collect::default());
        s.write_at(16, &[1]).unwrap();
        assert!(s.write_at(8, &[1]).is_err());
        let mut s = ChunkingSink::new(8, Collect::default());
        s.write_at(16, &[1]).unwrap();
        assert!(s.finish(16).is_err());
        assert!(ChunkingSink::new(8, Collect::default()).finish(12).is_err());
    }
}
