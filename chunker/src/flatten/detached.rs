//! Reading layers into detached layers, at once, and applying them in
//! order.
//!
//! When the sink takes detached layers ([`crate::sink::ImageSink::detach`]),
//! preparer threads (as many as the readers) take the layers in order,
//! each parsing one layer's tar from its pipe, hashing it for the diff_id
//! and writing its file data into a [`LayerWriter`] of its own ([`prepare`]).
//! The entries go through the layer's [`Lane`] to the flattening thread,
//! which applies them to the tree in layer order, moving each file's
//! extents to where the layer starts, and attaches each layer once it is
//! read. So the layers above the first are parsed, written and encrypted
//! while the first is still being decompressed, instead of after it.
//!
//! The image is the one the in-order flattener writes: a layer's bytes do
//! not depend on where it starts, and the tree gets the same entries in
//! the same order. Errors too: entries are applied in order, and the image
//! limit, which depends on the layers below and so cannot be applied while
//! a layer is read, is applied when the layer's entries are, from where
//! each entry's headers and data ended in the layer's bytes.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::Scope;

use super::apply::LayerApplier;
use super::limits::Limits;
use super::pipe::Pipe;
use super::prepare::{Prepared, prepare_layer, tar_error};
use super::readahead::{CloseAll, Incoming, finish, image_limit};
use super::tarstream::TarError;
use super::{FlattenError, LayerError, LayerReport};
use crate::ext4::{Ext4Builder, LayerWriter};
use crate::oci::digest::HashReader;
use crate::oci::{Image, LayerDigests, LimitExceeded, SourceError};
use crate::sink::ImageSink;
use crate::tree::Tree;

/// Bytes of prepared entries a layer's lane holds before its preparer
/// waits for the flattener (entries are a few hundred bytes each; one
/// larger than this still goes through, alone).
pub const LANE_BYTES: usize = 16 << 20;

/// How a layer's preparation ended.
enum LaneEnd {
    /// Its reader could not open it.
    Open(SourceError),
    /// Its reader stopped without saying why (the flattener stopped).
    Stopped,
    /// Read to its end or to its first error.
    Read(Box<LayerRead>),
}

/// A layer read by a preparer.
struct LayerRead {
    media_type: String,
    /// Its entry count, or the error that stopped the tar.
    entries: Result<u64, LayerError>,
    /// Bytes of the layer read when the tar ended or failed.
    tar_end: u64,
    /// Bytes read in all, the rest after the tar included.
    total: u64,
    /// The digests checked (`None` when the tar failed first).
    digests: Option<Result<LayerDigests, SourceError>>,
    writer: LayerWriter,
}

#[derive(Default)]
struct LaneState {
    queue: Vec<Prepared>,
    bytes: usize,
    end: Option<LaneEnd>,
    closed: bool,
}

/// One layer's prepared entries, from its preparer to the flattener, in
/// batches ([`BATCH`]): a hand-over is a lock and often a wake-up.
struct Lane {
    state: Mutex<LaneState>,
    changed: Condvar,
    /// Bytes of entries it holds before the preparer waits.
    budget: usize,
}

/// Entries a preparer hands over at once.
const BATCH: usize = 64;

impl Default for Lane {
    fn default() -> Self {
        Lane::new(LANE_BYTES)
    }
}

/// The flattener has stopped.
struct Closed;

