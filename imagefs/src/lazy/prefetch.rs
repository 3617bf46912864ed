//! Prefetch: fetch an ordered list of chunks (a start profile's order)
//! before the guest asks for them, so a cold start pays for its working
//! set in parallel instead of one demand miss at a time.
//!
//! [`LazyImage::prefetch`](super::LazyImage::prefetch) validates the
//! order (every index inside the manifest, duplicates dropped, so the
//! queue is bounded by the chunk table), then starts
//! [`PrefetchOptions::concurrency`] threads that take chunks in order and
//! fetch each through the same single-flight and fill path as a demand
//! read: into the dedicated tier, and into the shared and AZ tiers on the
//! way up when the store is tiered. An optional bandwidth cap paces the
//! starts of those fetches.
//!
//! Demand reads never enter this queue: a reader fetches its own misses
//! on its own thread at once, so it waits behind no queued prefetch; when
//! the chunk it wants is the one a prefetch thread is fetching right now,
//! it joins that fetch (single-flight) instead of fetching it again. The
//! prefetch threads check each chunk just before fetching it and skip
//! one a reader already brought in.
//!
//! Stopping ([`PrefetchHandle::stop`], or dropping the image) lets each
//! thread finish the one fetch it has in flight and take nothing more;
//! a pacing wait is cut short at once. Dropping the image joins them.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use manifest::ChunkIndex;
use manifest::report::PrefetchStats;
use telemetry::counter::Counter;

use super::{Inner, LazyError, LazyImage, Origin};

/// Most prefetch threads one image starts, whatever is asked: each holds
/// at most one chunk in memory, so this also bounds prefetch's memory.
pub const MAX_CONCURRENCY: usize = 64;

/// How a prefetch runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchOptions {
    /// Chunks fetched at once (1 ..= [`MAX_CONCURRENCY`]; 0 counts as 1).
    pub concurrency: usize,
    /// Most bytes per second the prefetch starts fetching (`None` or 0:
    /// no cap). Demand reads are never held back by it.
    pub bandwidth: Option<u64>,
}

impl Default for PrefetchOptions {
    /// Eight at once: enough to hide a remote tier's latency behind a
    /// cold start's ~64 chunks without crowding out demand reads.
    fn default() -> Self {
        Self {
            concurrency: 8,
            bandwidth: None,
        }
    }
}

/// `--prefetch`: whether to prefetch when there is an order to follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PrefetchMode {
    /// Prefetch whenever a start profile's order is available.
    #[default]
    Auto,
    /// Never prefetch.
    Off,
}

impl FromStr for PrefetchMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            _ => Err(format!("{s:?} is not a prefetch mode (auto or off)")),
        }
    }
}

/// Starts prefetching `order` on `image` when `mode` allows and there is
/// an order: the call `serve` and `mount` make. `order` is where a start
/// profile's chunk order comes in (`None` when the image has none, and
/// nothing is prefetched). Returns the running prefetch, if one was
/// started.
pub fn start(
    image: &LazyImage,
    mode: PrefetchMode,
    order: Option<Vec<ChunkIndex>>,
    options: &PrefetchOptions,
) -> Result<Option<PrefetchHandle>, LazyError> {
    match (mode, order) {
        (PrefetchMode::Auto, Some(order)) => image.prefetch(order, options).map(Some),
        _ => Ok(None),
    }
}

/// What prefetch and demand reads record about prefetched chunks; one per
/// image, shared by its readers.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    /// Whether `unused` holds anything, kept in step under its lock, so
    /// that demand reads skip the lock when no prefetched chunk awaits
    /// its first read (before any prefetch and after all were read).
    any: AtomicBool,
    /// Prefetched chunks no demand read has read yet.
    unused: Mutex<HashSet<u64>>,
    /// The chunks of the prefetch's order, once one started: the start
    /// profile's prediction of what this start reads (see
    /// [`Tracker::planned`]).
    planned: std::sync::OnceLock<HashSet<u64>>,
    prefetched: Counter,
    used: Counter,
    demand_waited: Counter,
}

impl Tracker {
    /// A prefetch fetched chunk `index` from the store and kept it.
    pub(super) fn fetched(&self, index: ChunkIndex) {
        self.prefetched.inc();
        let mut unused = self.lock();
        unused.insert(index.0);
        self.any.store(true, Ordering::Release);
    }

