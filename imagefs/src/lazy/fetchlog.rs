//! The optional log of every fetch from the chunk store, with when it ran
//! and who asked ([`LazyImage::record_fetches`](super::LazyImage::record_fetches)),
//! for timelines of a start (`serve --record-fetches`). Off by default:
//! while off, a fetch costs one atomic load here.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use manifest::report::{FetchCause, FetchEvent, FetchLog};

use super::Origin;

/// The recorder, shared by every fetching thread.
#[derive(Debug, Default)]
pub(super) struct FetchRecorder {
    /// Set when recording starts: the time events count from, and the
    /// most events kept.
    started: OnceLock<(Instant, usize)>,
    log: Mutex<FetchLog>,
}

fn cause(origin: Origin) -> FetchCause {
    match origin {
        Origin::Demand => FetchCause::Demand,
        Origin::Readahead => FetchCause::Readahead,
        Origin::Prefetch => FetchCause::Prefetch,
    }
}

impl FetchRecorder {
    /// Starts recording (times count from now), keeping at most `limit`
    /// events. A second call changes nothing.
    pub(super) fn start(&self, limit: usize) {
        let _ = self.started.set((Instant::now(), limit));
    }

    /// When a fetch starts: the time to pass to [`Self::done`], or `None`
    /// when not recording.
    pub(super) fn begin(&self) -> Option<Instant> {
        self.started.get().is_some().then(Instant::now)
    }

    /// A fetch that began at `began` has its object of `bytes` bytes.
    pub(super) fn done(&self, began: Option<Instant>, chunk: u64, origin: Origin, bytes: u64) {
        let (Some(began), Some((epoch, limit))) = (began, self.started.get()) else {
            return;
        };
        let us = |t: Instant| {
            u64::try_from(t.saturating_duration_since(*epoch).as_micros()).unwrap_or(u64::MAX)
        };
        let event = FetchEvent {
            chunk,
            cause: cause(origin),
            start_us: us(began),
            end_us: us(Instant::now()),
            bytes,
        };
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.events.len() < *limit {
            log.events.push(event);
        } else {
            log.dropped += 1;
        }
    }

    /// The log so far, `None` if recording never started.
    pub(super) fn snapshot(&self) -> Option<FetchLog> {
        self.started.get()?;
        Some(
            self.log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}