impl Lane {
    fn new(budget: usize) -> Self {
        Lane {
            state: Mutex::default(),
            changed: Condvar::new(),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        // A panicked holder leaves nothing half-updated that matters here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, LaneState>) -> MutexGuard<'a, LaneState> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Queue entries, waiting while the lane is full.
    fn push(&self, batch: &mut Vec<Prepared>) -> Result<(), Closed> {
        if batch.is_empty() {
            return Ok(());
        }
        let size: usize = batch.iter().map(footprint).sum();
        let mut s = self.lock();
        while !s.closed && !s.queue.is_empty() && s.bytes + size > self.budget {
            s = self.wait(s);
        }
        if s.closed {
            return Err(Closed);
        }
        s.bytes += size;
        s.queue.append(batch);
        self.changed.notify_all();
        Ok(())
    }

    fn end(&self, end: LaneEnd) {
        let mut s = self.lock();
        s.end.get_or_insert(end);
        self.changed.notify_all();
    }

    /// The entries queued (at least one), or how the layer ended.
    fn take(&self) -> Result<Vec<Prepared>, LaneEnd> {
        let mut s = self.lock();
        loop {
            if !s.queue.is_empty() {
                s.bytes = 0;
                self.changed.notify_all();
                return Ok(std::mem::take(&mut s.queue));
            }
            if let Some(end) = s.end.take() {
                return Err(end);
            }
            s = self.wait(s);
        }
    }

    fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.queue.clear();
        self.changed.notify_all();
    }
}

/// Roughly what a prepared entry holds in memory.
fn footprint(p: &Prepared) -> usize {
    let e = &p.entry;
    let pax: usize = e
        .pax
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len() + 48)
        .sum();
    let extents = match p.apply.as_ref().and_then(|a| a.data.as_ref()) {
        Some(Ok(d)) => d.extents.len() * std::mem::size_of::<crate::tree::Extent>(),
        _ => 0,
    };
    std::mem::size_of::<Prepared>()
        + e.path.len()
        + e.link.as_ref().map_or(0, Vec::len)
        + pax
        + e.gnu_sparse.as_ref().map_or(0, |g| g.map.len() * 16)
        + extents
        + p.name.len()
}

/// Closes every lane when the flattener returns, so no preparer waits on.
struct CloseLanes<'a>(&'a [Lane]);

impl Drop for CloseLanes<'_> {
    fn drop(&mut self) {
        for lane in self.0 {
            lane.close();
        }
    }
}

/// Tells the lane its preparer has left, on every way out (a panic
/// included): the flattener then stops instead of waiting.
struct PreparerGone<'a>(&'a Lane);

impl Drop for PreparerGone<'_> {
    fn drop(&mut self) {
        self.0.end(LaneEnd::Stopped);
    }
}

/// A preparer thread's loop: the next layer nobody has taken, until none
/// is left.
fn prepare_layers(
    image: &Image,
    limits: &Limits,
    pipes: &[Pipe],
    lanes: &[Lane],
    writers: &[Mutex<Option<LayerWriter>>],
    next: &AtomicUsize,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let (Some(layer), Some(pipe), Some(lane), Some(writer)) = (
            image.layers.get(i),
            pipes.get(i),
            lanes.get(i),
            writers.get(i),
        ) else {
            return;
        };
        let _gone = PreparerGone(lane);
        let writer = writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (Some(mut writer), Some(opened)) = (writer, pipe.take_opened()) else {
            return;
        };
        let (media_type, hash_here) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                lane.end(LaneEnd::Open(e));
                continue;
            }
        };
        // The layer limit is its reader's; the image limit is applied as
        // the entries are (see the module docs).
        let incoming = Incoming::new(pipe, None);
        let mut hashing = if hash_here {
            HashReader::new(incoming)
        } else {
            HashReader::counting(incoming)
        };
        let mut closed = false;
        let mut batch = Vec::with_capacity(BATCH);
        let entries = prepare_layer(
            &mut hashing,
            layer.name(),
            limits,
            &mut writer,
            |h| h.count(),
            |p| {
                batch.push(p);
                if batch.len() < BATCH {
                    return Ok(());
                }
                lane.push(&mut batch).map_err(|Closed| {
                    closed = true;
                    LayerError::Read {
                        layer: layer.name().clone(),
                        source: io::Error::other("the flattener stopped"),
                    }
                })
            },
        );
        if closed || lane.push(&mut batch).is_err() {
            return;
        }
        let tar_end = hashing.count();
        let (digests, total) = if entries.is_ok() {
            let drained = hashing.drain();
            let total = hashing.count();
            let digests = match drained {
                Ok(_) => finish(hashing, layer.name()),
                Err(source) => Err(SourceError::ReadBlob {
                    digest: layer.name().clone(),
                    source,
                }),
            };
            (Some(digests), total)
        } else {
            (None, tar_end)
        };
        lane.end(LaneEnd::Read(Box::new(LayerRead {
            media_type,
            entries,
            tar_end,
            total,
            digests,
            writer,
        })));
        // Its spill given back: a reader waiting for budget may go on.
        for later in pipes {
            later.nudge();
        }
    }
}

