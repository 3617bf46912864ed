//! The AZ client tier against real cache nodes and stub nodes on
//! loopback.

mod common;

use std::sync::Arc;

use cachenode::server::{self, NodeConfig, RunningNode};
use cachenode::{AzConfig, AzTier};
use cachetiers::{ChunkStore, DirStore, PutOutcome, StoreError, TieredStore};
use common::{chunk, dead_url, dir_store, lying_node, stalled_node, within};
use manifest::ChunkId;
use manifest::convergent::EncryptedChunk;

/// Two real nodes over their own local stores and one shared origin.
struct Az {
    _dirs: Vec<tempfile::TempDir>,
    origin: Arc<DirStore>,
    nodes: Vec<Option<RunningNode>>,
}

impl Az {
    fn new(count: usize) -> Self {
        let (origin_dir, origin) = dir_store();
        let mut dirs = vec![origin_dir];
        let mut nodes = Vec::new();
        for _ in 0..count {
            let (dir, local) = dir_store();
            dirs.push(dir);
            let config = NodeConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..NodeConfig::default()
            };
            nodes.push(Some(server::start(&config, local, origin.clone()).unwrap()));
        }
        Self {
            _dirs: dirs,
            origin,
            nodes,
        }
    }

    fn url(&self, k: usize) -> String {
        self.nodes[k].as_ref().unwrap().url()
    }

    /// Origin gets the node at `k` made.
    fn origin_gets(&self, k: usize) -> u64 {
        let m = self.nodes[k].as_ref().unwrap().node().store().metrics();
        m.tiers[1].hits + m.tiers[1].misses
    }

    fn add(&self, c: &EncryptedChunk) {
        self.origin.put(&c.id, &c.object).unwrap();
    }
}

/// No hedge unless a test wants one, and a timeout far above any
/// loopback answer (the watchdog is what catches hangs).
fn config(nodes: Vec<String>) -> AzConfig {
    AzConfig {
        nodes,
        timeout_ms: 30_000,
        hedge_after_ms: 30_000,
        connect_timeout_ms: 5_000,
        ..AzConfig::default()
    }
}

/// A chunk whose owner (first choice) among `nodes` is `nodes[first]`.
fn chunk_owned_by(nodes: &[String], first: usize) -> EncryptedChunk {
    (0..)
        .map(chunk)
        .find(|c| cachenode::client::hrw::preference_order(&c.id, nodes)[0] == first)
        .unwrap()
}

fn index_of(tier: &AzTier, url: &str) -> usize {
    tier.nodes().iter().position(|n| n == url).unwrap()
}

#[test]
fn gets_go_to_the_owner_in_hrw_order() {
    let az = Az::new(2);
    let urls = vec![az.url(0), az.url(1)];
    let tier = Arc::new(AzTier::new(config(urls.clone())).unwrap());
    let chunks: Vec<_> = (100..120).map(chunk).collect();
    for c in &chunks {
        az.add(c);
    }
    let mut owned = [0u64; 2];
    for c in &chunks {
        let owner = tier.preference(&c.id)[0].to_string();
        let k = urls.iter().position(|u| *u == owner).unwrap();
        owned[k] += 1;
        let t = tier.clone();
        let id = c.id;
        let got = within("get", move || t.get(&id)).unwrap();
        assert_eq!(got.as_deref(), Some(&c.object[..]));
        // Only the owner was asked, and it fetched from the origin.
        assert_eq!(tier.counters().nodes[k].requests, owned[k]);
        assert_eq!(az.origin_gets(k), owned[k]);
    }
    assert!(owned[0] > 0 && owned[1] > 0, "one node owns all: {owned:?}");
    let counters = tier.counters();
    assert_eq!(counters.requests, 20);
    assert_eq!(counters.hedges_sent, 0);
    assert_eq!(counters.failovers, 0);
    assert_eq!(counters.nodes.iter().map(|n| n.errors).sum::<u64>(), 0);
    assert_eq!(az.origin_gets(0) + az.origin_gets(1), 20);
}

