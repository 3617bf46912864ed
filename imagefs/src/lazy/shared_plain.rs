//! [`SharedPlain`]: a host-wide, in-memory cache of decrypted chunks that
//! the agent's VMs share, with one single-flight per chunk.
//!
//! Without it, N VMs of the same image that read a chunk at about the
//! same time each get the object from the shared tier, hash it and
//! decrypt it: the tiered store's single-flight shares the get, not the
//! CPU work after it (about 0.6 ms a 512 KiB chunk). With it, one reader
//! does that work and the others copy its plaintext.
//!
//! Why this keeps DESIGN's "every shared tier holds only ciphertext": it
//! is no tier. It lives only in the memory of the one process that
//! unsealed the manifests (the agent, which holds every VM's keys
//! anyway); nothing is written to disk, sent to another host, or handed
//! to a guest except through that guest's own reads. And an entry is
//! served only to a reader that presents the same [`ChunkKey`] it was
//! decrypted with: a chunk id is not secret (every shared tier is
//! addressed by it), the key is, and a reader without the key could not
//! have decrypted the ciphertext itself. A reader with another key gets
//! a miss, does its own fetch (whose decryption then fails unless its key
//! is right) and never replaces the entry. The single-flight is keyed by
//! id and key together, so a reader never receives plaintext decrypted
//! with someone else's key either.
//!
//! Only pristine chunks (as decrypted from the store) go in: a VM's
//! writes land in its own dedicated tier, which its reads consult first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use cachetiers::{Flight, SingleFlight};
use manifest::{ChunkId, ChunkKey};
use telemetry::counter::Counter;

/// How a [`SharedPlain::get_or_fetch`] got its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the cache.
    Hit,
    /// From another reader's fetch, waited for.
    Joined,
    /// By this reader's own fetch.
    Fetched,
}

/// Host-wide counters of a [`SharedPlain`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedPlainStats {
    /// Lookups served from the cache.
    pub hits: u64,
    /// Lookups that waited for another reader's fetch.
    pub joined: u64,
    /// Fetches done through it.
    pub fetches: u64,
    /// Lookups that found the chunk kept under another key (served as a
    /// miss).
    pub key_mismatches: u64,
    /// Entries evicted to stay under the capacity.
    pub evictions: u64,
    /// Plaintext bytes held now.
    pub bytes: u64,
}

/// A flight's key: the chunk and the raw bytes of the key it is
/// decrypted with.
type FlightKey = (ChunkId, [u8; 32]);

struct Entry {
    key: ChunkKey,
    plain: Arc<Vec<u8>>,
    /// Its place in `Lru::order`.
    tick: u64,
}

/// The cache proper: entries by id, and their ids by last use.
#[derive(Default)]
struct Lru {
    entries: HashMap<ChunkId, Entry>,
    order: BTreeMap<u64, ChunkId>,
    next_tick: u64,
    bytes: u64,
}

impl Lru {
    fn touch(&mut self, id: &ChunkId) {
        let tick = self.next_tick;
        if let Some(entry) = self.entries.get_mut(id) {
            self.order.remove(&entry.tick);
            entry.tick = tick;
            self.order.insert(tick, *id);
            self.next_tick += 1;
        }
    }
}

/// A capacity-bounded (bytes of plaintext) LRU of decrypted chunks keyed
/// by chunk id, plus a single-flight (see the module docs).
pub struct SharedPlain {
    capacity: u64,
    lru: Mutex<Lru>,
    /// A fetch in progress per (id, key bytes); the value is `None` when
    /// the leader failed (each waiter then fetches for itself, so its
    /// error names its own chunk index).
    flights: SingleFlight<FlightKey, Option<Arc<Vec<u8>>>>,
    hits: Counter,
    joined: Counter,
    fetches: Counter,
    key_mismatches: Counter,
    evictions: Counter,
}