/// The error of passing `limit` after the entry `last`, as the in-order
/// flattener gives it.
fn limit_error(
    layer: &crate::oci::Layer,
    limit: &LimitExceeded,
    last: Option<String>,
) -> LayerError {
    tar_error(
        layer.name(),
        TarError::Io(io::Error::other(limit.clone())),
        last,
    )
}

/// Every layer of an image detached: its writer and its lane.
pub(super) struct Detached {
    lanes: Vec<Lane>,
    writers: Vec<Mutex<Option<LayerWriter>>>,
    next: AtomicUsize,
}

impl Detached {
    /// A detached writer for each of `layers` layers, or `None` when the
    /// builder's sink is written in order only.
    pub(super) fn new<S: ImageSink>(builder: &mut Ext4Builder<S>, layers: usize) -> Option<Self> {
        let writers = (0..layers)
            .map(|_| builder.detach_layer().map(|w| Mutex::new(Some(w))))
            .collect::<Option<Vec<_>>>()?;
        Some(Detached {
            lanes: (0..layers).map(|_| Lane::default()).collect(),
            writers,
            next: AtomicUsize::new(0),
        })
    }

    /// Flatten, `preparers` threads reading the layers from `pipes`
    /// (which the readers are filling) into their writers.
    pub(super) fn flatten<'scope, S: ImageSink>(
        &'scope self,
        scope: &'scope Scope<'scope, '_>,
        image: &'scope Image,
        builder: &mut Ext4Builder<S>,
        limits: &'scope Limits,
        pipes: &'scope [Pipe],
        preparers: usize,
    ) -> Result<(Tree, Vec<LayerReport>), FlattenError> {
        for _ in 0..preparers {
            scope.spawn(move || {
                prepare_layers(image, limits, pipes, &self.lanes, &self.writers, &self.next)
            });
        }
        flatten_lanes(image, builder, limits, pipes, &self.lanes)
    }
}

/// The flattener's side: each layer's entries applied, then the layer
/// attached, in order.
fn flatten_lanes<S: ImageSink>(
    image: &Image,
    builder: &mut Ext4Builder<S>,
    limits: &Limits,
    pipes: &[Pipe],
    lanes: &[Lane],
) -> Result<(Tree, Vec<LayerReport>), FlattenError> {
    // Dropped before the scope joins the threads, on every return.
    let _close = (CloseLanes(lanes), CloseAll(pipes));
    let mut tree = Tree::new();
    let mut reports = Vec::with_capacity(image.layers.len());
    let mut image_bytes = 0u64;
    for (layer, lane) in image.layers.iter().zip(lanes) {
        let start = builder.layer_start();
        let limit = image_limit(limits, image_bytes);
        let (entries, read) = apply_lane(layer, lane, limits, limit.as_ref(), &mut tree, start)
            .map_err(|e| super::explain(image, layer, e))?;
        let digests = read
            .digests
            .unwrap_or_else(|| {
                Err(SourceError::ReadBlob {
                    digest: layer.name().clone(),
                    source: io::Error::other("the layer was not read to its end"),
                })
            })
            .map_err(|e| super::explain(image, layer, e))?;
        builder
            .attach_layer(read.writer)
            .map_err(crate::ext4::Ext4Error::from)?;
        image_bytes += digests.uncompressed_bytes;
        reports.push(LayerReport::new(digests, read.media_type, entries));
    }
    Ok((tree, reports))
}

