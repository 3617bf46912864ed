//! The AZ tier's erasure-coded mode against 5 real `imagefs cache-node`
//! processes on loopback (issue 16):
//!
//! - a chunk round-trips exactly, one stripe on each of its 5 nodes;
//! - with one node killed, every read succeeds and none times out;
//! - with one node stopped (SIGSTOP), every read completes, none waiting
//!   for the stopped node (its request is the one dropped each time);
//! - a corrupted stripe is found, counted and replaced on its node, and
//!   the read is right;
//! - a miss costs exactly one origin GET, however many readers;
//! - a sixth node takes its share of stripes and no stripe moves between
//!   the nodes that stay (the share checked against a binomial bound);
//! - a stripe write without the fleet token (or with a wrong one) is
//!   refused, and an error body never carries the token;
//! - in the replicated mode, a stopped owner is soon asked after a
//!   healthy node instead of first (it stops costing the hedge delay).
//!
//! No assertion is on timing: a watchdog fails a test that hangs, and the
//! `az_fleet` benchmark reports latencies. Needs the `imagefs` binary
//! (`cargo build -p tools`); says `SKIP:` otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use cachenode::client::{AzConfig, AzMode, AzTier};
use cachenode::stripe;
use cachetiers::{ChunkStore, DirStore, StoreError, TieredStore};
use manifest::ChunkId;
use manifest::convergent::{DomainSecret, EncryptedChunk, encrypt_chunk};
use tests::fleet::Fleet;

/// Generous bound for anything that could hang; never a timing assertion.
const WATCHDOG: Duration = Duration::from_secs(120);

/// A real encrypted chunk, different for each `n`, of 64 KiB plus `n % 7`
/// bytes of plaintext (so the stripes need padding for some `n`).
fn chunk(n: u32) -> EncryptedChunk {
    let secret = DomainSecret::from_bytes([9; 32]);
    let len = 64 * 1024 + (n % 7) as usize;
    let mut state = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut plain = Vec::with_capacity(len + 8);
    while plain.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        plain.extend_from_slice(&state.to_le_bytes());
    }
    plain.truncate(len);
    encrypt_chunk(&secret, &plain)
}

/// Runs `f` on a thread and fails the test if it does not end within the
/// watchdog (a hang), rather than hanging the suite.
fn within_watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("{what} did not end within {WATCHDOG:?}"))
}

struct Setup {
    _dir: tempfile::TempDir,
    origin: Arc<DirStore>,
    fleet: Fleet,
}

fn setup(nodes: usize) -> Option<Setup> {
    let bin = tests::guest::imagefs_binary()?;
    let dir = tempfile::tempdir().expect("temporary directory");
    let origin = Arc::new(DirStore::create(dir.path().join("origin")).expect("origin store"));
    let fleet = Fleet::start(&bin, dir.path(), &dir.path().join("origin"), nodes)
        .unwrap_or_else(|e| panic!("{e}"));
    Some(Setup {
        _dir: dir,
        origin,
        fleet,
    })
}

fn erasure_config(urls: Vec<String>, token_file: &Path) -> AzConfig {
    AzConfig {
        mode: AzMode::Erasure,
        fleet_token_file: Some(token_file.to_path_buf()),
        // Far above any loopback answer: a read that waited for a stopped
        // node would show as a dropped-request count of zero, not as a
        // failure.
        timeout_ms: 60_000,
        connect_timeout_ms: 10_000,
        ..AzConfig::with_nodes(urls)
    }
}

fn tier(s: &Setup) -> Arc<AzTier> {
    Arc::new(AzTier::new(erasure_config(s.fleet.urls(), &s.fleet.token_file)).expect("AZ tier"))
}

/// AZ over the origin, as an instance stacks them.
fn stack(az: &Arc<AzTier>, origin: &Arc<DirStore>) -> TieredStore {
    TieredStore::new(vec![
        ("az".into(), Arc::clone(az) as Arc<dyn ChunkStore>),
        ("origin".into(), Arc::clone(origin) as Arc<dyn ChunkStore>),
    ])
    .expect("tiered store")
}