    /// A demand read read chunk `index` (from wherever).
    pub(super) fn demand_read(&self, index: ChunkIndex) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut unused = self.lock();
        if unused.remove(&index.0) {
            self.used.inc();
            if unused.is_empty() {
                self.any.store(false, Ordering::Release);
            }
        }
    }

    /// Whether chunk `index` is in the prefetch's order. Read-ahead skips
    /// reads of such chunks: the profile already says what this start
    /// reads next, and guessing beyond it only fetches chunks the start
    /// never reads (a read outside the profile still reads ahead).
    pub(super) fn planned(&self, index: ChunkIndex) -> bool {
        self.planned.get().is_some_and(|p| p.contains(&index.0))
    }

    /// A demand miss joined a fetch a prefetch thread was leading.
    pub(super) fn demand_waited(&self) {
        self.demand_waited.inc();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.unused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One prefetch's queue and state, shared by its threads and handles.
#[derive(Debug)]
struct Run {
    order: Vec<ChunkIndex>,
    /// Position in `order` of the next chunk to take.
    next: AtomicUsize,
    stop: AtomicBool,
    bandwidth: Option<u64>,
    state: Mutex<RunState>,
    /// Signalled on stop and when the last thread exits.
    changed: Condvar,
    /// Chunks of the order a thread has finished with, however it went.
    done: Counter,
    errors: Counter,
}

#[derive(Debug, Default)]
struct RunState {
    /// Threads still running.
    threads: usize,
    /// When the next paced fetch may start.
    next_slot: Option<Instant>,
}

impl Run {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Under the lock, so a thread between its stop check and its wait
        // cannot miss the wake-up.
        let _state = self.lock();
        self.changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits for the bandwidth cap's slot for `bytes`; false when stopped
    /// meanwhile.
    fn pace(&self, bytes: u64) -> bool {
        let Some(rate) = self.bandwidth else {
            return true;
        };
        let mut state = self.lock();
        let start = reserve(&mut state.next_slot, Instant::now(), bytes, rate);
        loop {
            if self.stopping() {
                return false;
            }
            let now = Instant::now();
            if now >= start {
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, start - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The start of the next fetch of `bytes` under a cap of `rate` bytes/s:
/// no earlier than `now` nor than the end of the previous one's share of
/// the cap, which it moves on by `bytes / rate`.
fn reserve(next_slot: &mut Option<Instant>, now: Instant, bytes: u64, rate: u64) -> Instant {
    let start = next_slot.map_or(now, |slot| slot.max(now));
    let share = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
    *next_slot = Some(start.checked_add(share).unwrap_or(start));
    start
}

/// The threads of a running prefetch, owned by the image: dropping it
/// (with the image) stops them and waits for their in-flight fetches.
pub(super) struct Running {
    run: Arc<Run>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.run.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Running {
    pub(super) fn handle(&self, inner: &Inner) -> PrefetchHandle {
        PrefetchHandle {
            run: Arc::clone(&self.run),
            tracker: Arc::clone(&inner.prefetch),
        }
    }

    pub(super) fn stats(&self, inner: &Inner) -> PrefetchStats {
        stats(&self.run, &inner.prefetch)
    }

    pub(super) fn stop(&self) {
        self.run.stop();
    }
}

/// A running (or finished) prefetch: stop it, wait for it, read its
/// counters. Cloneable, and it may outlive the image: its counters stay
/// readable (the threads stop with the image).
#[derive(Clone)]
pub struct PrefetchHandle {
    run: Arc<Run>,
    tracker: Arc<Tracker>,
}

impl std::fmt::Debug for PrefetchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl PrefetchHandle {
    /// Asks the threads to stop: each finishes the fetch it has in flight
    /// and takes no more. Returns at once.
    pub fn stop(&self) {
        self.run.stop();
    }

    /// Waits until every thread has exited (the order is done, or it was
    /// stopped).
    pub fn wait(&self) {
        let mut state = self.run.lock();
        while state.threads > 0 {
            state = self
                .run
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether every thread has exited.
    pub fn is_finished(&self) -> bool {
        self.run.lock().threads == 0
    }

    /// The counters now (see [`PrefetchStats`]).
    pub fn stats(&self) -> PrefetchStats {
        stats(&self.run, &self.tracker)
    }
}

fn stats(run: &Run, tracker: &Tracker) -> PrefetchStats {
    let queued = run.order.len();
    PrefetchStats {
        queued: queued as u64,
        prefetched: tracker.prefetched.get(),
        used: tracker.used.get(),
        unused: tracker.lock().len() as u64,
        demand_waited: tracker.demand_waited.get(),
        // Whatever was done and neither fetched by the prefetch itself nor
        // failed: local already, a hole, or fetched by a demand read first
        // (found in memory or in the dedicated tier, or joined as a
        // follower of the demand read's fetch).
        skipped: run
            .done
            .get()
            .saturating_sub(tracker.prefetched.get() + run.errors.get()),
        errors: run.errors.get(),
        stopped: run.stopping() && run.next.load(Ordering::SeqCst) < queued,
    }
}

/// Checks `order` against the manifest's `chunks` and drops repeats;
/// the result is at most `chunks` long whatever the input.
pub(super) fn validate(
    order: impl IntoIterator<Item = ChunkIndex>,
    chunks: u64,
) -> Result<Vec<ChunkIndex>, LazyError> {
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    for index in order {
        if index.0 >= chunks {
            return Err(LazyError::PrefetchOutside { index, chunks });
        }
        if seen.insert(index.0) {
            kept.push(index);
        }
    }
    Ok(kept)
}

/// Starts the threads of a prefetch of `order` (validated).
pub(super) fn spawn(
    inner: &Arc<Inner>,
    order: Vec<ChunkIndex>,
    options: &PrefetchOptions,
) -> Result<Running, LazyError> {
    let wanted = options
        .concurrency
        .clamp(1, MAX_CONCURRENCY)
        .min(order.len());
    // One prefetch per image (the caller holds its slot), so this is set
    // once.
    let _ = inner
        .prefetch
        .planned
        .set(order.iter().map(|i| i.0).collect());
    let run = Arc::new(Run {
        order,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        bandwidth: options.bandwidth.filter(|&b| b > 0),
        state: Mutex::new(RunState {
            threads: wanted,
            next_slot: None,
        }),
        changed: Condvar::new(),
        done: Counter::new(),
        errors: Counter::new(),
    });
    let mut threads = Vec::with_capacity(wanted);
    let mut spawn_error = None;
    for n in 0..wanted {
        let (for_inner, for_run) = (Arc::clone(inner), Arc::clone(&run));
        match std::thread::Builder::new()
            .name(format!("imagefs-prefetch-{n}"))
            .spawn(move || worker(&for_inner, &for_run))
        {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                // Count the threads that will never run as exited.
                run.lock().threads -= wanted - n;
                spawn_error = Some(e);
                break;
            }
        }
    }
    match spawn_error {
        Some(e) if threads.is_empty() => Err(LazyError::PrefetchThreads(Arc::new(e))),
        // Fewer threads than asked still prefetch the whole order.
        _ => Ok(Running { run, threads }),
    }
}

fn worker(inner: &Inner, run: &Run) {
    super::priority::lower_this_thread();
    while !run.stopping() {
        let at = run.next.fetch_add(1, Ordering::SeqCst);
        let Some(&index) = run.order.get(at) else {
            break;
        };
        if !inner.needs_fetch(index) {
            run.done.inc();
            continue;
        }
        let bytes = inner.manifest.chunk_span(index).map_or(0, |(_, len)| len);
        if !run.pace(bytes) {
            break;
        }
        // The error is counted here and by the fetch; a demand read of
        // the chunk fetches it again and reports it to the guest.
        if inner.load(index, Origin::Prefetch).is_err() {
            run.errors.inc();
        }
        run.done.inc();
    }
    let mut state = run.lock();
    state.threads -= 1;
    if state.threads == 0 {
        run.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_spaces_fetch_starts_by_their_share_of_it() {
        let t0 = Instant::now();
        let mut slot = None;
        // 1000 bytes at 1000 bytes/s: one second each, back to back.
        assert_eq!(reserve(&mut slot, t0, 1000, 1000), t0);
        assert_eq!(
            reserve(&mut slot, t0, 1000, 1000),
            t0 + Duration::from_secs(1)
        );
        assert_eq!(
            reserve(&mut slot, t0, 500, 1000),
            t0 + Duration::from_secs(2)
        );
        // After an idle spell the next fetch starts at once, not in a burst
        // of saved-up credit.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(reserve(&mut slot, later, 1000, 1000), later);
        assert_eq!(slot, Some(later + Duration::from_secs(1)));
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse(), Ok(PrefetchMode::Auto));
        assert_eq!("off".parse(), Ok(PrefetchMode::Off));
        let err = "on".parse::<PrefetchMode>().unwrap_err();
        assert!(err.contains("auto or off"), "{err}");
    }

    #[test]
    fn orders_outside_the_manifest_are_rejected_and_repeats_dropped() {
        let order = [3, 1, 3, 0, 1].map(ChunkIndex);
        assert_eq!(
            validate(order, 4).unwrap(),
            vec![ChunkIndex(3), ChunkIndex(1), ChunkIndex(0)]
        );
        let err = validate([ChunkIndex(1), ChunkIndex(4)], 4).unwrap_err();
        assert!(matches!(
            err,
            LazyError::PrefetchOutside {
                index: ChunkIndex(4),
                chunks: 4
            }
        ));
    }
}