/// Apply one layer's entries as they come through its lane, its data
/// starting at block `start`; its entry count and the rest of its read.
fn apply_lane(
    layer: &crate::oci::Layer,
    lane: &Lane,
    limits: &Limits,
    limit: Option<&LimitExceeded>,
    tree: &mut Tree,
    start: u64,
) -> Result<(u64, LayerRead), FlattenError> {
    let past = |at: u64| limit.is_some_and(|l| at > l.limit);
    let mut applier = LayerApplier::new(layer.name());
    let mut last: Option<String> = None;
    loop {
        let batch = match lane.take() {
            Ok(batch) => batch,
            Err(LaneEnd::Read(read)) => {
                let mut read = *read;
                if let Some(l) = limit.filter(|_| past(read.tar_end)) {
                    return Err(limit_error(layer, l, last).into());
                }
                let entries =
                    std::mem::replace(&mut read.entries, Ok(0)).map_err(FlattenError::from)?;
                if let Some(l) = limit.filter(|_| past(read.total)) {
                    // Past the limit after the tar, where the in-order
                    // flattener reads the rest for the digests.
                    return Err(SourceError::ReadBlob {
                        digest: layer.name().clone(),
                        source: io::Error::other(l.clone()),
                    }
                    .into());
                }
                return Ok((entries, read));
            }
            Err(LaneEnd::Open(e)) => return Err(e.into()),
            Err(LaneEnd::Stopped) => return Err(FlattenError::ReaderStopped),
        };
        for mut p in batch {
            if let Some(l) = limit.filter(|_| past(p.header_end)) {
                return Err(limit_error(layer, l, last).into());
            }
            last = Some(p.name.clone());
            if let Some(l) = limit.filter(|_| past(p.data_end))
                && let Some(a) = &mut p.apply
                && a.data.is_some()
            {
                // Its data passed the limit: applying it fails there.
                a.data = Some(Err(super::EntryError::TooLarge(l.clone())));
                applier.apply(p, limits, tree, start)?;
                return Err(limit_error(layer, l, last).into());
            }
            applier.apply(p, limits, tree, start)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::flatten::tarstream::TarEntry;

    fn entry(name: &str) -> Prepared {
        Prepared {
            entry: TarEntry {
                header: tar::Header::new_ustar(),
                path: name.as_bytes().to_vec(),
                link: None,
                pax: None,
                size: 0,
                gnu_sparse: None,
            },
            name: name.to_owned(),
            header_end: 0,
            data_end: 0,
            apply: None,
        }
    }

    #[test]
    fn a_full_lane_holds_its_preparer_until_the_flattener_takes_the_entries() {
        let one = footprint(&entry("a"));
        let lane = Lane::new(2 * one);
        let pushed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let preparer = s.spawn(|| {
                for name in ["a", "b", "c"] {
                    lane.push(&mut vec![entry(name)]).map_err(|_| ()).unwrap();
                    pushed.fetch_add(1, Ordering::SeqCst);
                }
                lane.end(LaneEnd::Stopped);
            });
            // Two fit; the third waits (long enough to see it would not).
            while pushed.load(Ordering::SeqCst) < 2 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(pushed.load(Ordering::SeqCst), 2);
            let mut names = Vec::new();
            while let Ok(batch) = lane.take() {
                names.extend(batch.into_iter().map(|p| p.name));
            }
            assert_eq!(names, ["a", "b", "c"]);
            preparer.join().unwrap();
        });
    }

    #[test]
    fn a_batch_larger_than_the_lane_goes_alone_and_closing_frees_a_waiter() {
        let lane = Lane::new(1);
        let mut batch = vec![entry("big"), entry("bigger")];
        lane.push(&mut batch).map_err(|_| ()).unwrap();
        assert!(batch.is_empty(), "handed over");
        std::thread::scope(|s| {
            let waiting = s.spawn(|| lane.push(&mut vec![entry("next")]).is_err());
            std::thread::sleep(Duration::from_millis(50));
            lane.close();
            assert!(waiting.join().unwrap(), "a closed lane refuses entries");
        });
        // A preparer that leaves (or panics) ends the lane.
        let lane = Lane::default();
        drop(PreparerGone(&lane));
        assert!(matches!(lane.take(), Err(LaneEnd::Stopped)));
    }
}
