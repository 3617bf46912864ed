//! `az_fleet`: warm chunk latency from a fleet of 5 real `imagefs
//! cache-node` processes on loopback, erasure-coded (4+1 stripes, read
//! all 5, first 4 win) against replicated (whole objects on the
//! rendezvous owner, hedged to the second choice after `hedge_after_ms`),
//! each with every node healthy and with one node SIGSTOPped. Same
//! machine, same run, same nodes; the two modes take turns round by round
//! so that drift in the machine's load hits both alike.
//!
//! Prints a [`FleetReport`] (serde) as a table, the ratios the issue asks
//! for, and the load average before and after; `AZ_FLEET_JSON=FILE`
//! writes it as JSON. `AZ_FLEET_CHUNKS` (default 200 chunks of 512 KiB)
//! and `AZ_FLEET_ROUNDS` (default 8 passes) size it.
//!
//! `cargo bench -p tests --bench az_fleet` (needs the `imagefs` binary).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachenode::client::{AzConfig, AzMode, AzTier};
use cachetiers::{ChunkStore, DirStore, TieredStore};
use manifest::convergent::{DomainSecret, EncryptedChunk, encrypt_chunk};
use serde::Serialize;
use telemetry::histogram::percentile;
use tests::fleet::Fleet;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The node that is stopped in the degraded runs.
const STOPPED: usize = 0;

