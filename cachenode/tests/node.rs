//! The cache-node server over real directory stores and real loopback
//! HTTP.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cachenode::server::{self, LOCAL_TIER, NodeConfig, ORIGIN_TIER, RunningNode};
use cachenode::{AzConfig, AzTier};
use cachetiers::testing::GatedStore;
use cachetiers::{ChunkStore, DirStore};
use common::{chunk, dir_store, get_chunk, http, within};

fn loopback() -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    }
}

/// A node over a fresh local store and `origin`.
fn node_over(origin: Arc<dyn ChunkStore>) -> (tempfile::TempDir, Arc<DirStore>, RunningNode) {
    let (dir, local) = dir_store();
    let running = server::start(&loopback(), local.clone(), origin).expect("start node");
    (dir, local, running)
}

#[test]
fn miss_fills_from_origin_then_hits_locally() {
    let (_o, origin_dir) = dir_store();
    let c = chunk(1);
    origin_dir.put(&c.id, &c.object).unwrap();
    let origin = Arc::new(GatedStore::new(origin_dir));
    let (_l, local, node) = node_over(origin.clone());

    let first = get_chunk(node.addr(), &c.id);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.body, c.object);
    assert!(
        first
            .headers
            .to_ascii_lowercase()
            .contains("content-type: application/octet-stream"),
        "{}",
        first.headers
    );
    assert_eq!(origin.gets(), 1);
    assert!(
        local.contains(&c.id).unwrap(),
        "the miss was not kept locally"
    );

    let second = get_chunk(node.addr(), &c.id);
    assert_eq!(second.status, 200);
    assert_eq!(second.body, c.object);
    assert_eq!(origin.gets(), 1, "the second get went to the origin");
    let m = node.node().store().metrics();
    assert_eq!(m.tiers[0].tier, LOCAL_TIER);
    assert_eq!(
        (m.tiers[0].hits, m.tiers[0].misses, m.tiers[0].fills),
        (1, 1, 1)
    );
    assert_eq!(m.tiers[1].tier, ORIGIN_TIER);
    assert_eq!(m.tiers[1].hits, 1);
    assert_eq!(node.node().http_count("chunk", 200), 2);
}

#[test]
fn concurrent_cold_gets_make_one_origin_fetch() {
    let (_o, origin_dir) = dir_store();
    let c = chunk(2);
    origin_dir.put(&c.id, &c.object).unwrap();
    let origin = Arc::new(GatedStore::new(origin_dir));
    origin.close();
    let (_l, _local, node) = node_over(origin.clone());
    let addr = node.addr();

    let readers: Vec<_> = (0..8)
        .map(|_| {
            let id = c.id;
            std::thread::spawn(move || get_chunk(addr, &id))
        })
        .collect();
    // Hold the origin until one request is fetching and the other seven
    // wait for it: then they all were concurrent.
    let tiers = node.node().clone();
    let origin_probe = origin.clone();
    within("eight requests gathering", move || {
        while !(origin_probe.gets() == 1 && tiers.store().waiting() == 7) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    origin.open();
    for reader in readers {
        let answer = reader.join().unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.body, c.object);
    }
    assert_eq!(origin.gets(), 1, "more than one origin fetch");
    let m = node.node().store().metrics();
    assert_eq!(m.shared_fetches, 7);
    assert_eq!(m.tiers[1].hits, 1);
}

#[test]
fn bad_ids_are_400_and_unknown_chunks_404() {
    let (_o, origin) = dir_store();
    let (_l, _local, node) = node_over(origin);
    for bad in [
        "xyz",
        &"a".repeat(63),
        &"a".repeat(65),
        &format!("{}g", "0".repeat(63)),
    ] {
        let answer = http(node.addr(), "GET", &format!("/v1/chunks/{bad}"));
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text());
        assert!(answer.text().contains(bad), "{}", answer.text());
    }
    let unknown = chunk(3);
    let answer = get_chunk(node.addr(), &unknown.id);
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert!(answer.text().contains(&unknown.id.to_hex()));
    assert_eq!(node.node().http_count("chunk", 400), 4);
    assert_eq!(node.node().http_count("chunk", 404), 1);
}

#[test]
fn head_tells_whether_the_origin_has_it() {
    let (_o, origin) = dir_store();
    let c = chunk(4);
    origin.put(&c.id, &c.object).unwrap();
    let (_l, local, node) = node_over(origin);
    let there = http(node.addr(), "HEAD", &format!("/v1/chunks/{}", c.id));
    assert_eq!(there.status, 200);
    assert!(there.body.is_empty());
    assert!(!local.contains(&c.id).unwrap(), "a HEAD fetched the chunk");
    let missing = http(node.addr(), "HEAD", &format!("/v1/chunks/{}", chunk(5).id));
    assert_eq!(missing.status, 404);
}

