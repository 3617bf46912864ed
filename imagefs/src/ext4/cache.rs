//! A bounded map shared by the threads that read through one
//! [`Ext4Meta`](super::Ext4Meta): split into shards, each behind its own
//! lock, so lookups of different inodes rarely wait for each other. A
//! shard that fills starts over (simple, and bounded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Shards per cache: a few times the threads that serve a mount.
const SHARDS: usize = 16;

struct Shard<V: ?Sized> {
    map: HashMap<u32, Arc<V>>,
    weight: usize,
}

/// Values by inode (or group) number, at most `max_len` of them and
/// `max_weight` in total weight.
pub(crate) struct Cache<V: ?Sized> {
    shards: Vec<Mutex<Shard<V>>>,
    max_len: usize,
    max_weight: usize,
}

impl<V: ?Sized> Cache<V> {
    /// A cache holding at most `max_len` values of `max_weight` total
    /// weight.
    pub(crate) fn new(max_len: usize, max_weight: usize) -> Cache<V> {
        Cache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        weight: 0,
                    })
                })
                .collect(),
            max_len: max_len.div_ceil(SHARDS),
            max_weight: max_weight.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: u32) -> MutexGuard<'_, Shard<V>> {
        // A poisoned shard holds only complete entries: a panic elsewhere
        // cannot leave one half-inserted.
        let i = key as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value cached for `key`.
    pub(crate) fn get(&self, key: u32) -> Option<Arc<V>> {
        self.shard(key).map.get(&key).cloned()
    }

    /// Caches `value` for `key`, counting `weight` against the bound.
    pub(crate) fn insert(&self, key: u32, value: Arc<V>, weight: usize) {
        let mut shard = self.shard(key);
        if shard.map.len() >= self.max_len || shard.weight + weight > self.max_weight {
            shard.map.clear();
            shard.weight = 0;
        }
        // When another thread cached the same key first, its weight stays
        // counted until the shard starts over: the bound only errs small.
        shard.weight += weight;
        shard.map.insert(key, value);
    }
}