/// Puts `chunks` in the origin and reads each once through AZ over the
/// origin (a miss, filled behind the read); waits for the fills.
fn fill(s: &Setup, az: &Arc<AzTier>, chunks: &[EncryptedChunk]) {
    let tiered = stack(az, &s.origin);
    for c in chunks {
        s.origin.put(&c.id, &c.object).expect("origin put");
        let fetched = tiered.fetch(&c.id).expect("fetch through AZ and origin");
        assert_eq!(fetched.object, c.object);
    }
    assert!(az.wait_for_writes(WATCHDOG), "stripe writes never ended");
    assert_eq!(az.counters().stripe_writes_failed, 0, "{:?}", az.counters());
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    let auth = auth.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, raw[split + 4..].to_vec())
}

/// The stripe node `k` holds for `id`, if any.
fn stripe_on(s: &Setup, k: usize, id: &ChunkId) -> Option<Vec<u8>> {
    let (status, body) = http(
        s.fleet.nodes[k].addr,
        "GET",
        &format!("/v1/stripes/{id}"),
        None,
        &[],
    );
    match status {
        200 => Some(body),
        404 => None,
        other => panic!("GET stripe from node {k}: HTTP {other}"),
    }
}

#[test]
fn a_chunk_round_trips_with_one_stripe_on_each_of_its_5_nodes() {
    let Some(s) = setup(5) else { return };
    let az = tier(&s);
    let chunks: Vec<EncryptedChunk> = (0..7).map(chunk).collect();
    fill(&s, &az, &chunks);
    let fresh = tier(&s);
    for c in &chunks {
        assert_eq!(fresh.get(&c.id).unwrap().as_deref(), Some(&c.object[..]));
        let mut indices: Vec<usize> = (0..5)
            .map(|k| {
                let bytes = stripe_on(&s, k, &c.id).expect("a stripe on every node");
                stripe::decode_of(&bytes, &c.id).expect("a stripe").index
            })
            .collect();
        indices.sort_unstable();
        assert_eq!(indices, vec![0, 1, 2, 3, 4]);
    }
    let counters = fresh.counters();
    assert_eq!(counters.unavailable, 0);
    assert_eq!(counters.bad_stripes, 0);
}

#[test]
fn with_one_node_killed_every_read_succeeds_without_a_timeout() {
    let Some(mut s) = setup(5) else { return };
    let az = tier(&s);
    let chunks: Vec<EncryptedChunk> = (100..130).map(chunk).collect();
    fill(&s, &az, &chunks);
    s.fleet.kill(2);
    let reader = tier(&s);
    let ids: Vec<(ChunkId, Vec<u8>)> = chunks.iter().map(|c| (c.id, c.object.clone())).collect();
    let r = Arc::clone(&reader);
    within_watchdog("reads with a node killed", move || {
        for (id, object) in ids {
            assert_eq!(r.get(&id).unwrap().as_deref(), Some(&object[..]));
        }
    });
    let c = reader.counters();
    let dead = &c.nodes[2];
    // Every read asked the dead node (all 5 nodes hold every chunk) and
    // every such request failed at once (refused), or was dropped when the
    // other 4 answered before the refusal arrived: none timed out.
    assert_eq!(dead.requests, chunks.len() as u64);
    assert_eq!(
        dead.errors + dead.dropped_slow,
        chunks.len() as u64,
        "{c:?}"
    );
    assert_eq!(c.unavailable, 0);
    // The parity stripe was needed exactly for the chunks whose stripe on
    // the dead node is a data stripe (stripe i is on the i-th of the top 5).
    let dead_url = s.fleet.nodes[2].url.as_str();
    let data_on_dead = chunks
        .iter()
        .filter(|c| reader.stripe_nodes(&c.id).unwrap()[stripe::PARITY] != dead_url)
        .count();
    assert_eq!(c.rebuilt_with_parity as usize, data_on_dead, "{c:?}");
}

#[test]
fn with_one_node_stopped_reads_complete_without_waiting_for_it() {
    let Some(mut s) = setup(5) else { return };
    let az = tier(&s);
    let chunks: Vec<EncryptedChunk> = (200..230).map(chunk).collect();
    fill(&s, &az, &chunks);
    let reader = tier(&s);
    // Connections are opened (and kept) before the stop, as a running
    // instance has them.
    assert!(reader.get(&chunks[0].id).unwrap().is_some());
    let before = reader.counters().nodes[4].clone();
    s.fleet.stop(4).unwrap();
    let ids: Vec<(ChunkId, Vec<u8>)> = chunks.iter().map(|c| (c.id, c.object.clone())).collect();
    let r = Arc::clone(&reader);
    within_watchdog("reads with a node stopped", move || {
        for (id, object) in ids {
            assert_eq!(r.get(&id).unwrap().as_deref(), Some(&object[..]));
        }
    });
    let c = reader.counters();
    let stopped = &c.nodes[4];
    // Each read after the stop returned while the stopped node's request
    // was still unanswered: it was dropped, never waited for (the timeout
    // is 60 s and no read counted an error against it).
    assert_eq!(
        stopped.dropped_slow - before.dropped_slow,
        chunks.len() as u64,
        "{c:?}"
    );
    assert_eq!(stopped.errors, 0, "{c:?}");
    assert_eq!(c.unavailable, 0);
    s.fleet.cont(4).unwrap();
}