/// Sequential gets over HTTP/1.1 or h2c: every chunk arrives intact and
/// the node accepts a single connection, which the client keeps open.
fn gets_reuse_one_connection(http2: bool) {
    let az = Az::new(1);
    let tier = Arc::new(
        AzTier::new(AzConfig {
            http2,
            ..config(vec![az.url(0)])
        })
        .unwrap(),
    );
    let chunks: Vec<_> = (600..610).map(chunk).collect();
    for c in &chunks {
        az.add(c);
    }
    for round in 0..2 {
        for c in &chunks {
            let t = tier.clone();
            let id = c.id;
            let got = within("get", move || t.get(&id)).unwrap();
            assert_eq!(got.as_deref(), Some(&c.object[..]), "round {round}");
        }
    }
    let node = az.nodes[0].as_ref().unwrap().node();
    assert_eq!(node.http_count("chunk", 200), 20);
    // HTTP/2 multiplexes one connection. Over HTTP/1.1 hyper puts a
    // connection back in its pool from its own task once the body is
    // read, so a get issued at that instant on a loaded host may find the
    // pool empty and open a second one; twenty gets on at most two
    // connections still show the client keeps them open.
    let most = if http2 { 1 } else { 2 };
    let accepted = node.connections_accepted();
    assert!(
        (1..=most).contains(&accepted),
        "http2: {http2}: {accepted} connections for 20 gets"
    );
    // The second round came from the node's own store.
    assert_eq!(az.origin_gets(0), 10);
}

#[test]
fn http1_gets_reuse_one_connection() {
    gets_reuse_one_connection(false);
}

#[test]
fn h2c_gets_reuse_one_connection() {
    gets_reuse_one_connection(true);
}

#[test]
fn missing_chunk_is_none_and_contains_asks_the_nodes() {
    let az = Az::new(2);
    let tier = Arc::new(AzTier::new(config(vec![az.url(0), az.url(1)])).unwrap());
    let there = chunk(200);
    az.add(&there);
    let absent = chunk(201);
    let t = tier.clone();
    let (got, has, has_not) = within("get and contains", move || {
        (
            t.get(&absent.id),
            t.contains(&there.id),
            t.contains(&absent.id),
        )
    });
    assert_eq!(got.unwrap(), None);
    assert!(has.unwrap());
    assert!(!has_not.unwrap());
    // A 404 is an answer: no failover, no unavailability.
    let counters = tier.counters();
    assert_eq!((counters.failovers, counters.unavailable), (0, 0));
}

#[test]
fn a_stopped_node_fails_over_to_the_next() {
    let mut az = Az::new(2);
    let urls = vec![az.url(0), az.url(1)];
    let tier = Arc::new(AzTier::new(config(urls.clone())).unwrap());
    let before = chunk_owned_by(&urls, 0);
    let after = (300..)
        .map(chunk)
        .find(|c| cachenode::client::hrw::preference_order(&c.id, &urls)[0] == 0)
        .unwrap();
    az.add(&before);
    az.add(&after);

    let t = tier.clone();
    let id = before.id;
    assert_eq!(
        within("get before", move || t.get(&id)).unwrap().as_deref(),
        Some(&before.object[..])
    );
    // Node 0 goes away mid-way (its pooled connection too).
    az.nodes[0].take().unwrap().stop().unwrap();

    let t = tier.clone();
    let id = after.id;
    let got = within("get after the stop", move || t.get(&id));
    assert_eq!(got.unwrap().as_deref(), Some(&after.object[..]));
    let counters = tier.counters();
    assert!(counters.nodes[0].errors >= 1, "{counters:?}");
    assert_eq!(counters.failovers, 1, "{counters:?}");
    assert_eq!(az.origin_gets(1), 1);
}

#[test]
fn a_stalled_owner_is_hedged_to_the_second_choice() {
    let az = Az::new(1);
    let stall = stalled_node();
    let urls = vec![stall.url(), az.url(0)];
    let tier = Arc::new(
        AzTier::new(AzConfig {
            hedge_after_ms: 50,
            ..config(urls.clone())
        })
        .unwrap(),
    );
    let c = chunk_owned_by(&urls, 0);
    az.add(&c);
    let t = tier.clone();
    let id = c.id;
    let got = within("hedged get", move || t.get(&id));
    assert_eq!(got.unwrap().as_deref(), Some(&c.object[..]));
    let counters = tier.counters();
    assert_eq!(counters.hedges_sent, 1, "{counters:?}");
    assert_eq!(counters.hedge_wins, 1, "{counters:?}");
    assert_eq!(counters.nodes[index_of(&tier, &urls[0])].requests, 1);
    assert_eq!(counters.nodes[index_of(&tier, &urls[1])].requests, 1);
    drop(stall);
}

