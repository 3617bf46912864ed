//! [`LazyImage`]: the block device of an unsealed manifest whose chunks
//! are fetched from a chunk store only when first read, and whose writes
//! land copy-on-write in the instance's dedicated tier.
//!
//! A read resolves the chunks it covers. For each one, in order:
//!
//! 1. present in the **dedicated tier** ([`dedicated`]; the instance's own
//!    plaintext copy): read from there, the store is not touched;
//! 2. a **hole** in the manifest: zeros, nothing fetched;
//! 3. in the small in-memory cache of recent plaintext chunks: copied out;
//! 4. otherwise **fetched** from the store (usually a
//!    [`TieredStore`](cachetiers::tiered::TieredStore), which verifies each
//!    object against its id at every tier), decrypted and authenticated
//!    with the manifest's key, checked for length, kept in the dedicated
//!    tier (when there is one) and in the memory cache, and copied out.
//!
//! Concurrent readers of the same cold chunk share one fetch (single-flight,
//! [`SingleFlight`]). Images opened with a host-wide [`SharedPlain`]
//! ([`LazyImage::open_with`]; the agent's VMs) take a chunk's plaintext
//! from it, or from another image's fetch through it, before fetching
//! (`fetch`). A read that covers several chunks missing locally
//! fetches them at once (`parallel`, bounded by
//! [`LazyOptions::parallel_fetches`]) instead of one after another.
//! Optional read-ahead ([`readahead`]) fetches the next chunks after a
//! read in background threads, and [`prefetch`] fetches a start
//! profile's chunks in order before they are asked for; both go through
//! the same single-flight, so no chunk is fetched twice at once.
//!
//! Writes ([`LazyImage::write_at`]) are copy-on-write into the dedicated
//! tier only, so they need one: a chunk a write only partly covers is
//! first materialised there (fetched and decrypted, or zeros for a hole),
//! then overwritten. No write ever reaches the store or any shared tier;
//! a fresh instance (another dedicated directory) sees the pristine image.
//! [`LazyImage::flush`] makes the instance's writes durable in its own
//! dedicated tier. A per-chunk lock (striped) orders materialisation
//! against writes and against a concurrent fetch's fill, so a fetched
//! pristine copy never overwrites a written chunk.

pub mod dedicated;
mod device;
mod error;
mod fetch;
mod fetchlog;
mod parallel;
pub mod prefetch;
pub mod priority;
pub mod readahead;
pub mod shared_plain;
mod syncer;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use telemetry::counter::Counter;

use cachetiers::{ChunkStore, Flight, SingleFlight};
use manifest::report::{FetchLog, PrefetchStats};
use manifest::{ChunkEntry, ChunkId, ChunkIndex, Manifest};

use crate::tiers::config::ReadConfig;
pub use dedicated::{DedicatedError, DedicatedOptions, DedicatedState, DedicatedTier};
pub use error::LazyError;
pub use prefetch::{PrefetchHandle, PrefetchMode, PrefetchOptions};
use readahead::Readahead;
pub use shared_plain::SharedPlain;

/// How a [`LazyImage`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyOptions {
    /// After a read, fetch up to this many following chunks in the
    /// background (0 disables read-ahead; the default is
    /// [`ReadConfig::default`]'s, which says how it was chosen).
    pub readahead_chunks: usize,
    /// Background threads for read-ahead (at most `readahead_chunks`;
    /// at least one when read-ahead is on).
    pub readahead_threads: usize,
    /// How many recently fetched plaintext chunks to keep in memory
    /// (0 disables the memory cache).
    pub memory_chunks: usize,
    /// Most chunks one read fetches at once when it covers several that
    /// are missing (0 or 1: one after another).
    pub parallel_fetches: usize,
    /// How the dedicated tier (if any) treats its directory's earlier
    /// state: the digest it pins, and `--reset`.
    pub dedicated: DedicatedOptions,
    /// What log spans call the image (its manifest digest; empty: none).
    pub label: String,
}

impl Default for LazyOptions {
    fn default() -> Self {
        Self::from(&ReadConfig::default())
    }
}

/// The configuration file's `[read]` section.
impl From<&ReadConfig> for LazyOptions {
    fn from(read: &ReadConfig) -> Self {
        Self {
            readahead_chunks: read.readahead_chunks,
            readahead_threads: read.readahead_threads,
            memory_chunks: read.memory_chunks,
            parallel_fetches: read.parallel_fetches,
            dedicated: DedicatedOptions::default(),
            label: String::new(),
        }
    }
}

