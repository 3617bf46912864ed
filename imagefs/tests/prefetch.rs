//! Prefetch and a read's parallel fetches, by store gets (never by time):
//! gated stores hold fetches so that orderings are deterministic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use cachetiers::testing::{GatedStore, WATCHDOG, wait_for};
use cachetiers::{ChunkStore, DirStore, PutOutcome, StoreError, TieredStore};
use imagefs::lazy::prefetch::{self, PrefetchMode};
use imagefs::{LazyError, LazyImage, LazyOptions};
use manifest::{ChunkId, ChunkIndex, DomainSecret, Manifest};
use tests::imagegen::noise;
use tests::synthetic::{CHUNK, encrypted_device};

/// Chunks of the fixture; chunk `HOLE` is a hole.
const CHUNKS: u64 = 16;
const HOLE: u64 = 5;

struct Fixture {
    dir: tempfile::TempDir,
    origin: Arc<DirStore>,
    manifest: Manifest,
    image: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let origin = Arc::new(DirStore::create(dir.path().join("origin")).unwrap());
    let chunks = (0..CHUNKS)
        .map(|i| (i != HOLE).then(|| noise(i + 100, CHUNK)))
        .collect();
    let (manifest, image) = encrypted_device(&DomainSecret::from_bytes([9; 32]), chunks, |enc| {
        origin.put(&enc.id, &enc.object).unwrap();
    });
    Fixture {
        dir,
        origin,
        manifest,
        image,
    }
}

impl Fixture {
    fn id(&self, index: u64) -> ChunkId {
        *self.manifest.chunks[index as usize].id().unwrap()
    }

    fn gated(&self) -> Arc<GatedStore<Arc<DirStore>>> {
        Arc::new(GatedStore::new(Arc::clone(&self.origin)))
    }

    /// An image with a dedicated tier, no memory cache and no read-ahead
    /// (so that every count below is exact).
    fn open(&self, store: Arc<dyn ChunkStore>, parallel_fetches: usize) -> LazyImage {
        let options = LazyOptions {
            readahead_chunks: 0,
            memory_chunks: 0,
            parallel_fetches,
            ..LazyOptions::default()
        };
        self.open_with(store, options)
    }

    fn open_with(&self, store: Arc<dyn ChunkStore>, options: LazyOptions) -> LazyImage {
        let dedicated = self.dir.path().join("dedicated");
        LazyImage::open(self.manifest.clone(), store, Some(&dedicated), options).unwrap()
    }

    fn check_read(&self, image: &LazyImage, index: u64) {
        let start = index as usize * CHUNK;
        let mut buf = vec![0u8; CHUNK];
        image.read_exact_at(&mut buf, start as u64).unwrap();
        assert!(buf == self.image[start..start + CHUNK], "chunk {index}");
    }
}

fn options(concurrency: usize) -> imagefs::PrefetchOptions {
    imagefs::PrefetchOptions {
        concurrency,
        bandwidth: None,
    }
}

/// Stored chunks in a scrambled order (the hole included: it is skipped).
fn scrambled() -> Vec<ChunkIndex> {
    (0..CHUNKS)
        .map(|i| ChunkIndex((i * 7 + 3) % CHUNKS))
        .collect()
}