#[test]
fn wrong_bytes_are_detected_and_the_next_node_used() {
    let az = Az::new(1);
    let liar = lying_node();
    let urls = vec![liar.url(), az.url(0)];
    let tier = Arc::new(AzTier::new(config(urls.clone())).unwrap());
    let c = chunk_owned_by(&urls, 0);
    az.add(&c);
    let t = tier.clone();
    let id = c.id;
    let got = within("get past a liar", move || t.get(&id));
    assert_eq!(got.unwrap().as_deref(), Some(&c.object[..]));
    let counters = tier.counters();
    let liar_k = index_of(&tier, &urls[0]);
    assert_eq!(counters.nodes[liar_k].corrupt, 1, "{counters:?}");
    assert_eq!(counters.failovers, 1);

    // With only the liar, the get fails as corruption naming it.
    let alone = Arc::new(AzTier::new(config(vec![liar.url()])).unwrap());
    let id = c.id;
    let err = within("get from a liar", move || alone.get(&id)).unwrap_err();
    match &err {
        StoreError::Corrupt { id, location, .. } => {
            assert_eq!(*id, c.id);
            assert_eq!(location, &liar.url());
        }
        other => panic!("not a corruption: {other}"),
    }
}

#[test]
fn every_node_down_is_an_error_naming_each() {
    let urls = vec![dead_url(), dead_url()];
    let tier = AzTier::new(AzConfig {
        timeout_ms: 10_000,
        ..config(urls.clone())
    })
    .unwrap();
    let id = chunk(400).id;
    let (err, counters) = within("get from dead nodes", move || {
        (tier.get(&id).unwrap_err(), tier.counters())
    });
    let StoreError::Backend { tier: name, source } = &err else {
        panic!("not a backend error: {err}");
    };
    assert_eq!(name, "az");
    let message = source.to_string();
    for url in &urls {
        assert!(message.contains(url.as_str()), "{url} not in: {message}");
    }
    assert!(message.contains(&id.to_hex()), "{message}");
    // The cause under the HTTP client's own words is spelled out.
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert_eq!(counters.unavailable, 1);
    assert_eq!(counters.nodes.iter().map(|n| n.errors).sum::<u64>(), 2);
}

#[test]
fn a_node_that_never_answers_times_out() {
    let stall = stalled_node();
    let tier = AzTier::new(AzConfig {
        timeout_ms: 300,
        hedge_after_ms: 100,
        ..config(vec![stall.url()])
    })
    .unwrap();
    let id = chunk(500).id;
    let err = within("get from a stalled node", move || tier.get(&id)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&stall.url()) && message.contains("300 ms"),
        "{message}"
    );
}

#[test]
fn usable_from_inside_a_runtime_and_droppable_there() {
    let az = Az::new(1);
    let c = chunk(600);
    az.add(&c);
    let tier = AzTier::new(config(vec![az.url(0)])).unwrap();
    let expected = c.object.clone();
    within("get inside a runtime", move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            // Directly on the async thread (discouraged, but no panic) and
            // through spawn_blocking (the intended way).
            assert_eq!(tier.get(&c.id).unwrap(), Some(expected.clone()));
            let tier = Arc::new(tier);
            let t = tier.clone();
            let id = c.id;
            let got = tokio::task::spawn_blocking(move || t.get(&id))
                .await
                .unwrap();
            assert_eq!(got.unwrap(), Some(expected));
            drop(tier);
        });
    });
}

#[test]
fn as_a_tier_between_a_local_store_and_the_origin() {
    let az = Az::new(2);
    let c = chunk(700);
    az.add(&c);
    let (_l, local) = dir_store();
    let tier: Arc<dyn ChunkStore> =
        Arc::new(AzTier::new(config(vec![az.url(0), az.url(1)])).unwrap());
    // A put never writes to the nodes; it does check the bytes.
    assert_eq!(
        tier.put(&c.id, &c.object).unwrap(),
        PutOutcome::AlreadyPresent
    );
    assert!(matches!(
        tier.put(&c.id, b"other bytes"),
        Err(StoreError::IdMismatch { .. })
    ));
    assert!(!tier.remove(&c.id).unwrap());

    let tiers = Arc::new(
        TieredStore::new(vec![
            ("shared-local".into(), local.clone() as Arc<dyn ChunkStore>),
            ("az".into(), tier),
            ("origin".into(), az.origin.clone() as Arc<dyn ChunkStore>),
        ])
        .unwrap(),
    );
    let t = tiers.clone();
    let id: ChunkId = c.id;
    let fetched = within("tiered get", move || t.fetch(&id)).unwrap();
    assert_eq!(fetched.object, c.object);
    assert_eq!(fetched.tier, 1, "served by the AZ tier");
    assert!(
        local.contains(&c.id).unwrap(),
        "the local tier was not filled"
    );
    let m = tiers.metrics();
    assert_eq!(
        m.tiers[2].hits + m.tiers[2].misses,
        0,
        "the instance asked the origin"
    );
}

#[test]
fn bad_configurations_are_refused() {
    assert!(AzTier::new(AzConfig::default()).is_err());
    assert!(AzTier::new(AzConfig::with_nodes(["https://node:1"])).is_err());
}