pub use manifest::report::LazyMetrics;

#[derive(Debug, Default)]
struct Counters {
    bytes_read: Counter,
    dedicated_hits: Counter,
    memory_hits: Counter,
    shared_plain_hits: Counter,
    shared_plain_joins: Counter,
    hole_reads: Counter,
    store_fetches: Counter,
    store_bytes: Counter,
    shared_fetches: Counter,
    readahead_fetches: Counter,
    fetch_errors: Counter,
    bytes_written: Counter,
    write_materialised: Counter,
    flushes: Counter,
}

/// Stripes of the per-chunk write lock (chunk index modulo this).
const WRITE_STRIPES: usize = 64;

/// The result of fetching one chunk, shared between waiting readers.
type Fetched = Result<Arc<Vec<u8>>, LazyError>;

/// Who asked for a chunk: demand reads are counted as reads, read-ahead
/// and prefetch as fetches of their own, and a demand read that waited
/// for a prefetch's fetch is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A reader of the device.
    Demand,
    /// Read-ahead after a read.
    Readahead,
    /// A prefetch thread.
    Prefetch,
}

/// Everything the readers and the read-ahead threads share.
struct Inner {
    manifest: Manifest,
    /// [`LazyOptions::label`], for log spans.
    label: String,
    store: Arc<dyn ChunkStore>,
    dedicated: Option<DedicatedTier>,
    memory: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    memory_chunks: usize,
    /// The host-wide plaintext cache, if the image shares one.
    shared_plain: Option<Arc<SharedPlain>>,
    /// In flight per chunk: the result, and who led the fetch.
    flights: SingleFlight<u64, (Fetched, Origin)>,
    counters: Counters,
    fetch_log: fetchlog::FetchRecorder,
    prefetch: Arc<prefetch::Tracker>,
    /// Held while a chunk is materialised, written, or filled by a fetch
    /// (see the module docs).
    write_locks: Vec<Mutex<()>>,
}

/// The block device of an unsealed manifest over a chunk store: lazy
/// reads, copy-on-write writes into the dedicated tier (see the module
/// docs). Cheap to share between threads by reference: every
/// method takes `&self`.
pub struct LazyImage {
    inner: Arc<Inner>,
    readahead: Option<Readahead>,
    /// Persists the dedicated tier's fills every period (what is left at
    /// the end, the tier persists when it is dropped).
    _syncer: Option<syncer::Syncer>,
    dedicated_state: Option<DedicatedState>,
    parallel_fetches: usize,
    /// The prefetch, once started; dropping it stops its threads.
    prefetch: Mutex<Option<prefetch::Running>>,
}

impl std::fmt::Debug for LazyImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyImage")
            .field("size", &self.size())
            .field("chunk_size", &self.inner.manifest.chunk_size)
            .field("dedicated", &self.inner.dedicated)
            .finish_non_exhaustive()
    }
}

impl LazyImage {
    /// A lazy view of `manifest` over `store`, with the dedicated tier in
    /// `dedicated` (reused if an earlier process left a valid one there).
    pub fn open(
        manifest: Manifest,
        store: Arc<dyn ChunkStore>,
        dedicated: Option<&Path>,
        options: LazyOptions,
    ) -> Result<Self, LazyError> {
        Self::open_with(manifest, store, dedicated, options, None)
    }

