//! The tiered reader: an ordered stack of chunk stores read top-down.
//!
//! [`TieredStore`] holds named tiers, fastest first (dedicated plaintext
//! lives above it, in `imagefs`; here: shared local, AZ cache, origin). A
//! get tries each tier in order:
//!
//! - a verified object is a hit: every tier above it is filled with it
//!   (`put`; a failing fill is counted and remembered, never fatal);
//! - a miss goes on to the next tier;
//! - an object whose SHA-256 is not its id (or a tier's own
//!   [`StoreError::Corrupt`]) is a verification failure: counted, and the
//!   read goes on. A cache tier's bad copy is dropped (`remove`); the
//!   origin's (the last tier) is **quarantined** instead: readers never
//!   delete from the origin, where one deduplicated object serves every
//!   image that has the chunk. A quarantined id is not asked of the origin
//!   again by this process (its error says why) until a `put` through
//!   this store writes the object again (a re-convert repairs it);
//!   quarantines are counted in [`TieredSnapshot::quarantined`];
//! - any other error (I/O, unreachable) is counted and the read goes on.
//!
//! When no tier serves the chunk, [`TieredStore::fetch`] fails with
//! [`TieredError::Unavailable`], naming the id and what each tier said.
//! Concurrent gets of the same id share one fetch ([`SingleFlight`]).
//!
//! Submodules: [`flight`] holds [`SingleFlight`]; [`metrics`] holds the
//! per-tier counters, latency histograms and their Prometheus text.

pub mod flight;
pub mod metrics;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use manifest::ChunkId;

pub use flight::{Flight, SingleFlight};
use metrics::TierCounters;
pub use metrics::{LATENCY_BUCKETS, TierSnapshot, TieredSnapshot};

use crate::checked::{Bounded, Verified, check_get};
use crate::store::{ChunkStore, PutOutcome, StoreError};

/// What one tier said about one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierOutcome {
    /// It did not have it.
    Miss,
    /// It had a copy that failed verification (now dropped).
    Corrupt(String),
    /// The origin's copy failed verification (now, or earlier in this
    /// process) and is quarantined: not served, and not deleted.
    Quarantined(String),
    /// It failed.
    Failed(String),
}

/// One tier's answer, in a [`TieredError::Unavailable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierAttempt {
    /// The tier's name.
    pub tier: String,
    /// What it said.
    pub outcome: TierOutcome,
}

impl fmt::Display for TierAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            TierOutcome::Miss => write!(f, "{}: miss", self.tier),
            TierOutcome::Corrupt(why) => write!(f, "{}: corrupt copy dropped ({why})", self.tier),
            TierOutcome::Quarantined(why) => write!(
                f,
                "{}: corrupt copy quarantined, not deleted ({why})",
                self.tier
            ),
            TierOutcome::Failed(why) => write!(f, "{}: failed ({why})", self.tier),
        }
    }
}

/// Errors from a [`TieredStore`]. Cloneable: one failed fetch is handed
/// to every thread that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TieredError {
    /// No tier could serve the chunk.
    #[error("chunk {id} is unavailable from every tier: {}", list(attempts))]
    Unavailable {
        /// The chunk.
        id: ChunkId,
        /// What each tier said, fastest first.
        attempts: Vec<TierAttempt>,
    },
    /// A tiered store needs at least one tier.
    #[error("a tiered store needs at least one tier")]
    NoTiers,
    /// Two tiers have the same name (metrics would mix them up).
    #[error("two tiers are named `{name}`")]
    DuplicateTier {
        /// The name.
        name: String,
    },
    /// The fetching thread unwound before it had an answer.
    #[error("chunk {id}: the fetch was abandoned")]
    Abandoned {
        /// The chunk.
        id: ChunkId,
    },
}

fn list(attempts: &[TierAttempt]) -> String {
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl TieredError {
    /// Whether every tier simply missed (no failure, no corruption).
    pub fn is_clean_miss(&self) -> bool {
        matches!(self, TieredError::Unavailable { attempts, .. }
            if attempts.iter().all(|a| a.outcome == TierOutcome::Miss))
    }
}

/// A verified object and the tier it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The object (its SHA-256 is its id).
    pub object: Vec<u8>,
    /// Index of the tier that served it (0 is the fastest).
    pub tier: usize,
}

struct Tier {
    name: String,
    store: Arc<dyn ChunkStore>,
    counters: TierCounters,
}