#[test]
fn a_corrupted_stripe_is_found_counted_and_replaced() {
    let Some(s) = setup(5) else { return };
    let az = tier(&s);
    let c = chunk(300);
    fill(&s, &az, std::slice::from_ref(&c));
    // Damage the body of one node's stripe, keeping its header valid (a
    // header the client cannot parse is refused on arrival instead). The
    // victim is the chunk's first node: a rebuild takes stripes in node
    // order from those that arrived, so the last node's stripe is used
    // only when another is late, and a bad one there could go unseen.
    let first = az.stripe_nodes(&c.id).unwrap()[0].to_owned();
    let victim = s.fleet.nodes.iter().position(|n| n.url == first).unwrap();
    let good = stripe_on(&s, victim, &c.id).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[stripe::HEADER_LEN] ^= 0x55;
    bad[last] ^= 0xAA;
    let (status, _) = http(
        s.fleet.nodes[victim].addr,
        "PUT",
        &format!("/v1/stripes/{}", c.id),
        Some(&s.fleet.token),
        &bad,
    );
    assert_eq!(status, 204);
    let reader = tier(&s);
    // The bad stripe is seen only when it is among the first 4 to arrive;
    // on loopback that is 4 reads in 5, so a few reads find it (the loop
    // is bounded; reads that do not see it are still right).
    let mut reads = 0;
    while reader.counters().bad_stripes == 0 && reads < 200 {
        assert_eq!(reader.get(&c.id).unwrap().as_deref(), Some(&c.object[..]));
        reads += 1;
    }
    let counters = reader.counters();
    assert_eq!(
        counters.bad_stripes, 1,
        "never saw the bad stripe in {reads} reads"
    );
    let url = &s.fleet.nodes[victim].url;
    let node = counters.nodes.iter().find(|n| &n.url == url).unwrap();
    assert_eq!(node.corrupt, 1);
    assert!(reader.wait_for_writes(WATCHDOG));
    assert_eq!(reader.counters().stripes_repaired, 1);
    assert_eq!(
        stripe_on(&s, victim, &c.id).unwrap(),
        good,
        "the bad stripe is still there"
    );
}

/// Counts the origin's gets (a real directory store underneath); a get
/// waits until the test opens the gate (or the watchdog passes), so the
/// test decides when the first fetch may end.
struct CountingOrigin {
    store: Arc<DirStore>,
    gets: std::sync::atomic::AtomicU64,
    gate: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl CountingOrigin {
    fn open_gate(&self) {
        *self.gate.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl ChunkStore for CountingOrigin {
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let open = self.gate.lock().unwrap();
        drop(
            self.opened
                .wait_timeout_while(open, WATCHDOG, |open| !*open)
                .unwrap(),
        );
        self.store.get(id)
    }
    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<cachetiers::PutOutcome, StoreError> {
        self.store.put(id, object)
    }
    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.store.contains(id)
    }
    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.store.remove(id)
    }
}