    /// [`Self::open`], reading through `shared_plain` (see the module
    /// docs) when given.
    pub fn open_with(
        manifest: Manifest,
        store: Arc<dyn ChunkStore>,
        dedicated: Option<&Path>,
        options: LazyOptions,
        shared_plain: Option<Arc<SharedPlain>>,
    ) -> Result<Self, LazyError> {
        manifest
            .check_consistent()
            .map_err(|problem| LazyError::BadManifest { problem })?;
        let (dedicated, dedicated_state) = match dedicated {
            Some(dir) => {
                let (tier, state) = DedicatedTier::open_with(dir, &manifest, &options.dedicated)
                    .map_err(LazyError::OpenDedicated)?;
                (Some(tier), Some(state))
            }
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            manifest,
            label: options.label.clone(),
            store,
            dedicated,
            memory: Mutex::new(VecDeque::new()),
            memory_chunks: options.memory_chunks,
            shared_plain,
            flights: SingleFlight::new(),
            counters: Counters::default(),
            fetch_log: fetchlog::FetchRecorder::default(),
            prefetch: Arc::default(),
            write_locks: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect(),
        });
        let readahead = (options.readahead_chunks > 0).then(|| {
            Readahead::start(
                Arc::clone(&inner),
                options.readahead_chunks,
                options.readahead_threads,
            )
        });
        let syncer = syncer::Syncer::start(&inner);
        Ok(Self {
            inner,
            readahead,
            _syncer: syncer,
            dedicated_state,
            parallel_fetches: options.parallel_fetches,
            prefetch: Mutex::new(None),
        })
    }

    /// The device size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.manifest.device_size
    }

    /// The manifest this view serves.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// What opening the dedicated tier found (`None` without one).
    pub fn dedicated_state(&self) -> Option<&DedicatedState> {
        self.dedicated_state.as_ref()
    }

    /// How many chunks the dedicated tier holds (0 without one).
    pub fn dedicated_present(&self) -> u64 {
        self.inner
            .dedicated
            .as_ref()
            .map_or(0, DedicatedTier::present_count)
    }

    /// Fills `buf` with the device bytes starting at `offset`. A read that
    /// reaches past the end of the device fails with
    /// [`LazyError::OutOfRange`] and reads nothing.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), LazyError> {
        let size = self.size();
        let len = buf.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= size)
            .ok_or(LazyError::OutOfRange { offset, len, size })?;
        if len == 0 {
            return Ok(());
        }
        let chunk_size = self.inner.manifest.chunk_size.as_u64();
        let first = offset / chunk_size;
        let mut fetched = parallel::fetch_missing(
            &self.inner,
            first,
            (end - 1) / chunk_size,
            self.parallel_fetches,
        );
        let mut pos = offset;
        while pos < end {
            let index = ChunkIndex(pos / chunk_size);
            let start = index.0 * chunk_size;
            let chunk_end = (start + chunk_size).min(size);
            let n = (end.min(chunk_end) - pos) as usize;
            let at = (pos - offset) as usize;
            let ready = fetched.take(index.0 - first);
            self.inner
                .read_chunk_part(index, &mut buf[at..at + n], pos - start, ready)?;
            pos += n as u64;
        }
        self.inner.counters.bytes_read.add(len);
        if let Some(readahead) = &self.readahead {
            readahead.after_read(ChunkIndex((end - 1) / chunk_size));
        }
        Ok(())
    }

    /// Whether reading `len` bytes at `offset` needs no fetch: every chunk
    /// it covers is in the dedicated tier or a hole, so the read costs a
    /// local `pread` at most. (Chunks in the memory cache do not count:
    /// they may be evicted before the read.)
    pub fn is_local(&self, offset: u64, len: u64) -> bool {
        let size = self.size();
        let Some(end) = offset.checked_add(len).filter(|&e| e <= size && len > 0) else {
            return false;
        };
        let chunk_size = self.inner.manifest.chunk_size.as_u64();
        (offset / chunk_size..=(end - 1) / chunk_size).all(|i| {
            let index = ChunkIndex(i);
            self.inner
                .dedicated
                .as_ref()
                .is_some_and(|d| d.is_present(index))
                || self
                    .inner
                    .manifest
                    .chunk(index)
                    .is_some_and(|c| c.is_hole())
        })
    }

    /// Whether writes are possible (there is a dedicated tier).
    pub fn writable(&self) -> bool {
        self.inner.dedicated.is_some()
    }

    /// Writes `buf` at device offset `offset`, copy-on-write into the
    /// dedicated tier (see the module docs). A write that reaches past the
    /// end of the device fails with [`LazyError::OutOfRange`] and writes
    /// nothing; without a dedicated tier it fails with
    /// [`LazyError::ReadOnly`]. Not durable until [`flush`](Self::flush).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), LazyError> {
        let size = self.size();
        let len = buf.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= size)
            .ok_or(LazyError::OutOfRange { offset, len, size })?;
        let Some(dedicated) = &self.inner.dedicated else {
            return Err(LazyError::ReadOnly { offset, len });
        };
        // Before the first write lands: from now on the disk is the
        // instance's data, never reset without `--reset`.
        dedicated.mark_written().map_err(LazyError::MarkWritten)?;
        let chunk_size = self.inner.manifest.chunk_size.as_u64();
        let mut pos = offset;
        while pos < end {
            let index = ChunkIndex(pos / chunk_size);
            let start = index.0 * chunk_size;
            let chunk_end = (start + chunk_size).min(size);
            let n = (end.min(chunk_end) - pos) as usize;
            let at = (pos - offset) as usize;
            self.inner.write_chunk_part(index, &buf[at..at + n], pos)?;
            pos += n as u64;
        }
        self.inner.counters.bytes_written.add(len);
        Ok(())
    }

    /// Makes every write so far durable in the dedicated tier (data, then
    /// presence bits). Without a dedicated tier there is nothing to flush.
    pub fn flush(&self) -> Result<(), LazyError> {
        self.inner.counters.flushes.inc();
        match &self.inner.dedicated {
            Some(d) => d.flush().map_err(LazyError::Flush),
            None => Ok(()),
        }
    }

    /// Makes every chunk fetched into the dedicated tier so far durable:
    /// persists the fills since the last group commit and syncs the
    /// presence bitmap (see [`dedicated`]).
    pub fn sync(&self) -> Result<(), LazyError> {
        match &self.inner.dedicated {
            Some(d) => d.sync().map_err(LazyError::Sync),
            None => Ok(()),
        }
    }

    /// Waits until read-ahead has nothing queued or running (returns at
    /// once without read-ahead). For tests and orderly shutdown.
    pub fn wait_readahead_idle(&self) {
        if let Some(readahead) = &self.readahead {
            readahead.wait_idle();
        }
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> LazyMetrics {
        let c = &self.inner.counters;
        LazyMetrics {
            bytes_read: c.bytes_read.get(),
            dedicated_hits: c.dedicated_hits.get(),
            memory_hits: c.memory_hits.get(),
            shared_plain_hits: c.shared_plain_hits.get(),
            shared_plain_joins: c.shared_plain_joins.get(),
            hole_reads: c.hole_reads.get(),
            store_fetches: c.store_fetches.get(),
            store_bytes: c.store_bytes.get(),
            shared_fetches: c.shared_fetches.get(),
            readahead_fetches: c.readahead_fetches.get(),
            fetch_errors: c.fetch_errors.get(),
            bytes_written: c.bytes_written.get(),
            write_materialised: c.write_materialised.get(),
            flushes: c.flushes.get(),
        }
    }

    /// From now on, log every fetch from the store (chunk, who asked,
    /// start and end), keeping at most `limit` events; see
    /// [`Self::fetch_log`]. Calling it again changes nothing.
    pub fn record_fetches(&self, limit: usize) {
        self.inner.fetch_log.start(limit);
    }

    /// The fetches logged since [`Self::record_fetches`] (`None` if it was
    /// not called).
    pub fn fetch_log(&self) -> Option<FetchLog> {
        self.inner.fetch_log.snapshot()
    }

    /// Readers currently waiting for another reader's fetch (a gauge).
    pub fn waiting_readers(&self) -> usize {
        self.inner.flights.waiting()
    }

    /// Starts fetching the chunks of `order`, in that order, in
    /// background threads (see [`prefetch`]). Fails with
    /// [`LazyError::PrefetchOutside`] (and starts nothing) when an index
    /// is outside the manifest, and with [`LazyError::PrefetchStarted`]
    /// when this image already prefetches. Repeated indices are fetched
    /// once.
    pub fn prefetch(
        &self,
        order: impl IntoIterator<Item = ChunkIndex>,
        options: &PrefetchOptions,
    ) -> Result<PrefetchHandle, LazyError> {
        let order = prefetch::validate(order, self.inner.manifest.chunks.len() as u64)?;
        let mut slot = self.prefetch.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return Err(LazyError::PrefetchStarted);
        }
        let running = prefetch::spawn(&self.inner, order, options)?;
        let handle = running.handle(&self.inner);
        *slot = Some(running);
        Ok(handle)
    }

    /// What the prefetch did so far (`None` if none was started).
    pub fn prefetch_stats(&self) -> Option<PrefetchStats> {
        let slot = self.prefetch.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().map(|running| running.stats(&self.inner))
    }

    /// Stops the prefetch, if any, waits for its threads (each finishes
    /// the fetch it has in flight) and returns its final counters, for a
    /// report at exit: `stopped` then says whether it was cut short. The
    /// image no longer prefetches afterwards.
    pub fn end_prefetch(&self) -> Option<PrefetchStats> {
        let running = self
            .prefetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        let handle = running.handle(&self.inner);
        // Dropping it stops the threads and joins them.
        drop(running);
        Some(handle.stats())
    }

    /// Asks the prefetch, if any, to stop (see [`PrefetchHandle::stop`]);
    /// dropping the image does the same and waits for its threads.
    pub fn stop_prefetch(&self) {
        let slot = self.prefetch.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = slot.as_ref() {
            running.stop();
        }
    }
}

