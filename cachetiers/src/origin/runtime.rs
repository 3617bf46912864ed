//! The tokio runtime the blocking [`ChunkStore`](crate::ChunkStore) methods
//! of an object-store origin run their futures on.
//!
//! One runtime for the whole process, created on first use and never
//! dropped: dropping a runtime from async code panics, and an origin may
//! well be dropped there (the last `Arc` released in a server task).
//!
//! Callers do not `block_on` it. The future is spawned onto the runtime
//! and the caller waits on a plain channel, which works from any thread:
//! a plain one, `spawn_blocking`, or (wastefully, but without a panic) a
//! worker of another runtime.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::runtime::{Builder, Runtime};

/// Worker threads: requests are I/O bound and few at a time per caller.
const WORKERS: usize = 2;

/// Why a future could not be run to completion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The runtime could not be created.
    #[error("cannot start the object store runtime: {0}")]
    Start(String),
    /// The task ended without a result (it panicked).
    #[error("the object store request ended without a result (its task panicked)")]
    Lost,
}

fn runtime() -> Result<&'static Runtime, RuntimeError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(WORKERS)
                .thread_name("imagefs-origin")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| RuntimeError::Start(e.clone()))
}

/// Runs `fut` on the shared runtime and waits for its output.
pub(crate) fn run<T, F>(fut: F) -> Result<T, RuntimeError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        // The receiver only goes away if the caller is gone; nothing to do.
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| RuntimeError::Lost)
}
