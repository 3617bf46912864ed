//! Harness for the `cachenode_http` fuzz target (and its regression
//! tests): the node's router driven in-process with requests built from
//! fuzzer bytes, over stores in memory. Not part of the API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use cachetiers::{ChunkStore, PutOutcome, StoreError};
use manifest::ChunkId;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use super::{CacheNode, NodeLimits};

/// The most objects a [`MemStore`] keeps (fills past it are dropped).
const MAX_OBJECTS: usize = 64;
/// The largest answer the node may give: one object and change.
pub const MAX_RESPONSE: usize = cachetiers::MAX_OBJECT_LEN + 4096;
/// A hang guard per request, not a timing check.
const REQUEST_BOUND: Duration = Duration::from_secs(5);

/// A store in memory with a bounded number of objects; what it is given
/// is kept as given (the node checks what it fills).
#[derive(Debug, Default)]
pub struct MemStore(Mutex<HashMap<ChunkId, Vec<u8>>>);

impl MemStore {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, Vec<u8>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ChunkStore for MemStore {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(id).cloned())
    }
    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        let mut map = self.map();
        if map.contains_key(id) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        if map.len() < MAX_OBJECTS {
            map.insert(*id, object.to_vec());
        }
        Ok(PutOutcome::Stored)
    }
    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.map().contains_key(id))
    }
    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.map().remove(id).is_some())
    }
}

/// A node over a [`MemStore`] and an origin holding one good object
/// (`ids[0]`) and one corrupt copy (`ids[1]`), on a runtime of its own.
pub struct Harness {
    node: Arc<CacheNode>,
    ids: [ChunkId; 2],
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("ids", &self.ids).finish()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A fresh node.
    pub fn new() -> Self {
        let good = b"a chunk the origin has".to_vec();
        let good_id = ChunkId(Sha256::digest(&good).into());
        let bad_id = ChunkId(Sha256::digest(b"what the corrupt copy should be").into());
        let origin = MemStore::default();
        origin.map().insert(good_id, good);
        origin.map().insert(bad_id, b"not those bytes".to_vec());
        let limits = NodeLimits {
            max_in_flight: 4,
            max_origin_fetches: 2,
            ..NodeLimits::default()
        };
        let node = CacheNode::with_limits(Arc::new(MemStore::default()), Arc::new(origin), limits)
            .expect("a node over memory stores");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Self {
            node: Arc::new(node),
            ids: [good_id, bad_id],
            runtime,
        }
    }

    /// Builds one request from `data` and sends it: the first byte picks
    /// the method, the path runs to the first newline (`@0` and `@1` in
    /// it stand for the origin's two ids), `Name: value` lines up to an
    /// empty one are headers, the rest is the body. Returns the status
    /// and the body's length, or `None` when the bytes make no valid
    /// request. Panics when the node panics, hangs, answers 500 or
    /// answers more than [`MAX_RESPONSE`] bytes.
    pub fn run(&self, data: &[u8]) -> Option<(StatusCode, usize)> {
        let (&pick, rest) = data.split_first()?;
        let method = match pick % 8 {
            0..=2 => Method::GET,
            3 => Method::HEAD,
            4 => Method::POST,
            5 => Method::PUT,
            6 => Method::DELETE,
            _ => Method::OPTIONS,
        };
        let mut parts = rest.splitn(2, |&b| b == b'\n');
        let raw_path = String::from_utf8_lossy(parts.next().unwrap_or_default())
            .replace("@0", &self.ids[0].to_hex())
            .replace("@1", &self.ids[1].to_hex());
        let mut builder = Request::builder().method(method).uri(raw_path);
        let mut rest = parts.next().unwrap_or_default();
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..end];
            rest = &rest[end + 1..];
            if line.is_empty() {
                break;
            }
            let colon = line.iter().position(|&b| b == b':')?;
            builder = builder.header(&line[..colon], line[colon + 1..].trim_ascii());
        }
        let mut request = builder.body(Body::from(rest.to_vec())).ok()?;
        // As the server adds it, so the per-client path runs too.
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, pick], 40000))));
        let router = self.node.router();
        let answered = self.runtime.block_on(async {
            tokio::time::timeout(REQUEST_BOUND, async {
                let response = router.oneshot(request).await.expect("infallible");
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), MAX_RESPONSE).await;
                (status, body)
            })
            .await
        });
        let (status, body) = answered.expect("the node answered within the bound");
        let body = body.expect("the answer is within the size bound");
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "500: {}",
            String::from_utf8_lossy(&body)
        );
        Some((status, body.len()))
    }

    /// The ids the origin holds: a good one and a corrupt one.
    pub fn ids(&self) -> [ChunkId; 2] {
        self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_reaches_every_answer() {
        let h = Harness::new();
        let ask = |s: &str| h.run(s.as_bytes()).map(|(status, _)| status.as_u16());
        assert_eq!(ask("\0/v1/chunks/@0"), Some(200));
        assert_eq!(ask("\0/v1/chunks/@0"), Some(200), "a hit the second time");
        assert_eq!(ask("\0/v1/chunks/@1"), Some(502));
        assert_eq!(ask("\x03/v1/chunks/@0"), Some(200));
        assert_eq!(ask(&format!("\0/v1/chunks/{}", "0".repeat(64))), Some(404));
        assert_eq!(ask("\0/v1/chunks/nothex"), Some(400));
        assert_eq!(ask("\0/healthz"), Some(200));
        assert_eq!(ask("\0/metrics\nAccept: text/plain\n\n"), Some(200));
        assert_eq!(ask("\x04/v1/chunks/@0\n\nbody"), Some(405));
        assert_eq!(ask("\0/nowhere"), Some(404));
        assert_eq!(ask("\0not a uri\n"), None);
    }
}
