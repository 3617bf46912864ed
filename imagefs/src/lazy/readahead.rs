//! Read-ahead: after a read ending in chunk `k`, fetch chunks `k+1 ..= k+N`
//! in a few background threads, so a sequential reader finds them ready.
//!
//! Bounded: at most `N` chunks are queued or in flight, from a fixed pool
//! of threads; a chunk already present (dedicated tier, memory cache),
//! a hole, or already queued is skipped, and when the queue is full the
//! hint is dropped. A fetch started by read-ahead goes through the same
//! single-flight as readers, so a reader arriving meanwhile waits for it
//! instead of fetching again. Dropping the `Readahead` stops the threads
//! after their current fetch.
//!
//! With a start profile, a read of a chunk the profile names reads nothing
//! ahead (the profile says what comes next); a read off the profile does.
//! The threads run at the background priority of [`super::priority`].

use std::collections::BTreeSet;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use manifest::ChunkIndex;

use super::{Inner, Origin};

/// Chunks queued or being fetched.
#[derive(Default)]
struct Pending {
    chunks: BTreeSet<u64>,
}

struct Shared {
    pending: Mutex<Pending>,
    idle: Condvar,
}

/// The read-ahead threads of one [`LazyImage`](super::LazyImage).
pub(super) struct Readahead {
    inner: Arc<Inner>,
    chunks: usize,
    queue: Option<SyncSender<u64>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Readahead {
    /// Starts `threads` workers (at least 1, at most `chunks`) for a
    /// window of `chunks` chunks.
    pub(super) fn start(inner: Arc<Inner>, chunks: usize, threads: usize) -> Self {
        let (tx, rx) = sync_channel::<u64>(chunks);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            idle: Condvar::new(),
        });
        let threads = (0..threads.clamp(1, chunks))
            .filter_map(|n| {
                let (inner, rx, shared) =
                    (Arc::clone(&inner), Arc::clone(&rx), Arc::clone(&shared));
                std::thread::Builder::new()
                    .name(format!("imagefs-readahead-{n}"))
                    .spawn(move || worker(&inner, &rx, &shared))
                    .ok()
            })
            .collect();
        Self {
            inner,
            chunks,
            queue: Some(tx),
            shared,
            threads,
        }
    }

    /// Queues the chunks after `last` that need fetching, unless the
    /// start profile planned `last` (see the module docs).
    pub(super) fn after_read(&self, last: ChunkIndex) {
        let Some(queue) = &self.queue else { return };
        if self.inner.prefetch.planned(last) {
            return;
        }
        let count = self.inner.manifest.chunks.len() as u64;
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for next in (last.0 + 1..count).take(self.chunks) {
            if pending.chunks.len() >= self.chunks {
                break;
            }
            if pending.chunks.contains(&next) || !self.inner.needs_fetch(ChunkIndex(next)) {
                continue;
            }
            match queue.try_send(next) {
                Ok(()) => {
                    pending.chunks.insert(next);
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => break,
            }
        }
    }

    /// Waits until nothing is queued or being fetched.
    pub(super) fn wait_idle(&self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !pending.chunks.is_empty() {
            pending = self
                .shared
                .idle
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

fn worker(inner: &Inner, rx: &Mutex<Receiver<u64>>, shared: &Shared) {
    super::priority::lower_this_thread();
    loop {
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(index) = next else { return };
        // Errors are counted by the fetch and reported to the reader that
        // asks for the chunk; read-ahead itself has nobody to tell.
        if inner.needs_fetch(ChunkIndex(index)) {
            let _ = inner.load(ChunkIndex(index), Origin::Readahead);
        }
        let mut pending = shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.chunks.remove(&index);
        if pending.chunks.is_empty() {
            shared.idle.notify_all();
        }
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        // Closing the queue ends each worker after its current fetch.
        self.queue = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