#[test]
fn a_miss_costs_exactly_one_origin_get() {
    let Some(s) = setup(5) else { return };
    let az = tier(&s);
    let c = chunk(400);
    s.origin.put(&c.id, &c.object).unwrap();
    let origin = Arc::new(CountingOrigin {
        store: Arc::clone(&s.origin),
        gets: 0.into(),
        gate: false.into(),
        opened: std::sync::Condvar::new(),
    });
    let tiered = Arc::new(
        TieredStore::new(vec![
            ("az".into(), Arc::clone(&az) as Arc<dyn ChunkStore>),
            ("origin".into(), Arc::clone(&origin) as Arc<dyn ChunkStore>),
        ])
        .unwrap(),
    );
    // Eight readers at once: one flight, one origin get.
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let t = Arc::clone(&tiered);
            let id = c.id;
            std::thread::spawn(move || t.fetch(&id).map(|f| f.object))
        })
        .collect();
    // The first reader's origin get is held until the other 7 have
    // joined its flight (a reader that came after the flight, before the
    // stripes were written, would be a second miss: that is not this
    // test's question). The wait is a hang guard, not a timing check.
    let deadline = std::time::Instant::now() + WATCHDOG;
    while tiered.waiting() < 7 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(tiered.waiting(), 7, "the readers never joined one flight");
    origin.open_gate();
    for r in readers {
        assert_eq!(r.join().unwrap().unwrap(), c.object);
    }
    assert_eq!(origin.gets.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(az.wait_for_writes(WATCHDOG));
    // Now the fleet has it: more reads, no more origin gets.
    for _ in 0..3 {
        let f = tiered.fetch(&c.id).unwrap();
        assert_eq!((f.tier, f.object), (0, c.object.clone()));
    }
    assert_eq!(origin.gets.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The nodes never asked their origin for the stripes either: each
    // node's origin directory is the empty-at-start `s.origin`, shared,
    // so look at the nodes' own counters instead.
    for k in 0..5 {
        let (status, body) = http(s.fleet.nodes[k].addr, "GET", "/metrics", None, &[]);
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        let origin_gets: u64 = text
            .lines()
            .filter(|l| l.starts_with("imagefs_tier_") && l.contains("tier=\"origin\""))
            .filter(|l| l.contains("_hits_total") || l.contains("_misses_total"))
            .filter_map(|l| l.rsplit(" ").next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(origin_gets, 0, "node {k} asked its origin:\n{text}");
    }
}

#[test]
fn a_sixth_node_takes_its_share_and_nothing_moves_between_the_others() {
    let Some(mut s) = setup(5) else { return };
    let az = tier(&s);
    const N: u32 = 240;
    let chunks: Vec<EncryptedChunk> = (1000..1000 + N).map(chunk).collect();
    fill(&s, &az, &chunks);
    let new = s.fleet.add().unwrap();
    let new_url = s.fleet.nodes[new].url.clone();
    let six = tier(&s);
    // A chunk moves (one stripe, to the new node) exactly when the new
    // node is in its top 5 of 6: probability 5/6 each, independently
    // (rendezvous scores are hashes). Bound: mean ± 5 standard deviations
    // of the binomial, a false failure about once in 3.5 million runs.
    let moved: Vec<&EncryptedChunk> = chunks
        .iter()
        .filter(|c| six.stripe_nodes(&c.id).unwrap().contains(&new_url.as_str()))
        .collect();
    let n = f64::from(N);
    let (mean, sd) = (n * 5.0 / 6.0, (n * 5.0 / 6.0 / 6.0).sqrt());
    let m = moved.len() as f64;
    assert!(
        (m - mean).abs() <= 5.0 * sd,
        "{m} of {N} chunks moved, expected {mean:.0} ± {:.0}",
        5.0 * sd
    );
    for c in &chunks {
        // The nodes that stay in a chunk's top 5 keep the same stripe.
        let before = az.stripe_nodes(&c.id).unwrap();
        let after = six.stripe_nodes(&c.id).unwrap();
        let stayed = after.iter().filter(|u| before.contains(u)).count();
        let expect = if after.contains(&new_url.as_str()) {
            4
        } else {
            5
        };
        assert_eq!(stayed, expect, "chunk {}", c.id);
        // Every chunk still reads from the fleet alone.
        assert_eq!(six.get(&c.id).unwrap().as_deref(), Some(&c.object[..]));
    }
    assert!(six.wait_for_writes(WATCHDOG));
    // A read gives the new node the one stripe the chunk lacks when the
    // new node's 404 came before the fourth stripe (else its request was
    // dropped unanswered); read the others again until each has it (each
    // pass misses one with probability about 1/5; 40 passes bound it).
    let mut lacking: Vec<&EncryptedChunk> = moved
        .iter()
        .copied()
        .filter(|c| stripe_on(&s, new, &c.id).is_none())
        .collect();
    for _ in 0..40 {
        if lacking.is_empty() {
            break;
        }
        for c in &lacking {
            assert_eq!(six.get(&c.id).unwrap().as_deref(), Some(&c.object[..]));
        }
        assert!(six.wait_for_writes(WATCHDOG));
        lacking.retain(|c| stripe_on(&s, new, &c.id).is_none());
    }
    assert!(
        lacking.is_empty(),
        "{} chunks never got their stripe",
        lacking.len()
    );
    // The new node holds a stripe of exactly the chunks that moved to it.
    let held = chunks
        .iter()
        .filter(|c| stripe_on(&s, new, &c.id).is_some())
        .count();
    assert_eq!(held, moved.len());
    for c in &moved {
        let bytes = stripe_on(&s, new, &c.id).unwrap();
        assert!(stripe::decode_of(&bytes, &c.id).is_ok());
    }
    let counters = six.counters();
    assert_eq!(
        counters.stripes_repaired as usize,
        moved.len(),
        "{counters:?}"
    );
    assert_eq!(counters.unavailable, 0);
}

#[test]
fn stripe_writes_need_the_fleet_token() {
    let Some(s) = setup(5) else { return };
    let c = chunk(500);
    let stripes = stripe::split(&c.id, &c.object);
    let addr = s.fleet.nodes[0].addr;
    let path = format!("/v1/stripes/{}", c.id);
    let (none, body) = http(addr, "PUT", &path, None, &stripes[0]);
    assert_eq!(none, 401, "{}", String::from_utf8_lossy(&body));
    let wrong = format!("{}x", s.fleet.token);
    let (status, body) = http(addr, "PUT", &path, Some(&wrong), &stripes[0]);
    assert_eq!(status, 401);
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(&s.fleet.token), "the token leaked: {text}");
    let (status, _) = http(addr, "DELETE", &path, None, &[]);
    assert_eq!(status, 401);
    // Nothing was stored; reads stay anonymous.
    assert_eq!(http(addr, "GET", &path, None, &[]).0, 404);
    assert_eq!(
        http(addr, "PUT", &path, Some(&s.fleet.token), &stripes[0]).0,
        204
    );
    assert_eq!(http(addr, "GET", &path, None, &[]).1, stripes[0]);
    // A stripe of another chunk under this path is refused.
    let other = chunk(501);
    let foreign = stripe::split(&other.id, &other.object);
    assert_eq!(
        http(addr, "PUT", &path, Some(&s.fleet.token), &foreign[0]).0,
        400
    );
    // A token-less tier cannot be built in erasure mode.
    let err = AzTier::new(AzConfig {
        mode: AzMode::Erasure,
        fleet_token_file: Some(s.fleet.token_file.with_extension("missing")),
        ..AzConfig::with_nodes(s.fleet.urls())
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("fleet token"), "{err}");
    assert!(!format!("{:?}", tier(&s)).contains(&s.fleet.token));
}

#[test]
fn erasure_mode_with_fewer_than_5_nodes_is_a_clear_error() {
    let err = AzTier::new(AzConfig {
        mode: AzMode::Erasure,
        ..AzConfig::with_nodes(["http://127.0.0.1:1", "http://127.0.0.1:2"])
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("at least 5 nodes") && err.contains("2 configured"),
        "{err}"
    );
}

#[test]
fn replicated_mode_asks_a_stopped_owner_after_a_healthy_node() {
    let Some(mut s) = setup(5) else { return };
    let urls = s.fleet.urls();
    let reader = Arc::new(
        AzTier::new(AzConfig {
            timeout_ms: 60_000,
            connect_timeout_ms: 10_000,
            ..AzConfig::with_nodes(urls.clone())
        })
        .expect("AZ tier"),
    );
    // Chunks that node 4 owns; the nodes fill themselves from the origin.
    let owned: Vec<EncryptedChunk> = (300..)
        .map(chunk)
        .filter(|c| reader.preference(&c.id)[0] == urls[4])
        .take(12)
        .collect();
    for c in &owned {
        s.origin.put(&c.id, &c.object).expect("origin put");
    }
    s.fleet.stop(4).unwrap();
    let ids: Vec<(ChunkId, Vec<u8>)> = owned.iter().map(|c| (c.id, c.object.clone())).collect();
    let r = Arc::clone(&reader);
    within_watchdog("reads with the owner stopped", move || {
        for (id, object) in ids {
            assert_eq!(r.get(&id).unwrap().as_deref(), Some(&object[..]));
        }
    });
    let c = reader.counters();
    // The first reads hedged away from the stopped owner; once it had been
    // slow twice in a row, reads asked the second choice first.
    assert!(c.hedge_wins >= 2, "{c:?}");
    assert!(c.slow_passed_over > 0, "{c:?}");
    assert_eq!(c.unavailable, 0, "{c:?}");
    s.fleet.cont(4).unwrap();
}