/// One (mode, health) line.
#[derive(Debug, Serialize)]
struct FleetRow {
    mode: &'static str,
    health: &'static str,
    gets: usize,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

/// The whole run.
#[derive(Debug, Serialize)]
struct FleetReport {
    chunks: usize,
    object_bytes: usize,
    rounds: usize,
    hedge_after_ms: u64,
    load_before: String,
    load_after: String,
    rows: Vec<FleetRow>,
    /// Erasure p99 with one node stopped over erasure p99 healthy (goal ≤ 1.5).
    erasure_stopped_vs_healthy_p99: f64,
    /// Erasure p99 with one node stopped over replicated p99 with one node
    /// stopped (goal < 1).
    erasure_vs_replicated_stopped_p99: f64,
    /// The same for p99.9.
    erasure_vs_replicated_stopped_p999: f64,
}

impl FleetReport {
    fn table(&self) -> String {
        let mut out = format!(
            "## AZ fleet: warm chunk gets, {} chunks of {} bytes, {} rounds, 5 nodes\n\n\
             | mode | nodes | gets | p50 ms | p99 ms | p99.9 ms | max ms |\n\
             | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
            self.chunks, self.object_bytes, self.rounds
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                r.mode, r.health, r.gets, r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms
            ));
        }
        out.push_str(&format!(
            "\nerasure p99, one stopped / healthy: {:.2}x (goal <= 1.5x)\n\
             erasure / replicated (hedge {} ms) p99, one stopped: {:.2}x (goal < 1)\n\
             erasure / replicated p99.9, one stopped: {:.2}x\n\
             load average before: {}; after: {}\n",
            self.erasure_stopped_vs_healthy_p99,
            self.hedge_after_ms,
            self.erasure_vs_replicated_stopped_p99,
            self.erasure_vs_replicated_stopped_p999,
            self.load_before,
            self.load_after,
        ));
        out
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn chunk(n: usize) -> EncryptedChunk {
    let secret = DomainSecret::from_bytes([3; 32]);
    let mut state = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut plain = Vec::with_capacity(512 * 1024);
    while plain.len() < 512 * 1024 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        plain.extend_from_slice(&state.to_le_bytes());
    }
    encrypt_chunk(&secret, &plain)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One timed pass over every chunk; a wrong or missing answer is an error.
fn pass(tier: &AzTier, chunks: &[EncryptedChunk], out: &mut Vec<Duration>) -> Res<()> {
    for c in chunks {
        let started = Instant::now();
        let got = tier.get(&c.id)?;
        out.push(started.elapsed());
        if got.as_deref() != Some(&c.object[..]) {
            return Err(format!("chunk {}: wrong or missing answer", c.id).into());
        }
    }
    Ok(())
}

fn row(mode: &'static str, health: &'static str, mut v: Vec<Duration>) -> FleetRow {
    v.sort_unstable();
    let p = |q| percentile(&v, q).map_or(f64::NAN, ms);
    FleetRow {
        mode,
        health,
        gets: v.len(),
        p50_ms: p(0.5),
        p99_ms: p(0.99),
        p999_ms: p(0.999),
        max_ms: v.last().copied().map_or(f64::NAN, ms),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("az_fleet: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let Some(bin) = tests::guest::imagefs_binary() else {
        return Ok(());
    };
    let n = env_usize("AZ_FLEET_CHUNKS", 200);
    let rounds = env_usize("AZ_FLEET_ROUNDS", 8).max(1);
    let load_before = load_average();
    let dir = tempfile::tempdir()?;
    let origin_dir = dir.path().join("origin");
    let origin = Arc::new(DirStore::create(&origin_dir)?);
    let chunks: Vec<EncryptedChunk> = (0..n).map(chunk).collect();
    for c in &chunks {
        origin.put(&c.id, &c.object)?;
    }
    let mut fleet = Fleet::start(&bin, dir.path(), &origin_dir, 5)?;
    let base = AzConfig {
        timeout_ms: 30_000,
        ..AzConfig::with_nodes(fleet.urls())
    };
    let hedge_after_ms = base.hedge_after_ms;
    let replicated = AzTier::new(base.clone())?;
    let erasure = Arc::new(AzTier::new(AzConfig {
        mode: AzMode::Erasure,
        fleet_token_file: Some(fleet.token_file.clone()),
        ..base
    })?);

    // Prime both: the replicated owners fill from the origin; the
    // erasure client misses, reads the origin and writes the stripes.
    let tiered = TieredStore::new(vec![
        ("az".into(), Arc::clone(&erasure) as Arc<dyn ChunkStore>),
        ("origin".into(), Arc::clone(&origin) as Arc<dyn ChunkStore>),
    ])?;
    for c in &chunks {
        tiered.fetch(&c.id)?;
        replicated.get(&c.id)?;
    }
    if !erasure.wait_for_writes(Duration::from_secs(120)) {
        return Err("the stripe writes did not finish".into());
    }
    // One unmeasured pass each warms the connections.
    let mut scratch = Vec::new();
    pass(&erasure, &chunks, &mut scratch)?;
    pass(&replicated, &chunks, &mut scratch)?;

    let mut rows = Vec::new();
    for health in ["all healthy", "one SIGSTOPped"] {
        if health != "all healthy" {
            fleet.stop(STOPPED)?;
        }
        let (mut ec, mut rep) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            pass(&erasure, &chunks, &mut ec)?;
            pass(&replicated, &chunks, &mut rep)?;
        }
        rows.push(row("erasure 4+1", health, ec));
        rows.push(row("replicated + hedge", health, rep));
    }
    fleet.cont(STOPPED)?;
    let find = |mode: &str, health: &str| {
        rows.iter()
            .find(|r| r.mode.starts_with(mode) && r.health == health)
            .expect("every row was measured")
    };
    let (ec_ok, ec_stop, rep_stop) = (
        find("erasure", "all healthy"),
        find("erasure", "one SIGSTOPped"),
        find("replicated", "one SIGSTOPped"),
    );
    let report = FleetReport {
        chunks: n,
        object_bytes: chunks.first().map_or(0, |c| c.object.len()),
        rounds,
        hedge_after_ms,
        load_before,
        load_after: load_average(),
        erasure_stopped_vs_healthy_p99: ec_stop.p99_ms / ec_ok.p99_ms,
        erasure_vs_replicated_stopped_p99: ec_stop.p99_ms / rep_stop.p99_ms,
        erasure_vs_replicated_stopped_p999: ec_stop.p999_ms / rep_stop.p999_ms,
        rows,
    };
    println!("{}", report.table());
    let c = erasure.counters();
    println!(
        "erasure counters: rebuilt with parity {}, bad stripes {}, dropped (slowest) per node {:?}, recent latency µs per node {:?}",
        c.rebuilt_with_parity,
        c.bad_stripes,
        c.nodes.iter().map(|n| n.dropped_slow).collect::<Vec<_>>(),
        c.nodes
            .iter()
            .map(|n| n.recent_latency_us)
            .collect::<Vec<_>>(),
    );
    if let Ok(path) = std::env::var("AZ_FLEET_JSON") {
        std::fs::write(Path::new(&path), serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
