//! Reading layers ahead of the flattener, on threads of their own.
//!
//! Reader threads (one per core, at most [`MAX_READERS`]) take the layers
//! in order, each reading one blob, decompressing it and checking its
//! blob digest ([`LayerStream`]), and hand the uncompressed bytes over
//! that layer's `Pipe`; the flattening thread parses the tar from them
//! and hashes them for the diff_id as it goes. So decompression and the
//! blob digests overlap the tar parsing, the ext4 writing and the diff_id,
//! and the layers decompress at once, one per reader: decompression, one
//! core per stream, is otherwise the slowest stage. A pipe keeps a few
//! blocks in memory ([`DEPTH`] of [`BLOCK`] bytes); what a reader gets
//! ahead of the flattener past that goes to an unlinked spill file, within
//! [`SPILL_BUDGET`] bytes for all layers together. Memory stays a few MiB
//! whatever the layer sizes.
//!
//! The flattener sees what it saw reading a [`LayerStream`] itself: the
//! same bytes, the same read errors (a limit passed, a corrupt blob), the
//! same digest checks at the end of each layer, in the same order. The
//! image-wide byte limit, which depends on the layers below, is counted
//! here as the flattener reads; each reader caps its own layer. When the
//! flattener stops early (a bad entry), it closes every pipe and the
//! readers stop at their next put.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::detached::Detached;
use super::limits::Limits;
use super::pipe::{Closed, End, Pipe, PipeBounds, SpillBudget};
use super::{FlattenError, LayerReport, apply::apply_layer};
use crate::ext4::Ext4Builder;
use crate::oci::digest::HashReader;
use crate::oci::{Digest, Image, Layer, LayerDigests, LayerStream, LimitExceeded, SourceError};
use crate::pool::BlockPool;
use crate::sink::ImageSink;
use crate::tree::Tree;

/// Bytes in one block handed over.
pub const BLOCK: usize = 256 * 1024;
/// Blocks a layer's pipe holds in memory.
pub const DEPTH: usize = 16;
/// Layers decompressed at once, at most.
pub const MAX_READERS: usize = 4;
/// Spilled bytes all layers' pipes may hold together.
pub const SPILL_BUDGET: u64 = 4 << 30;

/// How far ahead to read: the readers, and what their pipes hold.
#[derive(Clone, Debug)]
pub(crate) struct Ahead {
    readers: usize,
    bounds: PipeBounds,
    spill_budget: u64,
}

impl Ahead {
    /// One reader per core (at most [`MAX_READERS`]), [`DEPTH`] blocks in
    /// memory per layer, spilling into the temporary directory.
    pub(crate) fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ahead {
            readers: cores.clamp(1, MAX_READERS),
            bounds: PipeBounds {
                block: BLOCK,
                mem_blocks: DEPTH,
                spill_dir: std::env::temp_dir(),
            },
            spill_budget: SPILL_BUDGET,
        }
    }

    #[cfg(test)]
    pub(crate) fn new(
        readers: usize,
        mem_blocks: usize,
        spill_dir: std::path::PathBuf,
        spill_budget: u64,
    ) -> Self {
        Ahead {
            readers,
            bounds: PipeBounds {
                block: BLOCK,
                mem_blocks,
                spill_dir,
            },
            spill_budget,
        }
    }
}

/// A reader thread's loop: the next layer nobody has taken, until none is
/// left or the flattener stops.
fn read_layers(image: &Image, limits: &Limits, pipes: &[Pipe], next: &AtomicUsize) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let (Some(layer), Some(pipe)) = (image.layers.get(i), pipes.get(i)) else {
            return;
        };
        if read_layer(image, layer, limits, pipe).is_err() {
            return;
        }
    }
}

/// Reads one layer into its pipe. `Err` when this reader should stop:
/// the flattener has, or this layer failed (which stops the flattener).
fn read_layer(image: &Image, layer: &Layer, limits: &Limits, pipe: &Pipe) -> Result<(), Closed> {
    let _gone = ReaderGone(pipe);
    let (mut stream, media_type) = match image.open_layer(layer) {
        Ok(opened) => opened,
        Err(e) => {
            pipe.opened(Err(e))?;
            return Err(Closed);
        }
    };
    // The image limit is the flattener's to count; this layer's is here.
    stream.set_limit("layer", limits.max_layer_bytes);
    let elsewhere = stream.hash_diff_id_elsewhere();
    pipe.opened(Ok((media_type, elsewhere)))?;
    loop {
        let mut block = pipe.block();
        match fill(&mut stream, &mut block) {
            Ok(0) => break,
            Ok(n) => pipe.put(block, n)?,
            Err(e) => {
                pipe.end(End::Failed(e));
                return Err(Closed);
            }
        }
    }
    pipe.end(End::Done(Box::new(stream)));
    Ok(())
}

/// Tells the pipe its reader has left, on every way out of
/// [`read_layer`] (a panic included).
struct ReaderGone<'a>(&'a Pipe);

impl Drop for ReaderGone<'_> {
    fn drop(&mut self) {
        self.0.reader_gone();
    }
}

/// Reads until `buf` is full or the stream ends.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One layer's bytes as they arrive through its pipe.
pub(super) struct Incoming<'a> {
    pipe: &'a Pipe,
    block: Vec<u8>,
    len: usize,
    pos: usize,
    end: Option<Box<LayerStream>>,
    failed: bool,
    /// Bytes read so far, and the image limit when it is the closer one.
    read: u64,
    limit: Option<LimitExceeded>,
}

