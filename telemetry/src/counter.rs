//! [`Counter`]: an event count bumped from many threads and read as a
//! total in a report snapshot. Relaxed ordering: a snapshot is a set of
//! totals, not a consistent cut, so no counter orders memory for another.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic count of events (requests, bytes, hits).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Counts `n` more.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one more.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::Counter;
    use std::sync::Arc;

    #[test]
    fn counts_from_several_threads_add_up() {
        let c = Arc::new(Counter::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.inc();
                    }
                    c.add(5);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 4 * 1005);
    }
}
