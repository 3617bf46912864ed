//! [`SingleFlight`]: concurrent requests for the same key share one call.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// One call in progress: its result once the leader has it.
struct Call<V> {
    state: Mutex<CallState<V>>,
    done: Condvar,
}

enum CallState<V> {
    /// The leader is still working.
    Running,
    /// The leader finished with this value.
    Finished(V),
    /// The leader unwound (panicked) without a value; followers retry.
    Abandoned,
}

/// Deduplicates concurrent work by key: while one thread (the leader) runs
/// the work for a key, other threads asking for the same key (followers)
/// wait for the leader's result instead of doing the work again.
///
/// Synchronous and thread-safe: a `Mutex` over a map of calls in progress,
/// each with a `Condvar`. Once the leader finishes, the key is forgotten:
/// a later request runs the work again (caching is the caller's business).
/// If the leader panics, its followers do not hang: one of them becomes
/// the new leader.
pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Arc<Call<V>>>>,
    /// Followers currently waiting for a leader.
    waiting: AtomicUsize,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl<K, V> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running = self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("SingleFlight")
            .field("running", &running)
            .finish()
    }
}

/// Whether a [`SingleFlight::run`] did the work or shared another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flight {
    /// This thread ran the work.
    Led,
    /// This thread waited for another thread's result.
    Joined,
}

/// Publishes the leader's outcome, even when the work unwinds.
struct Publish<'a, K: Eq + Hash, V> {
    flight: &'a SingleFlight<K, V>,
    key: &'a K,
    call: Arc<Call<V>>,
    value: Option<V>,
    /// Whether the call may still be in the map (unregistering once is
    /// enough).
    registered: bool,
}

impl<K: Eq + Hash, V> Publish<'_, K, V> {
    /// Takes the call out of the map (if it is still this call: a later
    /// leader may have put its own there), so no new follower can join.
    fn unregister(&mut self) {
        if !std::mem::replace(&mut self.registered, false) {
            return;
        }
        let mut calls = self
            .flight
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if calls
            .get(self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.call))
        {
            calls.remove(self.key);
        }
    }
}

impl<K: Eq + Hash, V> Drop for Publish<'_, K, V> {
    fn drop(&mut self) {
        self.unregister();
        let mut state = self
            .call
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *state = match self.value.take() {
            Some(v) => CallState::Finished(v),
            None => CallState::Abandoned,
        };
        self.call.done.notify_all();
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// A new, empty single-flight group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` for `key`, unless another thread is already running it
    /// for the same key; then waits for that thread's result and returns a
    /// clone of it.
    pub fn run(&self, key: &K, work: impl FnOnce() -> V) -> (V, Flight) {
        let mut work = Some(work);
        loop {
            let (call, leader) = {
                let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
                match calls.get(key) {
                    Some(call) => (Arc::clone(call), false),
                    None => {
                        let call = Arc::new(Call {
                            state: Mutex::new(CallState::Running),
                            done: Condvar::new(),
                        });
                        calls.insert(key.clone(), Arc::clone(&call));
                        (call, true)
                    }
                }
            };
            if leader {
                let mut publish = Publish {
                    flight: self,
                    key,
                    call,
                    value: None,
                    registered: true,
                };
                // `work` is only taken by a leader, and a leader returns.
                let Some(work) = work.take() else {
                    unreachable!("single-flight work taken twice")
                };
                let value = work();
                // Once unregistered, only followers that already joined
                // hold the call; without any, nobody needs a copy (a
                // value here is usually a 512 KiB object).
                publish.unregister();
                if Arc::strong_count(&publish.call) > 1 {
                    publish.value = Some(value.clone());
                }
                return (value, Flight::Led);
            }
            let mut state = call.state.lock().unwrap_or_else(PoisonError::into_inner);
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let outcome = loop {
                match &*state {
                    CallState::Running => {
                        state = call
                            .done
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    CallState::Finished(v) => break Some(v.clone()),
                    CallState::Abandoned => break None,
                }
            };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Some(v) = outcome {
                return (v, Flight::Joined);
            }
            // The leader unwound: try again, perhaps as the leader.
        }
    }

    /// How many threads are waiting for another thread's call (a gauge).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// How many keys have work in progress.
    pub fn in_progress(&self) -> usize {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_callers_share_one_run() {
        let flight = SingleFlight::<u32, u32>::new();
        let runs = AtomicUsize::new(0);
        let threads = 8;
        let results: Vec<(u32, Flight)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        flight.run(&7, || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            // The leader holds the call open until every
                            // other thread waits on it.
                            while flight.waiting() < threads - 1 {
                                std::thread::yield_now();
                            }
                            42
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|(v, _)| *v == 42));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let led = results.iter().filter(|(_, f)| *f == Flight::Led).count();
        assert_eq!(led, 1);
        assert_eq!(flight.in_progress(), 0);
        assert_eq!(flight.waiting(), 0);
    }

    /// Counts its clones (a fetched object is 512 KiB: copies matter).
    #[derive(Debug)]
    struct Counted<'a>(&'a AtomicUsize);

    impl Clone for Counted<'_> {
        fn clone(&self) -> Self {
            self.0.fetch_add(1, Ordering::SeqCst);
            Counted(self.0)
        }
    }

    #[test]
    fn a_leader_alone_does_not_copy_its_value() {
        let clones = AtomicUsize::new(0);
        let flight = SingleFlight::<u32, Counted<'_>>::new();
        let (_, led) = flight.run(&3, || Counted(&clones));
        assert_eq!(led, Flight::Led);
        assert_eq!(clones.load(Ordering::SeqCst), 0);
        assert_eq!(flight.in_progress(), 0);
    }

    #[test]
    fn a_panicking_leader_does_not_strand_followers() {
        let flight = SingleFlight::<u32, u32>::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            flight.run(&1, || panic!("boom"))
        }));
        assert!(r.is_err());
        assert_eq!(flight.in_progress(), 0);
        assert_eq!(flight.run(&1, || 5), (5, Flight::Led));
    }
}