#[test]
fn an_order_is_prefetched_in_order_into_every_tier_and_reads_then_fetch_nothing() {
    let f = fixture();
    let fast = Arc::new(DirStore::create(f.dir.path().join("fast")).unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let origin = GatedStore::new(Arc::clone(&f.origin)).with_get_hook({
        let seen = Arc::clone(&seen);
        move |id, _| seen.lock().unwrap().push(*id)
    });
    let origin = Arc::new(origin);
    let tiered = Arc::new(
        TieredStore::new(vec![
            ("fast".into(), Arc::clone(&fast) as Arc<dyn ChunkStore>),
            ("origin".into(), Arc::clone(&origin) as Arc<dyn ChunkStore>),
        ])
        .unwrap(),
    );
    let image = f.open(tiered.clone(), 8);
    let order = scrambled();
    // One thread: the gets must follow the order exactly.
    let handle = image.prefetch(order.clone(), &options(1)).unwrap();
    handle.wait();
    let expected: Vec<ChunkId> = order
        .iter()
        .filter(|i| i.0 != HOLE)
        .map(|i| f.id(i.0))
        .collect();
    assert_eq!(*seen.lock().unwrap(), expected);
    let stats = handle.stats();
    assert_eq!(
        (stats.queued, stats.prefetched, stats.skipped),
        (CHUNKS, CHUNKS - 1, 1)
    );
    assert_eq!(
        (stats.used, stats.unused, stats.stopped),
        (0, CHUNKS - 1, false)
    );
    // Kept in the dedicated tier, and filled into the tier above the origin.
    assert_eq!(image.dedicated_present(), CHUNKS - 1);
    assert_eq!(tiered.metrics().tiers[0].fills, CHUNKS - 1);

    for index in 0..CHUNKS {
        f.check_read(&image, index);
    }
    assert_eq!(origin.gets(), CHUNKS - 1, "demand reads fetched again");
    let stats = image.prefetch_stats().unwrap();
    assert_eq!(
        (stats.used, stats.unused, stats.demand_waited),
        (CHUNKS - 1, 0, 0)
    );
    assert_eq!(image.metrics().dedicated_hits, CHUNKS - 1);
}

#[test]
fn many_threads_prefetch_every_chunk_once() {
    let f = fixture();
    let origin = f.gated();
    let image = f.open(origin.clone(), 8);
    let handle = image.prefetch(scrambled(), &options(4)).unwrap();
    handle.wait();
    assert_eq!(origin.gets(), CHUNKS - 1);
    assert_eq!(handle.stats().prefetched, CHUNKS - 1);
}

#[test]
fn a_demand_miss_jumps_the_queue() {
    let f = fixture();
    let origin = f.gated();
    let image = f.open(origin.clone(), 8);
    let order: Vec<ChunkIndex> = (0..CHUNKS).map(ChunkIndex).collect();
    // The one prefetch thread is held on the first chunk of the order;
    // every other chunk waits in its queue.
    origin.close_for(f.id(0));
    let handle = image.prefetch(order, &options(1)).unwrap();
    wait_for("the prefetch of chunk 0 started", || origin.gets() == 1);
    // A read of the last chunk of the queue completes while the gate
    // still holds the prefetch.
    f.check_read(&image, CHUNKS - 1);
    assert_eq!(origin.gets(), 2);
    assert_eq!(handle.stats().prefetched, 0);
    assert!(!handle.is_finished());
    origin.open();
    handle.wait();
    // The chunk the reader fetched is skipped, not fetched again.
    assert_eq!(origin.gets(), CHUNKS - 1);
    let stats = handle.stats();
    assert_eq!((stats.prefetched, stats.skipped), (CHUNKS - 2, 2));
}

#[test]
fn a_chunk_is_fetched_once_under_contention_and_readers_that_waited_are_counted() {
    let f = fixture();
    let origin = f.gated();
    let image = Arc::new(f.open(origin.clone(), 8));
    let hot = 7;
    origin.close_for(f.id(hot));
    let handle = image.prefetch([ChunkIndex(hot)], &options(1)).unwrap();
    wait_for("the prefetch started", || origin.gets() == 1);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let image = Arc::clone(&image);
            let start = hot * CHUNK as u64;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                image.read_exact_at(&mut buf, start).map(|()| buf)
            })
        })
        .collect();
    wait_for("four readers joined the prefetch", || {
        image.waiting_readers() == 4
    });
    origin.open();
    let start = hot as usize * CHUNK;
    for reader in readers {
        let buf = reader.join().unwrap().unwrap();
        assert!(buf == f.image[start..start + CHUNK]);
    }
    handle.wait();
    assert_eq!(origin.gets(), 1);
    let stats = handle.stats();
    assert_eq!((stats.prefetched, stats.used, stats.unused), (1, 1, 0));
    assert_eq!(stats.demand_waited, 4);
    assert_eq!(image.metrics().shared_fetches, 4);
}

