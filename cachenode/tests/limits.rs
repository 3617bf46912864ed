//! The cache node's load limits and error bodies, against the real server
//! on loopback: in-flight and origin-fetch bounds, the per-client rate,
//! and 502 bodies that keep the origin's details to the node.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cachenode::server::{self, NodeConfig, NodeLimits, RunningNode};
use cachetiers::testing::{GatedStore, wait_for};
use cachetiers::{ChunkStore, DirStore, PutOutcome, StoreError};
use common::{chunk, dir_store, get_chunk, http, within};
use manifest::ChunkId;

/// A store that counts the gets running in it at once (and the most
/// ever), in front of `inner`.
#[derive(Debug)]
struct Concurrency<S> {
    inner: S,
    now: AtomicU64,
    most: AtomicU64,
}

impl<S> Concurrency<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            now: AtomicU64::new(0),
            most: AtomicU64::new(0),
        }
    }
    fn inner(&self) -> &S {
        &self.inner
    }
    fn most(&self) -> u64 {
        self.most.load(Ordering::SeqCst)
    }
}

impl<S: ChunkStore> ChunkStore for Concurrency<S> {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let got = self.inner.get(id);
        self.now.fetch_sub(1, Ordering::SeqCst);
        got
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
}

/// An origin whose every answer is a failure carrying an origin URL with
/// credentials and an internal path, the way real errors can.
#[derive(Debug)]
struct LeakyOrigin;

const ORIGIN_URL: &str = "http://admin:PLANTED-SECRET-7f3a@origin.internal:9000/bucket";
const INTERNAL_PATH: &str = "/var/lib/imagefs-origin/chunks";

impl LeakyOrigin {
    fn error() -> StoreError {
        StoreError::Io {
            action: "read",
            path: PathBuf::from(INTERNAL_PATH),
            source: std::io::Error::other(format!("GET {ORIGIN_URL}: connection refused")),
        }
    }
}

impl ChunkStore for LeakyOrigin {
    fn get(&self, _: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        Err(Self::error())
    }
    fn put(&self, _: &ChunkId, _: &[u8]) -> Result<PutOutcome, StoreError> {
        Err(Self::error())
    }
    fn contains(&self, _: &ChunkId) -> Result<bool, StoreError> {
        Err(Self::error())
    }
    fn remove(&self, _: &ChunkId) -> Result<bool, StoreError> {
        Err(Self::error())
    }
}

fn node_with(
    limits: NodeLimits,
    origin: Arc<dyn ChunkStore>,
) -> (tempfile::TempDir, Arc<DirStore>, RunningNode) {
    let (dir, local) = dir_store();
    let config = NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits,
        ..NodeConfig::default()
    };
    let running = server::start(&config, local.clone(), origin).expect("start node");
    (dir, local, running)
}