#[test]
fn corrupt_origin_copy_is_502_naming_the_chunk() {
    let (_o, origin) = dir_store();
    let c = chunk(6);
    origin.put(&c.id, &c.object).unwrap();
    // Flip one byte of the stored object behind the store's back.
    let path = origin.chunk_path(&c.id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let (_l, local, node) = node_over(origin.clone());
    let answer = get_chunk(node.addr(), &c.id);
    assert_eq!(answer.status, 502, "{}", answer.text());
    let text = answer.text();
    assert!(text.contains(&c.id.to_hex()), "{text}");
    assert!(
        text.contains(ORIGIN_TIER) && text.contains(LOCAL_TIER),
        "{text}"
    );
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    assert!(!local.contains(&c.id).unwrap(), "a corrupt copy was kept");
    assert_eq!(
        node.node().store().metrics().tiers[1].verification_failures,
        1
    );
}

#[test]
fn failing_origin_is_502() {
    // An origin that is really unreachable: the AZ tier over a closed port.
    let mut config = AzConfig::with_nodes([common::dead_url()]);
    config.timeout_ms = 10_000;
    let origin = Arc::new(AzTier::new(config).unwrap());
    let (_l, _local, node) = node_over(origin);
    let id = chunk(7).id;
    let answer = within("get through a dead origin", move || {
        let answer = get_chunk(node.addr(), &id);
        drop(node);
        answer
    });
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(answer.text().contains(&id.to_hex()), "{}", answer.text());
    assert!(
        answer.text().contains("origin: failed"),
        "{}",
        answer.text()
    );
}

#[test]
fn metrics_and_healthz() {
    let (_o, origin) = dir_store();
    let c = chunk(8);
    origin.put(&c.id, &c.object).unwrap();
    let (_l, _local, node) = node_over(origin);
    assert_eq!(get_chunk(node.addr(), &c.id).status, 200);
    assert_eq!(get_chunk(node.addr(), &chunk(9).id).status, 404);

    let health = http(node.addr(), "GET", "/healthz");
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));

    let metrics = http(node.addr(), "GET", "/metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for line in [
        "imagefs_tier_hits_total{tier=\"origin\"} 1",
        "imagefs_tier_misses_total{tier=\"node-local\"} 2",
        "imagefs_tier_misses_total{tier=\"origin\"} 1",
        "imagefs_tier_fills_total{tier=\"node-local\"} 1",
        "imagefs_node_http_requests_total{method=\"GET\",route=\"chunk\",code=\"200\"} 1",
        "imagefs_node_http_requests_total{method=\"GET\",route=\"chunk\",code=\"404\"} 1",
        "imagefs_node_http_requests_total{method=\"GET\",route=\"healthz\",code=\"200\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
}

#[test]
fn restart_on_the_same_local_store_keeps_its_data() {
    let (_o, origin) = dir_store();
    let c = chunk(10);
    origin.put(&c.id, &c.object).unwrap();
    let (_l, local, node) = node_over(origin);
    assert_eq!(get_chunk(node.addr(), &c.id).status, 200);
    node.stop().expect("clean stop");
    let root = local.root().to_path_buf();
    drop(local);

    // Same local directory, an origin that has nothing: only the kept copy
    // can answer.
    let (_o2, empty_origin) = dir_store();
    let counting = Arc::new(GatedStore::new(empty_origin));
    let reopened = Arc::new(DirStore::open(&root).unwrap());
    let node = server::start(&loopback(), reopened, counting.clone()).unwrap();
    let answer = get_chunk(node.addr(), &c.id);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.body, c.object);
    assert_eq!(counting.gets(), 0);
}

#[test]
fn run_until_stops_when_told() {
    let (_o, origin) = dir_store();
    let (_l, _local, node) = node_over(origin);
    let addr = node.addr();
    let url = node.url();
    assert_eq!(url, format!("http://{addr}"));
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let serving = std::thread::spawn(move || {
        node.run_until(async move {
            while !flag.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    });
    assert_eq!(http(addr, "GET", "/healthz").status, 200);
    stop.store(true, Ordering::SeqCst);
    within("node stopping", move || serving.join().unwrap()).expect("clean stop");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after the stop"
    );
}
