//! [`LazyError`]: what can go wrong reading, writing or prefetching a
//! [`LazyImage`](super::LazyImage).

use std::sync::Arc;

use cachetiers::StoreError;
use manifest::{ChunkId, ChunkIndex, ConvergentError};

use super::DedicatedError;

/// Errors from a [`LazyImage`](crate::LazyImage). Cloneable: one failed fetch is reported to
/// every reader that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LazyError {
    /// The read reaches past the end of the device.
    #[error("read of {len} bytes at offset {offset} is outside the {size}-byte device")]
    OutOfRange {
        /// Where the read starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The device size.
        size: u64,
    },
    /// The manifest's chunk table does not match its geometry.
    #[error("manifest is inconsistent: {problem}")]
    BadManifest {
        /// What is wrong.
        problem: String,
    },
    /// Every tier of the store missed.
    #[error("{index} ({id}) is not in the store (every tier missed)")]
    Missing {
        /// Its position.
        index: ChunkIndex,
        /// Its id.
        id: ChunkId,
    },
    /// The store failed (for a tiered store the error says what each tier
    /// said).
    #[error("fetching {index} ({id}): {source}")]
    Store {
        /// Its position.
        index: ChunkIndex,
        /// Its id.
        id: ChunkId,
        /// The store's error.
        #[source]
        source: Arc<StoreError>,
    },
    /// The object failed its id check or does not decrypt with the
    /// manifest's key.
    #[error("decrypting {index} ({id}): {source}")]
    Decrypt {
        /// Its position.
        index: ChunkIndex,
        /// Its id.
        id: ChunkId,
        /// The cause.
        #[source]
        source: ConvergentError,
    },
    /// The plaintext has the wrong length for its place in the device.
    #[error("{index} ({id}) decrypts to {got} bytes, expected {expected}")]
    WrongLength {
        /// Its position.
        index: ChunkIndex,
        /// Its id.
        id: ChunkId,
        /// Bytes decrypted.
        got: u64,
        /// Bytes the chunk covers.
        expected: u64,
    },
    /// The dedicated tier failed.
    #[error("{index} ({id}): {source}")]
    Dedicated {
        /// Its position.
        index: ChunkIndex,
        /// Its id, when it has one (holes do not).
        id: String,
        /// The cause.
        #[source]
        source: DedicatedError,
    },
    /// Opening the dedicated tier failed.
    #[error("opening the dedicated tier: {0}")]
    OpenDedicated(#[source] DedicatedError),
    /// A write to a view without a dedicated tier (writes land only there).
    #[error("write of {len} bytes at offset {offset}: the image is read-only (no dedicated tier)")]
    ReadOnly {
        /// Where the write starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// Recording that the dedicated tier holds guest writes failed (the
    /// write was not made).
    #[error("recording the first guest write in the dedicated tier: {0}")]
    MarkWritten(#[source] DedicatedError),
    /// Syncing the dedicated tier (a flush) failed.
    #[error("flushing the dedicated tier: {0}")]
    Flush(#[source] DedicatedError),
    /// Syncing the dedicated tier's presence bits failed.
    #[error("syncing the dedicated tier's presence bits: {0}")]
    Sync(#[source] DedicatedError),
    /// A prefetch order names a chunk the manifest does not have.
    #[error("cannot prefetch {index}: the manifest has {chunks} chunks")]
    PrefetchOutside {
        /// The index asked for.
        index: ChunkIndex,
        /// How many chunks the manifest has.
        chunks: u64,
    },
    /// A prefetch was already started on this image (one per image: a
    /// start has one profile).
    #[error("a prefetch was already started on this image")]
    PrefetchStarted,
    /// No prefetch thread could be started.
    #[error("starting prefetch threads: {0}")]
    PrefetchThreads(#[source] Arc<std::io::Error>),
}
