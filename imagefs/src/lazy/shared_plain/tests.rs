//! Unit tests of [`SharedPlain`]: key checks, capacity, single-flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, mpsc};

use super::*;

fn id(n: u8) -> ChunkId {
    ChunkId([n; 32])
}

fn key(n: u8) -> ChunkKey {
    ChunkKey([n; 32])
}

fn plain(byte: u8, len: usize) -> Arc<Vec<u8>> {
    Arc::new(vec![byte; len])
}

/// `get_or_fetch` with a fetch that must not run.
fn cached(cache: &SharedPlain, n: u8, k: u8) -> Option<Arc<Vec<u8>>> {
    let (result, served) = cache.get_or_fetch(&id(n), &key(k), || Err::<Arc<Vec<u8>>, ()>(()));
    match served {
        Served::Hit => Some(result.unwrap()),
        _ => None,
    }
}

#[test]
fn a_hit_needs_the_key_the_entry_was_decrypted_with() {
    let cache = SharedPlain::new(1 << 20);
    let (got, served) = cache.get_or_fetch(&id(1), &key(1), || Ok::<_, ()>(plain(0xaa, 100)));
    assert_eq!((got.unwrap().len(), served), (100, Served::Fetched));
    assert_eq!(cached(&cache, 1, 1).unwrap().as_slice(), &[0xaa; 100][..]);

    // Another key: a miss, whatever the fetch returns; the entry stays.
    assert!(cache.get(&id(1), &key(2)).is_none());
    let (got, served) = cache.get_or_fetch(&id(1), &key(2), || Ok::<_, ()>(plain(0xbb, 100)));
    assert_eq!(served, Served::Fetched);
    assert_eq!(got.unwrap()[0], 0xbb);
    assert_eq!(cached(&cache, 1, 1).unwrap()[0], 0xaa, "entry overwritten");
    assert!(cached(&cache, 1, 2).is_none(), "served under the wrong key");
    assert!(cache.stats().key_mismatches >= 2);
}

#[test]
fn failed_fetches_are_not_kept() {
    let cache = SharedPlain::new(1 << 20);
    let (got, served) = cache.get_or_fetch(&id(1), &key(1), || Err::<Arc<Vec<u8>>, _>("gone"));
    assert_eq!((got, served), (Err("gone"), Served::Fetched));
    assert!(cached(&cache, 1, 1).is_none());
    assert_eq!(cache.stats().bytes, 0);
}

#[test]
fn capacity_is_respected_and_the_least_recently_used_goes_first() {
    let cache = SharedPlain::new(300);
    for n in 1..=3 {
        let _ = cache.get_or_fetch(&id(n), &key(n), || Ok::<_, ()>(plain(n, 100)));
    }
    assert_eq!(cache.stats().bytes, 300);
    // Use 1, so 2 is the oldest when 4 comes in.
    assert!(cached(&cache, 1, 1).is_some());
    let _ = cache.get_or_fetch(&id(4), &key(4), || Ok::<_, ()>(plain(4, 100)));
    let stats = cache.stats();
    assert_eq!((stats.bytes, stats.evictions), (300, 1));
    assert!(
        cached(&cache, 2, 2).is_none(),
        "the least recently used stayed"
    );
    for n in [1, 3, 4] {
        assert!(cached(&cache, n, n).is_some(), "chunk {n} was evicted");
    }
    // A chunk bigger than the capacity is served but not kept.
    let (got, _) = cache.get_or_fetch(&id(5), &key(5), || Ok::<_, ()>(plain(5, 301)));
    assert_eq!(got.unwrap().len(), 301);
    assert!(cached(&cache, 5, 5).is_none());
    assert_eq!(cache.stats().bytes, 300);
    // Capacity 0 keeps nothing.
    let none = SharedPlain::new(0);
    let _ = none.get_or_fetch(&id(1), &key(1), || Ok::<_, ()>(plain(1, 1)));
    assert!(cached(&none, 1, 1).is_none());
}

#[test]
fn concurrent_getters_share_one_fetch() {
    const READERS: usize = 6;
    let cache = SharedPlain::new(1 << 20);
    let fetches = AtomicU64::new(0);
    // The leader's fetch waits until every other reader is waiting for it.
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let start = Barrier::new(READERS);
    let served: Vec<Served> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let (got, served) = cache.get_or_fetch(&id(9), &key(9), || {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        released.lock().unwrap().recv().unwrap();
                        Ok::<_, ()>(plain(9, 1000))
                    });
                    assert_eq!(got.unwrap().as_slice(), &[9; 1000][..]);
                    served
                })
            })
            .collect();
        cachetiers::testing::wait_for("the other readers to join", || {
            cache.flights.waiting() == READERS - 1
        });
        release.send(()).unwrap();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(served.iter().filter(|s| **s == Served::Fetched).count(), 1);
    let stats = cache.stats();
    assert_eq!(
        (stats.fetches, stats.joined + stats.hits),
        (1, READERS as u64 - 1)
    );
}

#[test]
fn waiters_of_a_failed_fetch_fetch_for_themselves() {
    let cache = SharedPlain::new(1 << 20);
    let cache = &cache;
    let (release, released) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let leader = s.spawn(move || {
            cache.get_or_fetch(&id(3), &key(3), || {
                released.recv().unwrap();
                Err::<Arc<Vec<u8>>, _>("leader failed")
            })
        });
        cachetiers::testing::wait_for("the leader to fetch", || cache.flights.in_progress() == 1);
        let follower =
            s.spawn(|| cache.get_or_fetch(&id(3), &key(3), || Ok::<_, &str>(plain(3, 10))));
        cachetiers::testing::wait_for("the follower to join", || cache.flights.waiting() == 1);
        release.send(()).unwrap();
        assert_eq!(
            leader.join().unwrap(),
            (Err("leader failed"), Served::Fetched)
        );
        let (got, served) = follower.join().unwrap();
        assert_eq!((got.unwrap().len(), served), (10, Served::Fetched));
    });
    assert!(cached(cache, 3, 3).is_some());
}
