//! Reading layers ahead of the flattener, on a thread of their own.
//!
//! One thread opens the layers in order, reads each blob, decompresses it
//! and checks its blob digest ([`LayerStream`]), and hands the uncompressed
//! bytes over a bounded channel; the flattening thread parses the tar from
//! them and hashes them for the diff_id as it goes. So decompression and
//! the blob digest overlap the tar parsing, the ext4 writing and the
//! diff_id, and the reader runs into the next layer while the flattener
//! finishes this one. The channel holds [`DEPTH`] blocks of [`BLOCK`]
//! bytes: memory stays a few MiB whatever the layer sizes.
//!
//! The flattener sees what it saw reading a [`LayerStream`] itself: the
//! same bytes, the same read errors (a limit passed, a corrupt blob), the
//! same digest checks at the end of each layer, in the same order. When it
//! stops early (a bad entry), it drops the channel and the reader stops at
//! its next send.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use super::limits::Limits;
use super::{FlattenError, LayerReport, apply::apply_layer};
use crate::ext4::Ext4Builder;
use crate::oci::digest::HashReader;
use crate::oci::{Digest, Image, LayerDigests, LayerStream, SourceError};
use crate::sink::ImageSink;
use crate::tree::Tree;

/// Bytes in one block handed over.
pub const BLOCK: usize = 256 * 1024;
/// Blocks the channel holds.
pub const DEPTH: usize = 16;

/// What the reader sends, per layer: `Open`, then `Data`… and `End`, or
/// `Failed` after which it sends nothing more.
enum Msg {
    /// The layer is open (its media type, and whether the flattener must
    /// hash it for the diff_id), or could not be opened.
    Open(Result<(String, bool), SourceError>),
    /// The next bytes: the first `.1` of the block.
    Data(Vec<u8>, usize),
    /// Reading failed; the error the flattener would have seen.
    Failed(io::Error),
    /// Every byte has been sent: the stream, to be finished (digests
    /// checked) by the flattener.
    End(Box<LayerStream>),
}

/// The reader thread's loop over the layers.
fn read_layers(image: &Image, limits: &Limits, tx: SyncSender<Msg>, spare: Receiver<Vec<u8>>) {
    let mut image_bytes = 0u64;
    for layer in &image.layers {
        let (mut stream, media_type) = match image.open_layer(layer) {
            Ok(opened) => opened,
            Err(e) => {
                let _ = tx.send(Msg::Open(Err(e)));
                return;
            }
        };
        super::set_layer_limit(&mut stream, limits, image_bytes);
        let elsewhere = stream.hash_diff_id_elsewhere();
        if tx.send(Msg::Open(Ok((media_type, elsewhere)))).is_err() {
            return;
        }
        loop {
            let mut block = spare.try_recv().unwrap_or_else(|_| vec![0; BLOCK]);
            match fill(&mut stream, &mut block) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Msg::Data(block, n)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Msg::Failed(e));
                    return;
                }
            }
        }
        // All read: what is left of the limit is known.
        image_bytes += stream.bytes_read();
        if tx.send(Msg::End(Box::new(stream))).is_err() {
            return;
        }
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

/// One layer's bytes as they arrive from the reader thread.
struct Incoming<'a> {
    rx: &'a Receiver<Msg>,
    spare: &'a Sender<Vec<u8>>,
    block: Vec<u8>,
    len: usize,
    pos: usize,
    end: Option<Box<LayerStream>>,
    failed: bool,
}

impl Incoming<'_> {
    /// The next message with bytes, the end, or the reader's error.
    fn next(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("reading this layer failed already"));
        }
        let old = std::mem::take(&mut self.block);
        if !old.is_empty() {
            // The reader may be gone; then the block just goes.
            let _ = self.spare.send(old);
        }
        match self.rx.recv() {
            Ok(Msg::Data(block, n)) => {
                (self.block, self.len, self.pos) = (block, n, 0);
                Ok(())
            }
            Ok(Msg::End(stream)) => {
                self.end = Some(stream);
                Ok(())
            }
            Ok(Msg::Failed(e)) => {
                self.failed = true;
                Err(e)
            }
            Ok(Msg::Open(_)) => Err(io::Error::other("layer reader: a layer opened early")),
            Err(_) => Err(io::Error::other("the layer reader thread stopped")),
        }
    }
}

impl Read for Incoming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.len {
                let n = buf.len().min(self.len - self.pos);
                buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
                self.pos += n;
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
fn finish(
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

/// [`super::flatten_layers_limited`] with the layers read ahead on a
/// thread of their own (see the module docs).
pub fn flatten_layers_ahead<S: ImageSink>(
    image: &Image,
    builder: &mut Ext4Builder<S>,
    limits: &Limits,
) -> Result<(Tree, Vec<LayerReport>), FlattenError> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(DEPTH);
        let (spare_tx, spare_rx) = channel();
        scope.spawn(move || read_layers(image, limits, tx, spare_rx));
        // Returning drops `rx`, so a reader blocked on a full channel
        // stops before the scope waits for it.
        let mut tree = Tree::new();
        let mut reports = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            builder.begin_layer();
            let (media_type, hash_here) = match rx.recv() {
                Ok(Msg::Open(opened)) => opened?,
                _ => return Err(FlattenError::ReaderStopped),
            };
            let incoming = Incoming {
                rx: &rx,
                spare: &spare_tx,
                block: Vec::new(),
                len: 0,
                pos: 0,
                end: None,
                failed: false,
            };
            let mut hashing = if hash_here {
                HashReader::new(incoming)
            } else {
                HashReader::counting(incoming)
            };
            let entries = apply_layer(&mut hashing, layer.name(), limits, &mut tree, builder)?;
            let digests = finish(hashing, layer.name())?;
            reports.push(LayerReport::new(digests, media_type, entries));
        }
        Ok((tree, reports))
    })
}