/// Named chunk stores read fastest first, with fill-up, verification,
/// single-flight and metrics (see the module docs).
///
/// As a [`ChunkStore`] itself: `get` is [`TieredStore::fetch`] (a miss in
/// every tier is `Ok(None)`; any failure makes it an error naming each
/// tier); `contains` asks the tiers in order; `remove` (an explicit
/// administrative removal, never a reader's) drops the object from every
/// tier; and `put` writes to the **last** tier (the origin) only, and
/// lifts its quarantine. The origin is the source of truth: an object put only into a
/// cache could be evicted and lost, while one in the origin reaches the
/// caches on its first read. Instances do not write shared tiers anyway
/// (shared tiers are read-only to instances).
pub struct TieredStore {
    tiers: Vec<Tier>,
    flights: SingleFlight<ChunkId, Result<Fetched, TieredError>>,
    shared_fetches: AtomicU64,
    unavailable: AtomicU64,
    /// Ids whose origin copy failed verification, with why (see the
    /// module docs); at most [`MAX_QUARANTINED`] remembered.
    quarantine: Mutex<HashMap<ChunkId, String>>,
    quarantined: AtomicU64,
}

/// The most quarantined ids remembered; past it a bad origin copy is still
/// refused (it fails verification each time) and never deleted, only
/// asked again. Bounds the memory a damaged origin can cost.
pub const MAX_QUARANTINED: usize = 65_536;

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field(
                "tiers",
                &self.tiers.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl TieredStore {
    /// A tiered store over `tiers`, fastest first, each with a unique name.
    pub fn new(tiers: Vec<(String, Arc<dyn ChunkStore>)>) -> Result<Self, TieredError> {
        if tiers.is_empty() {
            return Err(TieredError::NoTiers);
        }
        for (i, (name, _)) in tiers.iter().enumerate() {
            if tiers[..i].iter().any(|(other, _)| other == name) {
                return Err(TieredError::DuplicateTier { name: name.clone() });
            }
        }
        Ok(Self {
            tiers: tiers
                .into_iter()
                .map(|(name, store)| Tier {
                    name,
                    store,
                    counters: TierCounters::default(),
                })
                .collect(),
            flights: SingleFlight::new(),
            shared_fetches: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            quarantine: Mutex::new(HashMap::new()),
            quarantined: AtomicU64::new(0),
        })
    }

    /// The tiers' names, fastest first.
    pub fn tier_names(&self) -> Vec<&str> {
        self.tiers.iter().map(|t| t.name.as_str()).collect()
    }

    /// The object stored under `id`, from the fastest tier that has a
    /// verified copy; the tiers above it are filled. Concurrent fetches of
    /// the same id share one.
    pub fn fetch(&self, id: &ChunkId) -> Result<Fetched, TieredError> {
        let (result, flight) = self.flights.run(id, || self.fetch_once(id));
        if flight == Flight::Joined {
            self.shared_fetches.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// The object from the fastest tier alone, for a caller that forwards
    /// it to a reader who checks it by id (a cache node answering an
    /// instance): read with [`ChunkStore::get_to_forward`], so the tier
    /// may skip its own hash. A copy is counted as a hit; `None` if the
    /// tier has none, with nothing counted but a copy the tier found
    /// corrupt (counted and dropped). Meant for a caller that can afford to ask the fastest
    /// tier on its own thread but not the slower ones: on `None` it calls
    /// [`TieredStore::fetch`], which asks the fastest tier again and
    /// counts its miss or failure there.
    pub fn fetch_fastest_to_forward(&self, id: &ChunkId) -> Option<Fetched> {
        let tier = self.tiers.first()?;
        let c = &tier.counters;
        let started = Instant::now();
        let got = tier.store.get_to_forward(id);
        let elapsed = started.elapsed();
        match got {
            Ok(Some(object)) => {
                c.observe(elapsed);
                c.hits.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(object.len() as u64, Ordering::Relaxed);
                Some(Fetched { object, tier: 0 })
            }
            Err(StoreError::Corrupt { problem, .. }) => {
                self.drop_corrupt(0, id, problem);
                None
            }
            Ok(None) | Err(_) => None,
        }
    }

    fn fetch_once(&self, id: &ChunkId) -> Result<Fetched, TieredError> {
        let mut attempts = Vec::new();
        for (k, tier) in self.tiers.iter().enumerate() {
            let c = &tier.counters;
            if self.is_origin(k)
                && let Some(why) = self.quarantined_for(id)
            {
                attempts.push(TierAttempt {
                    tier: tier.name.clone(),
                    outcome: TierOutcome::Quarantined(format!("earlier in this process: {why}")),
                });
                continue;
            }
            let started = Instant::now();
            let got = tier.store.get(id);
            let took = started.elapsed();
            c.observe(took);
            // A tier that does not check its own gets is checked here, so a
            // bad copy is `Corrupt` whichever side found it.
            let got = match got {
                Ok(Some(object)) if !tier.store.checks_gets() => {
                    check_get(id, Bounded::Bytes(object), || tier.name.clone())
                }
                got => got,
            };
            let outcome = match got {
                Ok(Some(object)) => {
                    c.hits.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(object.len() as u64, Ordering::Relaxed);
                    tracing::debug!(
                        tier = %tier.name,
                        id = %id,
                        bytes = object.len(),
                        us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                        "hit"
                    );
                    self.fill_above(k, id, &object);
                    return Ok(Fetched { object, tier: k });
                }
                Ok(None) => {
                    c.misses.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(tier = %tier.name, id = %id, "miss");
                    TierOutcome::Miss
                }
                Err(StoreError::Corrupt { problem, .. }) => {
                    tracing::warn!(tier = %tier.name, id = %id, %problem, "corrupt copy");
                    self.drop_corrupt(k, id, problem)
                }
                Err(e) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    let message = e.to_string();
                    tracing::warn!(tier = %tier.name, id = %id, error = %message, "tier failed");
                    c.note_error(format!("get {id}: {message}"));
                    TierOutcome::Failed(message)
                }
            };
            attempts.push(TierAttempt {
                tier: tier.name.clone(),
                outcome,
            });
        }
        self.unavailable.fetch_add(1, Ordering::Relaxed);
        Err(TieredError::Unavailable { id: *id, attempts })
    }

    /// Whether tier `k` is the origin (the last tier; see the type docs).
    fn is_origin(&self, k: usize) -> bool {
        k + 1 == self.tiers.len()
    }

    /// Why `id` is quarantined, if it is.
    fn quarantined_for(&self, id: &ChunkId) -> Option<String> {
        self.quarantine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Counts a verification failure at tier `k`, and drops its copy, or,
    /// at the origin, quarantines it (see the module docs).
    fn drop_corrupt(&self, k: usize, id: &ChunkId, problem: String) -> TierOutcome {
        let tier = &self.tiers[k];
        let c = &tier.counters;
        c.verification_failures.fetch_add(1, Ordering::Relaxed);
        if self.is_origin(k) {
            c.note_error(format!(
                "chunk {id} corrupt in the origin, quarantined (not deleted): {problem}"
            ));
            let mut quarantine = self
                .quarantine
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if quarantine.len() < MAX_QUARANTINED
                && quarantine.insert(*id, problem.clone()).is_none()
            {
                self.quarantined.fetch_add(1, Ordering::Relaxed);
            }
            return TierOutcome::Quarantined(problem);
        }
        c.note_error(format!("chunk {id} corrupt: {problem}"));
        if let Err(e) = tier.store.remove(id) {
            c.errors.fetch_add(1, Ordering::Relaxed);
            c.note_error(format!("dropping corrupt chunk {id}: {e}"));
        }
        TierOutcome::Corrupt(problem)
    }

    /// Writes a verified object into every tier above `hit` (which need
    /// not hash it again: it was checked on its way out of `hit`).
    fn fill_above(&self, hit: usize, id: &ChunkId, object: &[u8]) {
        for tier in &self.tiers[..hit] {
            let c = &tier.counters;
            match tier.store.put_verified(Verified::trusted(id, object)) {
                Ok(_) => {
                    c.fills.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    c.fill_failures.fetch_add(1, Ordering::Relaxed);
                    c.note_error(format!("fill {id}: {e}"));
                }
            }
        }
    }

    /// The counters of every tier, now.
    pub fn metrics(&self) -> TieredSnapshot {
        TieredSnapshot {
            tiers: self
                .tiers
                .iter()
                .map(|t| t.counters.snapshot(&t.name))
                .collect(),
            shared_fetches: self.shared_fetches.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            quarantined: self.quarantined.load(Ordering::Relaxed),
        }
    }

    /// The counters in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        self.metrics().to_prometheus()
    }

    /// Threads currently waiting for another thread's fetch (a gauge).
    pub fn waiting(&self) -> usize {
        self.flights.waiting()
    }
}

impl ChunkStore for TieredStore {
    /// Every object returned was hashed, here or by a tier that checks
    /// its own gets.
    fn checks_gets(&self) -> bool {
        true
    }

    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        match self.fetch(id) {
            Ok(fetched) => Ok(Some(fetched.object)),
            Err(e) if e.is_clean_miss() => Ok(None),
            Err(e) => Err(StoreError::Backend {
                tier: "tiered store".into(),
                source: Box::new(e),
            }),
        }
    }

    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        // `new` refuses an empty list, so there is a last tier.
        match self.tiers.last() {
            Some(origin) => {
                let put = origin.store.put(id, object)?;
                // The origin holds a good copy now (`put` checks the bytes
                // against the id, and any copy already there).
                self.quarantine
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(id);
                Ok(put)
            }
            None => Err(StoreError::Backend {
                tier: "tiered store".into(),
                source: Box::new(TieredError::NoTiers),
            }),
        }
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        for tier in &self.tiers {
            if tier.store.contains(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let mut any = false;
        for tier in &self.tiers {
            any |= tier.store.remove(id)?;
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests;
