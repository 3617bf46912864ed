//! A read's own misses fetched at once: a read covering several chunks
//! that are neither local nor in memory fetches them on a few scoped
//! threads (the reader's among them) instead of one after another, so a
//! large cold read costs about one fetch's latency, not one per chunk.
//!
//! Bounded: at most `parallel` fetches at once per read, and only the
//! read's own chunks, whose plaintexts the read needs anyway. Each fetch
//! goes through the image's single-flight, so a chunk that read-ahead,
//! prefetch or another reader is already fetching is joined, not fetched
//! again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use manifest::ChunkIndex;

use super::{Fetched, Inner, Origin};

/// The chunks of one read fetched ahead of copying, by position in the
/// read (0 = its first chunk).
#[derive(Default)]
pub(super) struct Ready {
    first: u64,
    fetched: Vec<(u64, Fetched)>,
}

impl Ready {
    /// The fetched result for the read's chunk at position `at`, if this
    /// read fetched it ahead.
    pub(super) fn take(&mut self, at: u64) -> Option<Fetched> {
        let index = self.first + at;
        let pos = self.fetched.iter().position(|(i, _)| *i == index)?;
        Some(self.fetched.swap_remove(pos).1)
    }
}

/// Fetches the chunks `first..=last` that need a fetch, up to `parallel`
/// at once, when there are at least two (one is fetched by the read's
/// own path as before).
pub(super) fn fetch_missing(inner: &Inner, first: u64, last: u64, parallel: usize) -> Ready {
    let mut ready = Ready {
        first,
        fetched: Vec::new(),
    };
    if parallel < 2 || last <= first {
        return ready;
    }
    let missing: Vec<u64> = (first..=last)
        .filter(|&i| inner.needs_fetch(ChunkIndex(i)))
        .collect();
    if missing.len() < 2 {
        return ready;
    }
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(missing.len()));
    let work = || {
        while let Some(&index) = missing.get(next.fetch_add(1, Ordering::Relaxed)) {
            let fetched = inner.load(ChunkIndex(index), Origin::Demand);
            results
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((index, fetched));
        }
    };
    std::thread::scope(|s| {
        // The reader's thread is one of the workers; a helper that cannot
        // be spawned only means fewer fetches at once.
        for n in 1..parallel.min(missing.len()) {
            let spawned = std::thread::Builder::new()
                .name(format!("imagefs-read-{n}"))
                .spawn_scoped(s, work);
            if spawned.is_err() {
                break;
            }
        }
        work();
    });
    ready.fetched = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    ready
}