impl Inner {
    fn write_lock(&self, index: ChunkIndex) -> std::sync::MutexGuard<'_, ()> {
        self.write_locks[(index.0 % WRITE_STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `src` at device offset `pos`, all inside chunk `index`:
    /// materialises the chunk first unless the write covers all of it.
    fn write_chunk_part(&self, index: ChunkIndex, src: &[u8], pos: u64) -> Result<(), LazyError> {
        let Some(d) = &self.dedicated else {
            return Err(LazyError::ReadOnly {
                offset: pos,
                len: src.len() as u64,
            });
        };
        let (start, span) =
            self.manifest
                .chunk_span(index)
                .ok_or_else(|| LazyError::BadManifest {
                    problem: format!("{index} is outside the device"),
                })?;
        let id = || {
            self.manifest
                .chunk(index)
                .and_then(ChunkEntry::id)
                .map_or_else(|| "hole".into(), ChunkId::to_hex)
        };
        let dedicated_err = |source| LazyError::Dedicated {
            index,
            id: id(),
            source,
        };
        let _guard = self.write_lock(index);
        if d.is_present(index) {
            return d.write_present(index, src, pos).map_err(dedicated_err);
        }
        if src.len() as u64 == span {
            // Covers the whole chunk: nothing to keep of the old bytes.
            self.counters.write_materialised.inc();
            return d.store_chunk(index, start.0, src).map_err(dedicated_err);
        }
        let mut plain = match self.manifest.chunk(index) {
            Some(ChunkEntry::Present { .. }) => {
                // The fetch stores the chunk in the dedicated tier as a
                // side effect only when it is the flight leader and not
                // under our lock; take the plaintext and store it here.
                self.load_for_write(index)?
            }
            _ => vec![0u8; span as usize],
        };
        let within = (pos - start.0) as usize;
        plain[within..within + src.len()].copy_from_slice(src);
        self.counters.write_materialised.inc();
        d.store_chunk(index, start.0, &plain).map_err(dedicated_err)
    }

    /// The pristine plaintext of stored chunk `index`, for a write that
    /// holds its write lock (so it must not wait on a fetch that would
    /// take the same lock to fill the dedicated tier).
    fn load_for_write(&self, index: ChunkIndex) -> Result<Vec<u8>, LazyError> {
        if let Some(plain) = self.memory_get(index) {
            return Ok(plain.as_ref().clone());
        }
        // A copy: the write changes it, and the shared cache's (if the
        // plaintext came from there) stays pristine.
        let result = self
            .fetch_plain(index, Origin::Demand)
            .map(Arc::unwrap_or_clone);
        if result.is_err() {
            self.counters.fetch_errors.inc();
        }
        result
    }

    /// Copies bytes `within..within + dst.len()` of chunk `index` into `dst`.
    /// `ready` is the chunk's plaintext when the read already fetched it
    /// (with others, at once).
    fn read_chunk_part(
        &self,
        index: ChunkIndex,
        dst: &mut [u8],
        within: u64,
        ready: Option<Fetched>,
    ) -> Result<(), LazyError> {
        self.copy_chunk_part(index, dst, within, ready)?;
        // After the copy: a reader that joined a prefetch's fetch finds
        // the chunk recorded as prefetched only once that fetch is done.
        self.prefetch.demand_read(index);
        Ok(())
    }

    fn copy_chunk_part(
        &self,
        index: ChunkIndex,
        dst: &mut [u8],
        within: u64,
        ready: Option<Fetched>,
    ) -> Result<(), LazyError> {
        let entry = self
            .manifest
            .chunk(index)
            .ok_or_else(|| LazyError::BadManifest {
                problem: format!("no entry for {index}"),
            })?;
        let start = index.0 * self.manifest.chunk_size.as_u64();
        // The dedicated tier first: with writes, a set bit wins over a hole.
        if let Some(d) = &self.dedicated
            && d.is_present(index)
        {
            self.counters.dedicated_hits.inc();
            return d
                .read_at(index, dst, start + within)
                .map_err(|source| LazyError::Dedicated {
                    index,
                    id: entry.id().map_or_else(|| "hole".into(), ChunkId::to_hex),
                    source,
                });
        }
        if entry.is_hole() {
            self.counters.hole_reads.inc();
            dst.fill(0);
            return Ok(());
        }
        let plain = match ready {
            Some(fetched) => fetched?,
            None => self.load(index, Origin::Demand)?,
        };
        let from = within as usize;
        let part = plain
            .get(from..from + dst.len())
            .ok_or_else(|| LazyError::BadManifest {
                problem: format!("{index} is shorter than its span"),
            })?;
        dst.copy_from_slice(part);
        Ok(())
    }

    fn memory_get(&self, index: ChunkIndex) -> Option<Arc<Vec<u8>>> {
        if self.memory_chunks == 0 {
            return None;
        }
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        let pos = memory.iter().position(|(i, _)| *i == index.0)?;
        let entry = memory.remove(pos)?;
        let plain = Arc::clone(&entry.1);
        memory.push_front(entry);
        Some(plain)
    }

    fn memory_put(&self, index: ChunkIndex, plain: &Arc<Vec<u8>>) {
        if self.memory_chunks == 0 {
            return;
        }
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        if memory.iter().any(|(i, _)| *i == index.0) {
            return;
        }
        memory.push_front((index.0, Arc::clone(plain)));
        memory.truncate(self.memory_chunks);
    }

    /// The plaintext of present chunk `index`: from memory, or fetched once
    /// however many readers ask at the same time.
    fn load(&self, index: ChunkIndex, origin: Origin) -> Fetched {
        if let Some(plain) = self.memory_get(index) {
            if origin == Origin::Demand {
                self.counters.memory_hits.inc();
            }
            return Ok(plain);
        }
        let ((result, leader), flight) = self
            .flights
            .run(&index.0, || (self.fetch(index, origin), origin));
        if flight == Flight::Joined {
            self.counters.shared_fetches.inc();
            if origin == Origin::Demand && leader == Origin::Prefetch {
                self.prefetch.demand_waited();
            }
        }
        result
    }

    /// Fetches, verifies, decrypts and keeps chunk `index` (the single
    /// flight's leader does this).
    fn fetch(&self, index: ChunkIndex, origin: Origin) -> Fetched {
        // A flight for this chunk may have finished between our memory
        // check and becoming leader.
        if let Some(plain) = self.memory_get(index) {
            return Ok(plain);
        }
        let result = self.fetch_uncached(index, origin);
        if result.is_err() {
            self.counters.fetch_errors.inc();
        }
        result
    }

    fn fetch_uncached(&self, index: ChunkIndex, origin: Origin) -> Fetched {
        let (id, _, start, expected) = self.stored_chunk(index)?;
        let dedicated_err = |source| LazyError::Dedicated {
            index,
            id: id.to_hex(),
            source,
        };
        let whole_from = |d: &DedicatedTier| -> Fetched {
            let mut plain = vec![0u8; expected as usize];
            d.read_at(index, &mut plain, start.0)
                .map_err(dedicated_err)?;
            Ok(Arc::new(plain))
        };
        if let Some(d) = &self.dedicated
            && d.is_present(index)
        {
            // Filled by another flight since the reader looked.
            return whole_from(d);
        }
        let plain = self.fetch_plain(index, origin)?;
        if let Some(d) = &self.dedicated {
            let _guard = self.write_lock(index);
            if d.is_present(index) {
                // A write materialised the chunk since we looked: its
                // bytes win over the pristine copy we fetched.
                return whole_from(d);
            }
            d.store_chunk(index, start.0, &plain)
                .map_err(dedicated_err)?;
        }
        self.memory_put(index, &plain);
        if origin == Origin::Prefetch {
            self.prefetch.fetched(index);
        }
        Ok(plain)
    }

    /// Whether chunk `index` would need a fetch (the filter of read-ahead,
    /// prefetch and a read's parallel fetch).
    fn needs_fetch(&self, index: ChunkIndex) -> bool {
        // Cheapest first: the memory cache is a locked scan.
        matches!(self.manifest.chunk(index), Some(ChunkEntry::Present { .. }))
            && !self.dedicated.as_ref().is_some_and(|d| d.is_present(index))
            && !(self.memory_chunks > 0
                && self
                    .memory
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .any(|(i, _)| *i == index.0))
    }
}

#[cfg(test)]
mod tests;