impl<'a> Incoming<'a> {
    /// The bytes of `pipe`'s layer, failing past `limit` (the image
    /// limit, when it is closer than the layer's).
    pub(super) fn new(pipe: &'a Pipe, limit: Option<LimitExceeded>) -> Self {
        Incoming {
            pipe,
            block: Vec::new(),
            len: 0,
            pos: 0,
            end: None,
            failed: false,
            read: 0,
            limit,
        }
    }

    /// The next bytes, the end, or the reader's error.
    fn next(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("reading this layer failed already"));
        }
        match self.pipe.next(&mut self.block) {
            Ok(n) => {
                (self.len, self.pos) = (n, 0);
                Ok(())
            }
            Err(End::Done(stream)) => {
                self.end = Some(stream);
                Ok(())
            }
            Err(End::Failed(e)) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

impl Read for Incoming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.len {
                let mut n = buf.len().min(self.len - self.pos);
                if let Some(limit) = &self.limit {
                    // One byte past the limit at most, as a LayerStream
                    // reads: reaching it is fine, passing it the error.
                    let room = (limit.limit + 1).saturating_sub(self.read);
                    n = n.min(usize::try_from(room).unwrap_or(usize::MAX));
                    if n == 0 || self.read + n as u64 > limit.limit {
                        return Err(io::Error::other(limit.clone()));
                    }
                }
                buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
                self.pos += n;
                self.read += n as u64;
                return Ok(n);
            }
            if self.end.is_some() {
                return Ok(0);
            }
            self.next()?;
        }
    }
}

/// Reads the rest of a layer (through `hashing`, so the diff_id covers
/// it) and checks its digests.
pub(super) fn finish(
    mut hashing: HashReader<Incoming<'_>>,
    name: &Digest,
) -> Result<LayerDigests, SourceError> {
    hashing.drain().map_err(|source| SourceError::ReadBlob {
        digest: name.clone(),
        source,
    })?;
    let (incoming, diff_id, _) = hashing.finish();
    let stream = incoming.end.ok_or_else(|| SourceError::ReadBlob {
        digest: name.clone(),
        source: io::Error::other("the layer reader thread stopped"),
    })?;
    stream.finish_with(diff_id)
}

/// The image limit for a layer above `image_bytes` of layers, when it is
/// closer than the layer limit (which the layer's reader applies).
pub(super) fn image_limit(limits: &Limits, image_bytes: u64) -> Option<LimitExceeded> {
    let image_left = limits.max_image_bytes.saturating_sub(image_bytes);
    (image_left < limits.max_layer_bytes).then_some(LimitExceeded {
        what: "image",
        limit: image_left,
    })
}

/// Closes every pipe when the flattener is done with them, however it
/// returns, so no reader is left waiting when the scope joins it.
pub(super) struct CloseAll<'a>(pub(super) &'a [Pipe]);

impl Drop for CloseAll<'_> {
    fn drop(&mut self) {
        for pipe in self.0 {
            pipe.close();
        }
    }
}

/// [`super::flatten_layers_limited`] with the layers read ahead on
/// threads of their own (see the module docs).
pub fn flatten_layers_ahead<S: ImageSink>(
    image: &Image,
    builder: &mut Ext4Builder<S>,
    limits: &Limits,
) -> Result<(Tree, Vec<LayerReport>), FlattenError> {
    flatten_layers_with(image, builder, limits, &Ahead::for_this_machine())
}

pub(crate) fn flatten_layers_with<S: ImageSink>(
    image: &Image,
    builder: &mut Ext4Builder<S>,
    limits: &Limits,
    ahead: &Ahead,
) -> Result<(Tree, Vec<LayerReport>), FlattenError> {
    let budget = Arc::new(SpillBudget::new(ahead.spill_budget));
    let readers = ahead.readers.clamp(1, image.layers.len().max(1));
    // Every reader's pipe full, and a block in each hand.
    let pool = Arc::new(BlockPool::new(
        ahead.bounds.block,
        readers * (ahead.bounds.mem_blocks + 2),
    ));
    let pipes: Vec<Pipe> = image
        .layers
        .iter()
        .map(|_| Pipe::new(ahead.bounds.clone(), budget.clone(), pool.clone()))
        .collect();
    let next = AtomicUsize::new(0);
    let detached = Detached::new(builder, image.layers.len());
    std::thread::scope(|scope| {
        for _ in 0..readers {
            scope.spawn(|| read_layers(image, limits, &pipes, &next));
        }
        if let Some(detached) = &detached {
            return detached.flatten(scope, image, builder, limits, &pipes, readers);
        }
        // Dropped before the scope joins the readers, on every return.
        let _close = CloseAll(&pipes);
        let mut tree = Tree::new();
        let mut reports = Vec::with_capacity(image.layers.len());
        let mut image_bytes = 0u64;
        for (layer, pipe) in image.layers.iter().zip(&pipes) {
            builder.begin_layer();
            let (media_type, hash_here) = match pipe.take_opened() {
                Some(opened) => opened.map_err(|e| super::explain(image, layer, e))?,
                None => return Err(FlattenError::ReaderStopped),
            };
            let incoming = Incoming::new(pipe, image_limit(limits, image_bytes));
            let mut hashing = if hash_here {
                HashReader::new(incoming)
            } else {
                HashReader::counting(incoming)
            };
            let entries = apply_layer(&mut hashing, layer.name(), limits, &mut tree, builder)
                .map_err(|e| super::explain(image, layer, e))?;
            let digests =
                finish(hashing, layer.name()).map_err(|e| super::explain(image, layer, e))?;
            image_bytes += digests.uncompressed_bytes;
            reports.push(LayerReport::new(digests, media_type, entries));
            // Its spill given back: a reader waiting for budget may go on.
            for later in &pipes {
                later.nudge();
            }
        }
        Ok((tree, reports))
    })
}