#[test]
fn concurrent_gets_against_a_slow_origin_stay_within_the_limits() {
    const REQUESTS: u64 = 30;
    const IN_FLIGHT: u64 = 8;
    const ORIGIN: u64 = 3;
    let (_o, origin_dir) = dir_store();
    let gated = GatedStore::new(origin_dir);
    // A slow origin: nothing comes back until the test says so.
    gated.close();
    let origin = Arc::new(Concurrency::new(gated));
    let limits = NodeLimits {
        max_in_flight: IN_FLIGHT as usize,
        max_origin_fetches: ORIGIN as usize,
        // One client here: only the two bounds are under test.
        client_rate: 0.0,
        ..NodeLimits::default()
    };
    let (_l, _local, node) = node_with(limits, origin.clone());
    let addr = node.addr();

    // Different ids: single-flight cannot merge them.
    let readers: Vec<_> = (0..REQUESTS)
        .map(|n| {
            let id = chunk(1000 + n as u32).id;
            std::thread::spawn(move || get_chunk(addr, &id))
        })
        .collect();
    // Every request is either refused or has reached the origin, or is
    // admitted and waiting for an origin turn; wait for the refusals and
    // the origin's line-up to account for all but the waiting ones.
    let shown = Arc::clone(node.node());
    let probe = origin.clone();
    wait_for("the requests to be refused or reach the origin", || {
        shown.http_count("chunk", 503) + probe.inner().gets() >= REQUESTS - (IN_FLIGHT - ORIGIN)
    });
    assert!(
        origin.inner().gets() <= ORIGIN,
        "{} gets reached the slow origin at once (limit {ORIGIN})",
        origin.inner().gets()
    );
    origin.inner().open();
    let mut by_status = std::collections::BTreeMap::new();
    for reader in readers {
        let answer = within("a reader", move || reader.join().unwrap());
        if answer.status == 503 {
            assert!(
                answer.headers.to_ascii_lowercase().contains("retry-after:"),
                "{}",
                answer.headers
            );
        }
        *by_status.entry(answer.status).or_insert(0u64) += 1;
    }
    assert!(
        origin.most() <= ORIGIN,
        "{} origin fetches ran at once (limit {ORIGIN})",
        origin.most()
    );
    assert_eq!(
        by_status,
        [(404, IN_FLIGHT), (503, REQUESTS - IN_FLIGHT)].into(),
        "answers by status"
    );
    // Once the load is gone, the node serves again.
    let c = chunk(2000);
    origin.put(&c.id, &c.object).unwrap();
    let answer = get_chunk(addr, &c.id);
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[test]
fn a_client_over_its_rate_gets_429() {
    let (_o, origin) = dir_store();
    let limits = NodeLimits {
        // One token per thousand seconds: the burst is all there is
        // during the test, however slow the machine.
        client_rate: 0.001,
        client_burst: 3.0,
        ..NodeLimits::default()
    };
    let (_l, _local, node) = node_with(limits, origin);
    let id = chunk(3000).id;
    for n in 0..3 {
        let answer = get_chunk(node.addr(), &id);
        assert_eq!(answer.status, 404, "request {n}: {}", answer.text());
    }
    for path in [
        format!("/v1/chunks/{id}"),
        format!("/v1/stripes/{id}"),
        "/metrics".to_string(),
    ] {
        let answer = http(node.addr(), "GET", &path);
        assert_eq!(answer.status, 429, "{path}: {}", answer.text());
        let headers = answer.headers.to_ascii_lowercase();
        assert!(headers.contains("retry-after:"), "{headers}");
    }
    assert_eq!(node.node().http_count("chunk", 429), 1);
    // The erasure mode's stripe routes are under the same rate.
    assert_eq!(node.node().http_count("stripe", 429), 1);
}

#[test]
fn stripe_requests_count_against_max_in_flight() {
    let (_o, origin) = dir_store();
    let limits = NodeLimits {
        // One request at a time, held below by a chunk request waiting
        // on a stalled origin.
        max_in_flight: 1,
        client_rate: 0.0,
        ..NodeLimits::default()
    };
    let gated = GatedStore::new(origin);
    gated.close();
    let gated = Arc::new(gated);
    let (_l, _local, node) = node_with(limits, gated.clone());
    let addr = node.addr();
    let id = chunk(3100).id;
    // The one in-flight permit is held while the origin is closed.
    let held = std::thread::spawn(move || get_chunk(addr, &id));
    let shown = Arc::clone(node.node());
    wait_for("the chunk request to reach the origin", || {
        gated.gets() >= 1
    });
    let answer = http(addr, "GET", &format!("/v1/stripes/{id}"));
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(shown.http_count("stripe", 503), 1);
    gated.open();
    let _ = within("the held request", move || held.join().unwrap());
    assert_eq!(http(addr, "GET", &format!("/v1/stripes/{id}")).status, 404);
}

#[test]
fn a_502_body_keeps_the_origins_details_to_the_node() {
    let (_l, _local, node) = node_with(NodeLimits::default(), Arc::new(LeakyOrigin));
    let id = chunk(4000).id;
    for method in ["GET", "HEAD"] {
        let answer = http(node.addr(), method, &format!("/v1/chunks/{id}"));
        assert_eq!(answer.status, 502, "{method}: {}", answer.text());
        let text = answer.text();
        for secret in [
            "PLANTED-SECRET-7f3a",
            "origin.internal",
            "admin",
            INTERNAL_PATH,
        ] {
            assert!(!text.contains(secret), "{method}: `{secret}` in: {text}");
        }
        if method == "GET" {
            // Still useful: it names the chunk and what each tier said.
            assert!(text.contains(&id.to_hex()), "{text}");
            assert!(text.contains("origin: failed"), "{text}");
        }
    }
}

#[test]
fn a_bad_id_is_echoed_only_in_part() {
    let (_o, origin) = dir_store();
    let (_l, _local, node) = node_with(NodeLimits::default(), origin);
    let long = "z".repeat(4000);
    let answer = http(node.addr(), "GET", &format!("/v1/chunks/{long}"));
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.body.len() < 300, "{} bytes", answer.body.len());
}

#[test]
fn unusable_limits_do_not_start() {
    let (_o, origin) = dir_store();
    let (_d, local) = dir_store();
    let config = NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits: NodeLimits {
            max_in_flight: 0,
            ..NodeLimits::default()
        },
        ..NodeConfig::default()
    };
    let e = server::start(&config, local, origin)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_in_flight"), "{e}");
}

#[test]
fn limits_read_from_toml() {
    let config: NodeConfig = toml::from_str(
        "listen = \"127.0.0.1:0\"\n[limits]\nmax_in_flight = 7\nclient_rate = 0.0\n",
    )
    .unwrap();
    assert_eq!(config.limits.max_in_flight, 7);
    assert_eq!(config.limits.client_rate, 0.0);
    assert_eq!(
        config.limits.max_origin_fetches,
        NodeLimits::default().max_origin_fetches
    );
}