#[test]
fn a_prefetch_that_joins_a_demand_fetch_counts_the_chunk_as_skipped() {
    let f = fixture();
    let origin = f.gated();
    let image = Arc::new(f.open(origin.clone(), 8));
    let hot = 9;
    // A demand read leads the fetch of `hot` and is held there.
    origin.close_for(f.id(hot));
    let reader = {
        let image = Arc::clone(&image);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            image
                .read_exact_at(&mut buf, hot * CHUNK as u64)
                .map(|()| buf)
        })
    };
    wait_for("the demand fetch started", || origin.gets() == 1);
    // The prefetch of the same chunk joins that flight.
    image.prefetch([ChunkIndex(hot)], &options(1)).unwrap();
    wait_for("the prefetch joined the demand fetch", || {
        image.waiting_readers() == 1
    });
    origin.open();
    let start = hot as usize * CHUNK;
    assert!(reader.join().unwrap().unwrap() == f.image[start..start + CHUNK]);
    let stats = image.end_prefetch().unwrap();
    assert_eq!(origin.gets(), 1);
    assert_eq!(
        (
            stats.queued,
            stats.prefetched,
            stats.skipped,
            stats.errors,
            stats.stopped
        ),
        (1, 0, 1, 0, false),
        "{stats:?}"
    );
    // Ended: the image reports no prefetch any more.
    assert_eq!(image.prefetch_stats(), None);
}

/// A store whose gets all wait until `width` of them are waiting at once:
/// a read whose fetches were one after another would never get past it
/// (it fails after the watchdog instead of hanging).
struct Barrier {
    inner: Arc<DirStore>,
    width: u64,
    arrived: Mutex<u64>,
    full: Condvar,
    gets: AtomicU64,
}

impl ChunkStore for Barrier {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let mut arrived = self.arrived.lock().unwrap_or_else(PoisonError::into_inner);
        *arrived += 1;
        self.full.notify_all();
        let (arrived, timeout) = self
            .full
            .wait_timeout_while(arrived, WATCHDOG, |a| *a < self.width)
            .unwrap_or_else(PoisonError::into_inner);
        assert!(
            !timeout.timed_out() || *arrived >= self.width,
            "only {arrived} of {} gets were ever waiting at once",
            self.width
        );
        drop(arrived);
        self.inner.get(id)
    }
    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        self.inner.put(id, object)
    }
    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.inner.contains(id)
    }
    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.inner.remove(id)
    }
}

#[test]
fn read_ahead_follows_reads_off_the_profile_only() {
    let f = fixture();
    let origin = f.gated();
    let image = f.open_with(
        origin.clone(),
        LazyOptions {
            readahead_chunks: 2,
            readahead_threads: 1,
            memory_chunks: 0,
            parallel_fetches: 1,
            ..LazyOptions::default()
        },
    );
    let handle = image
        .prefetch(vec![ChunkIndex(0), ChunkIndex(8)], &options(1))
        .unwrap();
    handle.wait();
    assert_eq!(origin.gets(), 2);
    // Reads the profile planned: the profile, not a guess, says what comes
    // next, so nothing is read ahead.
    for index in [0, 8] {
        f.check_read(&image, index);
        image.wait_readahead_idle();
    }
    assert_eq!(origin.gets(), 2, "a planned read read ahead");
    // A read off the profile fetches its chunk and reads the next two ahead.
    f.check_read(&image, 12);
    image.wait_readahead_idle();
    assert_eq!(origin.gets(), 5);
    assert_eq!(image.metrics().readahead_fetches, 2);
    assert_eq!(image.prefetch_stats().unwrap().used, 2);
}

#[test]
fn a_read_across_missing_chunks_fetches_them_at_once() {
    let f = fixture();
    let width = 4;
    let store = Arc::new(Barrier {
        inner: Arc::clone(&f.origin),
        width,
        arrived: Mutex::new(0),
        full: Condvar::new(),
        gets: AtomicU64::new(0),
    });
    let image = f.open(store.clone(), width as usize);
    // Chunks 6..=9: four stored chunks, all cold.
    let (start, len) = (6 * CHUNK, 4 * CHUNK);
    let mut buf = vec![0u8; len];
    image.read_exact_at(&mut buf, start as u64).unwrap();
    assert!(buf == f.image[start..start + len]);
    assert_eq!(store.gets.load(Ordering::SeqCst), width);
    assert_eq!(image.metrics().store_fetches, width);
}

