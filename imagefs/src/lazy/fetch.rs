//! The bottom of a [`LazyImage`](super::LazyImage)'s read path: one
//! chunk's plaintext, from the host-wide [`SharedPlain`] when the image
//! has one, else fetched from the store, verified, decrypted and checked
//! for length. Nothing here caches per image (the callers in `mod.rs`
//! keep the result in the dedicated tier and the memory cache).

use std::sync::Arc;

use manifest::{
    ByteOffset, ChunkEntry, ChunkId, ChunkIndex, ChunkKey, decrypt_checked_chunk_owned,
    decrypt_chunk_owned,
};

use super::shared_plain::{Served, SharedPlain};
use super::{Inner, LazyError, Origin};

impl Inner {
    /// Chunk `index`'s id, key, device offset and length, or why the
    /// manifest has no stored chunk there.
    pub(super) fn stored_chunk(
        &self,
        index: ChunkIndex,
    ) -> Result<(&ChunkId, &ChunkKey, ByteOffset, u64), LazyError> {
        let Some(ChunkEntry::Present { id, key }) = self.manifest.chunk(index) else {
            return Err(LazyError::BadManifest {
                problem: format!("{index} is not a stored chunk"),
            });
        };
        let (start, len) =
            self.manifest
                .chunk_span(index)
                .ok_or_else(|| LazyError::BadManifest {
                    problem: format!("{index} is outside the device"),
                })?;
        Ok((id, key, start, len))
    }

    /// The pristine plaintext of stored chunk `index`: from the shared
    /// plaintext cache (or another VM's fetch through it) when there is
    /// one, else [`Self::fetch_from_store`].
    pub(super) fn fetch_plain(
        &self,
        index: ChunkIndex,
        origin: Origin,
    ) -> Result<Arc<Vec<u8>>, LazyError> {
        let Some(shared) = &self.shared_plain else {
            return self.fetch_from_store(index, origin);
        };
        self.fetch_shared(shared, index, origin)
    }

    fn fetch_shared(
        &self,
        shared: &SharedPlain,
        index: ChunkIndex,
        origin: Origin,
    ) -> Result<Arc<Vec<u8>>, LazyError> {
        let (id, key, _, expected) = self.stored_chunk(index)?;
        let (result, served) =
            shared.get_or_fetch(id, key, || self.fetch_from_store(index, origin));
        let plain = result?;
        // Another image may use the same chunk with another span only if
        // the manifests disagree; never hand out a wrong length.
        check_length(index, id, &plain, expected)?;
        match served {
            Served::Hit => self.counters.shared_plain_hits.inc(),
            Served::Joined => self.counters.shared_plain_joins.inc(),
            Served::Fetched => {}
        }
        Ok(plain)
    }

    /// Fetches chunk `index` from the store, verifies, decrypts and checks
    /// its length (no caching).
    fn fetch_from_store(
        &self,
        index: ChunkIndex,
        origin: Origin,
    ) -> Result<Arc<Vec<u8>>, LazyError> {
        let (id, key, _, expected) = self.stored_chunk(index)?;
        // One span per fetch; the tiers' events (which tier answered,
        // misses, errors) nest in it. The chunk id is public (it names
        // ciphertext); the key never appears.
        let _span = tracing::debug_span!(
            "fetch",
            image = %self.label,
            chunk = index.0,
            cause = ?origin
        )
        .entered();
        self.counters.store_fetches.inc();
        if origin == Origin::Readahead {
            self.counters.readahead_fetches.inc();
        }
        let began = self.fetch_log.begin();
        let object = self
            .store
            .get(id)
            .map_err(|source| LazyError::Store {
                index,
                id: *id,
                source: Arc::new(source),
            })?
            .ok_or(LazyError::Missing { index, id: *id })?;
        self.counters.store_bytes.add(object.len() as u64);
        self.fetch_log
            .done(began, index.0, origin, object.len() as u64);
        // Hashed once: by the store when it checks its gets, else here.
        let plain = if self.store.checks_gets() {
            decrypt_checked_chunk_owned(id, key, object)
        } else {
            decrypt_chunk_owned(id, key, object)
        }
        .map_err(|source| LazyError::Decrypt {
            index,
            id: *id,
            source,
        })?;
        check_length(index, id, &plain, expected)?;
        tracing::debug!(bytes = plain.len(), "fetched");
        Ok(Arc::new(plain))
    }
}

/// A plaintext of chunk `index` must be `expected` bytes long.
fn check_length(
    index: ChunkIndex,
    id: &ChunkId,
    plain: &[u8],
    expected: u64,
) -> Result<(), LazyError> {
    if plain.len() as u64 == expected {
        return Ok(());
    }
    Err(LazyError::WrongLength {
        index,
        id: *id,
        got: plain.len() as u64,
        expected,
    })
}
