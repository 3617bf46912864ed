//! Reading layers into detached layers, at once, and applying them in
//! order.
//!
//! When the sink takes detached layers ([`crate::sink::ImageSink::detach`]),
//! preparer threads (as many as the readers) take the layers in order,
//! each parsing one layer's tar from its pipe, hashing it for the diff_id
//! and writing its file data into a [`LayerWriter`] of its own ([`prepare`]).
//! The entries go through the layer's lane ([`Lanes`]) to the flattening thread,
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

/// Bytes of prepared entries the lane of the layer being applied holds
/// before its preparer waits for the flattener (entries are a few hundred
/// bytes each; a batch larger than this still goes through, alone).
pub const LANE_BYTES: usize = 16 << 20;

/// Bytes of prepared entries the lanes of the layers above it hold
/// together before their preparers wait: a layer's entries wait for the
/// layers below it to be applied, and there may be many layers.
pub const AHEAD_BYTES: usize = 32 << 20;

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
}

struct Shared {
    lanes: Vec<LaneState>,
    /// Bytes queued in all lanes.
    bytes: usize,
    /// The layer the flattener applies.
    current: usize,
    closed: bool,
}

/// Each layer's prepared entries, from its preparer to the flattener, in
/// batches ([`BATCH`]: a hand-over is a lock and often a wake-up). The
/// lane of the layer being applied holds [`LANE_BYTES`]; those above it
/// [`AHEAD_BYTES`] together, so memory stays bounded however many layers
/// are read ahead, and the layer the flattener waits for can always go on.
struct Lanes {
    state: Mutex<Shared>,
    changed: Condvar,
    lane_budget: usize,
    ahead_budget: usize,
}

/// Entries a preparer hands over at once.
const BATCH: usize = 64;

/// The flattener has stopped.
struct Closed;

impl Lanes {
    fn new(layers: usize, lane_budget: usize, ahead_budget: usize) -> Self {
        Lanes {
            state: Mutex::new(Shared {
                lanes: (0..layers).map(|_| LaneState::default()).collect(),
                bytes: 0,
                current: 0,
                closed: false,
            }),
            changed: Condvar::new(),
            lane_budget,
            ahead_budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panicked holder leaves nothing half-updated that matters here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Whether layer `i`'s lane has no room for `size` more bytes.
    fn full(&self, s: &Shared, i: usize, size: usize) -> bool {
        let lane = &s.lanes[i];
        if i == s.current {
            !lane.queue.is_empty() && lane.bytes + size > self.lane_budget
        } else {
            let ahead = s.bytes - s.lanes[s.current].bytes;
            ahead + size > self.ahead_budget
        }
    }

    /// Queue entries of layer `i`, waiting while there is no room.
    fn push(&self, i: usize, batch: &mut Vec<Prepared>) -> Result<(), Closed> {
        if batch.is_empty() {
            return Ok(());
        }
        let size: usize = batch.iter().map(footprint).sum();
        let mut s = self.lock();
        while !s.closed && self.full(&s, i, size) {
            s = self.wait(s);
        }
        if s.closed {
            return Err(Closed);
        }
        s.bytes += size;
        let lane = &mut s.lanes[i];
        lane.bytes += size;
        lane.queue.append(batch);
        self.changed.notify_all();
        Ok(())
    }

    fn end(&self, i: usize, end: LaneEnd) {
        let mut s = self.lock();
        s.lanes[i].end.get_or_insert(end);
        self.changed.notify_all();
    }

    /// Layer `i`'s entries queued (at least one), or how it ended; `i`
    /// is the layer being applied from now on.
    fn take(&self, i: usize) -> Result<Vec<Prepared>, LaneEnd> {
        let mut s = self.lock();
        if s.current != i {
            s.current = i;
            self.changed.notify_all();
        }
        loop {
            let lane = &mut s.lanes[i];
            if !lane.queue.is_empty() {
                let bytes = std::mem::take(&mut lane.bytes);
                let queue = std::mem::take(&mut lane.queue);
                s.bytes -= bytes;
                self.changed.notify_all();
                return Ok(queue);
            }
            if let Some(end) = lane.end.take() {
                return Err(end);
            }
            s = self.wait(s);
        }
    }

    fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        for lane in &mut s.lanes {
            lane.queue.clear();
        }
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

/// Closes the lanes when the flattener returns, so no preparer waits on.
struct CloseLanes<'a>(&'a Lanes);

impl Drop for CloseLanes<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Tells a layer's lane its preparer has left, on every way out (a panic
/// included): the flattener then stops instead of waiting.
struct PreparerGone<'a>(&'a Lanes, usize);

impl Drop for PreparerGone<'_> {
    fn drop(&mut self) {
        self.0.end(self.1, LaneEnd::Stopped);
    }
}

