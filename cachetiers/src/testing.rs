//! A store for tests (feature `test-util`): [`GatedStore`] wraps a real
//! store, forwards `put`, `contains` and `remove` to it, and controls
//! `get`: it counts gets, can hold them at a gate the test opens, can
//! change what they return, and claims [`ChunkStore::checks_gets`] only
//! when told to.
//!
//! With a closed gate a test can line up concurrent readers and then let
//! the one fetch go ([`wait_for`] waits for the line-up), without any
//! timing assumption.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use manifest::ChunkId;

use crate::store::{ChunkStore, PutOutcome, StoreError};

/// How long a get waits at a closed gate, and [`wait_for`] for its
/// condition, before the test fails: a hang guard, never a timing check.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// What a get's result goes through before it is returned.
type GetHook = Box<dyn Fn(&ChunkId, &mut Option<Vec<u8>>) + Send + Sync>;

/// Which gets wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    Closed,
    ClosedFor(ChunkId),
}

impl Gate {
    fn holds(self, id: &ChunkId) -> bool {
        match self {
            Gate::Open => false,
            Gate::Closed => true,
            Gate::ClosedFor(held) => held == *id,
        }
    }
}

/// A store over `inner` whose gets the test controls (see the module
/// docs). The gate starts open.
pub struct GatedStore<S> {
    inner: S,
    gets: AtomicU64,
    gate: Mutex<Gate>,
    opened: Condvar,
    checks_gets: bool,
    hook: Option<GetHook>,
}

impl<S: ChunkStore + std::fmt::Debug> std::fmt::Debug for GatedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedStore")
            .field("inner", &self.inner)
            .field("gets", &self.gets())
            .field("gate", &*self.lock())
            .field("checks_gets", &self.checks_gets)
            .finish_non_exhaustive()
    }
}

impl<S: ChunkStore> GatedStore<S> {
    /// Over `inner`: gate open, no hook, `checks_gets` false (so tiered
    /// stores and images hash what it returns).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            gets: AtomicU64::new(0),
            gate: Mutex::new(Gate::Open),
            opened: Condvar::new(),
            checks_gets: false,
            hook: None,
        }
    }

    /// Whether it claims [`ChunkStore::checks_gets`]. Claim it only over a
    /// store that checks and with no hook that changes bytes.
    #[must_use]
    pub fn with_checks_gets(mut self, claim: bool) -> Self {
        self.checks_gets = claim;
        self
    }

    /// Passes every get's result (after the inner store's get) through
    /// `hook`, which may change the bytes or turn a hit into a miss.
    #[must_use]
    pub fn with_get_hook(
        mut self,
        hook: impl Fn(&ChunkId, &mut Option<Vec<u8>>) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every later get wait until [`GatedStore::open`].
    pub fn close(&self) {
        *self.lock() = Gate::Closed;
    }

    /// Makes later gets of `id` (only) wait until [`GatedStore::open`].
    pub fn close_for(&self, id: ChunkId) {
        *self.lock() = Gate::ClosedFor(id);
    }

    /// Lets the waiting gets, and all later ones, go on.
    pub fn open(&self) {
        *self.lock() = Gate::Open;
        self.opened.notify_all();
    }

    /// Gets started so far (those waiting at the gate included).
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    /// Waits while the gate holds `id`; panics (failing the test) if it is
    /// still closed after [`WATCHDOG`].
    fn pass_gate(&self, id: &ChunkId) {
        let deadline = Instant::now() + WATCHDOG;
        let mut gate = self.lock();
        while gate.holds(id) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the gate of chunk {id} never opened");
            gate = self
                .opened
                .wait_timeout(gate, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl<S: ChunkStore> ChunkStore for GatedStore<S> {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.pass_gate(id);
        let mut got = self.inner.get(id)?;
        if let Some(hook) = &self.hook {
            hook(id, &mut got);
        }
        Ok(got)
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
    fn checks_gets(&self) -> bool {
        self.checks_gets
    }
}

/// Polls `condition` until it holds; panics naming `what` if it does not
/// within [`WATCHDOG`] (a hang guard, not a timing assertion).
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what}: not so within {WATCHDOG:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::DirStore;

    #[test]
    fn gets_wait_at_a_closed_gate_and_go_on_when_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (b"object a".to_vec(), b"object b".to_vec());
        let (ida, idb) = (ChunkId::of_object(&a), ChunkId::of_object(&b));
        let store = Arc::new(GatedStore::new(DirStore::create(dir.path()).unwrap()));
        store.put(&ida, &a).unwrap();
        store.put(&idb, &b).unwrap();
        assert!(store.contains(&ida).unwrap() && !store.checks_gets());

        store.close_for(ida);
        let held = std::thread::spawn({
            let store = Arc::clone(&store);
            move || store.get(&ida)
        });
        // Another id passes a gate closed for `a`.
        assert_eq!(store.get(&idb).unwrap(), Some(b));
        wait_for("the held get started", || store.gets() == 2);
        assert!(!held.is_finished());
        store.open();
        assert_eq!(held.join().unwrap().unwrap(), Some(a));
        assert!(store.remove(&ida).unwrap());
        assert_eq!(store.get(&ida).unwrap(), None);
    }

    #[test]
    fn a_hook_changes_what_gets_return_and_checks_gets_is_a_switch() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"object".to_vec();
        let id = ChunkId::of_object(&bytes);
        let store = GatedStore::new(DirStore::create(dir.path()).unwrap())
            .with_get_hook(|_, got| {
                if let Some(b) = got.as_mut() {
                    b[0] ^= 1;
                }
            })
            .with_checks_gets(true);
        store.put(&id, &bytes).unwrap();
        assert!(store.checks_gets());
        assert_ne!(store.get(&id).unwrap(), Some(bytes.clone()));
        assert_eq!(store.inner().get(&id).unwrap(), Some(bytes));
    }
}