impl std::fmt::Debug for SharedPlain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPlain")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SharedPlain {
    /// An empty cache holding at most `capacity` bytes of plaintext.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            lru: Mutex::default(),
            flights: SingleFlight::new(),
            hits: Counter::default(),
            joined: Counter::default(),
            fetches: Counter::default(),
            key_mismatches: Counter::default(),
            evictions: Counter::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The plaintext of `id` if it is kept under `key`.
    pub fn get(&self, id: &ChunkId, key: &ChunkKey) -> Option<Arc<Vec<u8>>> {
        let mut lru = self.lock();
        let entry = lru.entries.get(id)?;
        if entry.key != *key {
            self.key_mismatches.inc();
            return None;
        }
        let plain = Arc::clone(&entry.plain);
        lru.touch(id);
        Some(plain)
    }

    /// Keeps `plain` as `id`'s plaintext under `key`, evicting the least
    /// recently used entries to make room. An entry already there (under
    /// any key) is left as it is, and so is a chunk larger than the
    /// whole capacity.
    fn put(&self, id: &ChunkId, key: &ChunkKey, plain: &Arc<Vec<u8>>) {
        let len = plain.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut lru = self.lock();
        if lru.entries.contains_key(id) {
            return;
        }
        while lru.bytes + len > self.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(gone) = lru.entries.remove(&oldest) {
                lru.bytes -= gone.plain.len() as u64;
                self.evictions.inc();
            }
        }
        let tick = lru.next_tick;
        lru.next_tick += 1;
        lru.order.insert(tick, *id);
        lru.entries.insert(
            *id,
            Entry {
                key: key.clone(),
                plain: Arc::clone(plain),
                tick,
            },
        );
        lru.bytes += len;
    }

    /// `id`'s plaintext under `key`: from the cache, from another reader's
    /// fetch of the same chunk with the same key, or from `fetch` (whose
    /// success is kept). `fetch` must return the chunk decrypted with
    /// `key` and checked (GCM and length): what it returns is served to
    /// every reader that presents `key`.
    pub fn get_or_fetch<E>(
        &self,
        id: &ChunkId,
        key: &ChunkKey,
        fetch: impl FnOnce() -> Result<Arc<Vec<u8>>, E>,
    ) -> (Result<Arc<Vec<u8>>, E>, Served) {
        if let Some(plain) = self.get(id, key) {
            self.hits.inc();
            return (Ok(plain), Served::Hit);
        }
        let mut fetch = Some(fetch);
        let mut own = None;
        let (shared, flight) = self.flights.run(&(*id, key.0), || {
            // A flight may have finished between our look and leading.
            if let Some(plain) = self.get(id, key) {
                return Some(plain);
            }
            let fetch = fetch.take()?;
            self.fetches.inc();
            let result = fetch();
            let plain = result.as_ref().ok().cloned();
            if let Some(plain) = &plain {
                self.put(id, key, plain);
            }
            own = Some(result);
            plain
        });
        if let Some(result) = own {
            return (result, Served::Fetched);
        }
        match (shared, flight) {
            (Some(plain), Flight::Joined) => {
                self.joined.inc();
                (Ok(plain), Served::Joined)
            }
            (Some(plain), Flight::Led) => {
                self.hits.inc();
                (Ok(plain), Served::Hit)
            }
            (None, _) => {
                // The leader failed: fetch for ourselves (not kept shared
                // through the flight; kept in the cache if it works).
                let Some(fetch) = fetch.take() else {
                    unreachable!("a reader that did not fetch still has its fetch")
                };
                self.fetches.inc();
                let result = fetch();
                if let Ok(plain) = &result {
                    self.put(id, key, plain);
                }
                (result, Served::Fetched)
            }
        }
    }

    /// Readers waiting for another reader's fetch now (a gauge).
    pub fn waiting(&self) -> usize {
        self.flights.waiting()
    }

    /// The counters so far.
    pub fn stats(&self) -> SharedPlainStats {
        SharedPlainStats {
            hits: self.hits.get(),
            joined: self.joined.get(),
            fetches: self.fetches.get(),
            key_mismatches: self.key_mismatches.get(),
            evictions: self.evictions.get(),
            bytes: self.lock().bytes,
        }
    }
}

#[cfg(test)]
mod tests;