/// A preparer thread's loop: the next layer nobody has taken, until none
/// is left.
fn prepare_layers(
    image: &Image,
    limits: &Limits,
    pipes: &[Pipe],
    lanes: &Lanes,
    writers: &[Mutex<Option<LayerWriter>>],
    next: &AtomicUsize,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let (Some(layer), Some(pipe), Some(writer)) =
            (image.layers.get(i), pipes.get(i), writers.get(i))
        else {
            return;
        };
        let _gone = PreparerGone(lanes, i);
        let writer = writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (Some(mut writer), Some(opened)) = (writer, pipe.take_opened()) else {
            return;
        };
        let (media_type, hash_here) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                lanes.end(i, LaneEnd::Open(e));
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
                lanes.push(i, &mut batch).map_err(|Closed| {
                    closed = true;
                    LayerError::Read {
                        layer: layer.name().clone(),
                        source: io::Error::other("the flattener stopped"),
                    }
                })
            },
        );
        if closed || lanes.push(i, &mut batch).is_err() {
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
        lanes.end(
            i,
            LaneEnd::Read(Box::new(LayerRead {
                media_type,
                entries,
                tar_end,
                total,
                digests,
                writer,
            })),
        );
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
    lanes: Lanes,
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
            lanes: Lanes::new(layers, LANE_BYTES, AHEAD_BYTES),
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
    lanes: &Lanes,
) -> Result<(Tree, Vec<LayerReport>), FlattenError> {
    // Dropped before the scope joins the threads, on every return.
    let _close = (CloseLanes(lanes), CloseAll(pipes));
    let mut tree = Tree::new();
    let mut reports = Vec::with_capacity(image.layers.len());
    let mut image_bytes = 0u64;
    for (i, layer) in image.layers.iter().enumerate() {
        let start = builder.layer_start();
        let limit = image_limit(limits, image_bytes);
        let (entries, read) =
            apply_lane(layer, (lanes, i), limits, limit.as_ref(), &mut tree, start)
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
    (lanes, i): (&Lanes, usize),
    limits: &Limits,
    limit: Option<&LimitExceeded>,
    tree: &mut Tree,
    start: u64,
) -> Result<(u64, LayerRead), FlattenError> {
    // The limit, when `at` bytes are past it.
    let passed = |at: u64| limit.filter(|l| at > l.limit);
    let mut applier = LayerApplier::new(layer.name());
    let mut last: Option<String> = None;
    loop {
        let batch = match lanes.take(i) {
            Ok(batch) => batch,
            Err(LaneEnd::Read(read)) => {
                let mut read = *read;
                if let Some(l) = passed(read.tar_end) {
                    return Err(limit_error(layer, l, last).into());
                }
                let entries =
                    std::mem::replace(&mut read.entries, Ok(0)).map_err(FlattenError::from)?;
                if let Some(l) = passed(read.total) {
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
            if let Some(l) = passed(p.header_end) {
                return Err(limit_error(layer, l, last).into());
            }
            if limit.is_some() {
                // Only a limit's error names the last entry.
                last = Some(p.name.clone());
            }
            if let Some(l) = passed(p.data_end)
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

    /// Waits (a few seconds at most) until `n` entries are pushed.
    fn until_pushed(pushed: &AtomicUsize, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pushed.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {pushed:?} pushed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

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
        let lanes = Lanes::new(1, 2 * one, 0);
        let pushed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let preparer = s.spawn(|| {
                for name in ["a", "b", "c"] {
                    lanes
                        .push(0, &mut vec![entry(name)])
                        .map_err(|_| ())
                        .unwrap();
                    pushed.fetch_add(1, Ordering::SeqCst);
                }
                lanes.end(0, LaneEnd::Stopped);
            });
            // Two fit; the third waits (long enough to see it would not).
            until_pushed(&pushed, 2);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(pushed.load(Ordering::SeqCst), 2);
            let mut names = Vec::new();
            while let Ok(batch) = lanes.take(0) {
                names.extend(batch.into_iter().map(|p| p.name));
            }
            assert_eq!(names, ["a", "b", "c"]);
            preparer.join().unwrap();
        });
    }

    #[test]
    fn layers_ahead_share_a_budget_and_go_on_once_they_are_applied() {
        // Names of one length: entries of one footprint.
        let one = footprint(&entry("a1"));
        // Layers 1 and 2 wait for layer 0; together they may hold two
        // entries.
        let lanes = Lanes::new(3, 100 * one, 2 * one);
        let pushed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            // As a preparer does: a layer ended before the next is begun.
            let ahead = s.spawn(|| {
                for (i, name) in [(1, "b1"), (2, "c1"), (2, "c2"), (2, "c3")] {
                    if name == "c1" {
                        lanes.end(1, LaneEnd::Stopped);
                    }
                    lanes
                        .push(i, &mut vec![entry(name)])
                        .map_err(|_| ())
                        .unwrap();
                    pushed.fetch_add(1, Ordering::SeqCst);
                }
                lanes.end(2, LaneEnd::Stopped);
            });
            until_pushed(&pushed, 2);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(
                pushed.load(Ordering::SeqCst),
                2,
                "a third is over the budget"
            );
            // Layer 0, applied now, is not held back by the layers above.
            lanes
                .push(0, &mut vec![entry("a1"), entry("a2"), entry("a3")])
                .map_err(|_| ())
                .unwrap();
            lanes.end(0, LaneEnd::Stopped);
            assert_eq!(lanes.take(0).ok().map(|b| b.len()), Some(3));
            assert!(lanes.take(0).is_err());
            let mut names = Vec::new();
            for i in 1..3 {
                while let Ok(batch) = lanes.take(i) {
                    names.extend(batch.into_iter().map(|p| p.name));
                }
            }
            assert_eq!(names, ["b1", "c1", "c2", "c3"]);
            ahead.join().unwrap();
        });
    }

    #[test]
    fn a_batch_larger_than_the_lane_goes_alone_and_closing_frees_a_waiter() {
        let lanes = Lanes::new(1, 1, 1);
        let mut batch = vec![entry("big"), entry("bigger")];
        lanes.push(0, &mut batch).map_err(|_| ()).unwrap();
        assert!(batch.is_empty(), "handed over");
        std::thread::scope(|s| {
            let waiting = s.spawn(|| lanes.push(0, &mut vec![entry("next")]).is_err());
            std::thread::sleep(Duration::from_millis(50));
            lanes.close();
            assert!(waiting.join().unwrap(), "closed lanes refuse entries");
        });
        // A preparer that leaves (or panics) ends its lane.
        let lanes = Lanes::new(2, LANE_BYTES, AHEAD_BYTES);
        drop(PreparerGone(&lanes, 1));
        assert!(matches!(lanes.take(1), Err(LaneEnd::Stopped)));
    }
}