#[test]
fn a_read_with_one_fetch_at_a_time_fetches_each_chunk_once() {
    let f = fixture();
    let origin = f.gated();
    let image = f.open(origin.clone(), 1);
    let mut all = vec![0u8; f.image.len()];
    image.read_exact_at(&mut all, 0).unwrap();
    assert!(all == f.image);
    assert_eq!(origin.gets(), CHUNKS - 1);
}

#[test]
fn an_order_outside_the_manifest_is_rejected_and_one_prefetch_per_image() {
    let f = fixture();
    let origin = f.gated();
    let image = f.open(origin.clone(), 8);
    let err = image
        .prefetch([ChunkIndex(1), ChunkIndex(CHUNKS)], &options(2))
        .unwrap_err();
    assert!(matches!(
        err,
        LazyError::PrefetchOutside { chunks: CHUNKS, .. }
    ));
    let text = err.to_string();
    assert!(
        text.contains("cannot prefetch") && text.contains("16 chunks"),
        "{text}"
    );
    assert_eq!(origin.gets(), 0);
    assert!(image.prefetch_stats().is_none());

    image.prefetch([ChunkIndex(1)], &options(2)).unwrap().wait();
    let err = image.prefetch([ChunkIndex(2)], &options(2)).unwrap_err();
    assert!(matches!(err, LazyError::PrefetchStarted), "{err}");
    assert_eq!(origin.gets(), 1);
}

#[test]
fn dropping_the_image_stops_prefetch_after_the_fetches_in_flight() {
    let f = fixture();
    let origin = f.gated();
    let image = f.open(origin.clone(), 8);
    origin.close();
    let handle = image.prefetch(scrambled(), &options(2)).unwrap();
    wait_for("two prefetches started", || origin.gets() == 2);
    let dropping = std::thread::spawn(move || drop(image));
    wait_for("the drop asked the prefetch to stop", || {
        handle.stats().stopped
    });
    origin.open();
    dropping.join().unwrap();
    assert!(handle.is_finished());
    assert_eq!(origin.gets(), 2, "a chunk was fetched after the stop");
    let stats = handle.stats();
    assert_eq!(
        (stats.prefetched, stats.unused, stats.stopped),
        (2, 2, true)
    );
}

#[test]
fn stop_cuts_a_bandwidth_wait_short() {
    let f = fixture();
    let origin = f.gated();
    let image = f.open(origin.clone(), 8);
    // One byte per second: after the first chunk, the next may start only
    // in 18 hours.
    let capped = imagefs::PrefetchOptions {
        concurrency: 1,
        bandwidth: Some(1),
    };
    let handle = image.prefetch(scrambled(), &capped).unwrap();
    wait_for("the first chunk was prefetched", || {
        handle.stats().prefetched == 1
    });
    image.stop_prefetch();
    wait_for("the paced thread stopped", || handle.is_finished());
    assert_eq!(origin.gets(), 1);
    assert!(handle.stats().stopped);
}

#[test]
fn prefetch_off_or_without_an_order_starts_nothing() {
    let f = fixture();
    let origin = f.gated();
    let image = f.open(origin.clone(), 8);
    let order = Some(vec![ChunkIndex(0)]);
    let opts = options(2);
    assert!(
        prefetch::start(&image, PrefetchMode::Off, order, &opts)
            .unwrap()
            .is_none()
    );
    assert!(
        prefetch::start(&image, PrefetchMode::Auto, None, &opts)
            .unwrap()
            .is_none()
    );
    assert!(image.prefetch_stats().is_none());
    let order = Some(vec![ChunkIndex(0)]);
    let handle = prefetch::start(&image, PrefetchMode::Auto, order, &opts)
        .unwrap()
        .unwrap();
    handle.wait();
    assert_eq!(origin.gets(), 1);
}
