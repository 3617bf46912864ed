//! Part 1 of `lazy_read`: chunk fetch latency from each tier, against a
//! plain HTTP GET of an object of the same size measured in the same run.
//!
//! The figures are gathered into a [`LatencyReport`] (serde), which is
//! printed as a table and, with `--json=FILE`, written as JSON.

use std::time::Instant;

use cachenode::{AzConfig, AzTier};
use cachetiers::{ChunkStore, RocksStore};
use manifest::ChunkId;
use serde::Serialize;
use telemetry::histogram::percentile;
use tests::process::Running;

use super::{Res, Setup};

/// Warm passes over every chunk per cache-node protocol; the protocols
/// take turns so that drift in the machine's load hits both alike.
const WARM_ROUNDS: usize = 3;

/// One tier's latencies.
#[derive(Debug, Serialize)]
pub struct LatencyRow {
    /// What was read.
    pub tier: String,
    /// Gets timed.
    pub gets: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// `p50_ms` over the plain HTTP keep-alive baseline's p50.
    pub p50_vs_plain_http: f64,
}

/// Part 1's figures.
#[derive(Debug, Serialize)]
pub struct LatencyReport {
    /// Distinct stored chunks of the image.
    pub chunks: usize,
    /// Median object size, bytes (what the plain HTTP baseline serves).
    pub object_bytes: usize,
    /// Fastest first as measured; the baseline first.
    pub rows: Vec<LatencyRow>,
}

impl LatencyReport {
    /// A Markdown table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "## Chunk fetch latency, {} chunks, median object {} bytes\n\n\
             | tier | gets | p50 ms | p99 ms | p50 / plain HTTP keep-alive p50 |\n\
             | --- | ---: | ---: | ---: | ---: |\n",
            self.chunks, self.object_bytes
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {:.3} | {:.3} | {:.2}x |\n",
                r.tier, r.gets, r.p50_ms, r.p99_ms, r.p50_vs_plain_http
            ));
        }
        out.push_str(
            "\n(goals: cache node warm p50 <= 0.5 ms, p99 <= 2 ms; shared local p50 <= 0.3 ms)\n",
        );
        out
    }
}

/// Latencies in seconds, sorted; the quantile by nearest rank (NaN for
/// none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    percentile(sorted, q).unwrap_or(f64::NAN)
}

fn time_gets(store: &dyn ChunkStore, ids: &[ChunkId], what: &str) -> Res<Vec<f64>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let t = Instant::now();
        let got = store
            .get(id)
            .map_err(|e| format!("{what}: get {id}: {e}"))?;
        out.push(t.elapsed().as_secs_f64());
        if got.is_none() {
            return Err(format!("{what}: chunk {id} missing"));
        }
    }
    Ok(out)
}

/// Plain HTTP/1.1: axum serving one fixed object, reqwest getting it,
/// `gets` times; with `reuse`, over one kept-alive connection, else over
/// a new connection each time. What the cache node's HTTP could cost at
/// best on this machine.
fn plain_http(object_bytes: usize, gets: usize, reuse: bool) -> Res<Vec<f64>> {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let body = axum::body::Bytes::from(vec![0x5a; object_bytes]);
    let app = axum::Router::new().route(
        "/blob",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    server_rt.spawn(async move {
        use axum::serve::ListenerExt;
        let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
            return;
        };
        let listener = listener.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        let _ = axum::serve(listener, app).await;
    });
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true);
    if !reuse {
        builder = builder.pool_max_idle_per_host(0);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let url = format!("http://{addr}/blob");
    let mut out = Vec::with_capacity(gets);
    // One untimed get opens the kept-alive connection.
    for k in 0..=gets {
        let (client, url) = (client.clone(), url.clone());
        let t = Instant::now();
        let got = client_rt.block_on(async move {
            let bytes = client.get(url).send().await?.bytes().await?;
            Ok::<_, reqwest::Error>(bytes.to_vec())
        });
        let elapsed = t.elapsed().as_secs_f64();
        let got = got.map_err(|e| format!("plain HTTP get: {e}"))?;
        if got.len() != object_bytes {
            return Err(format!("plain HTTP get: {} bytes", got.len()));
        }
        if k > 0 {
            out.push(elapsed);
        }
    }
    server_rt.shutdown_background();
    client_rt.shutdown_background();
    Ok(out)
}

/// Part 1: p50/p99 of a get of every chunk from each tier.
pub fn fetch_latency(s: &Setup, ids: &[ChunkId], json: Option<&str>) -> Res<()> {
    let origin = s.origin()?;
    let garage = time_gets(&origin, ids, "Garage")?;

    // The shared local tier, filled from Garage, then reopened so the reads
    // come from its files (and the OS page cache), not its memtable only.
    let rocks_dir = s.path("shared-latency");
    let mut sizes = Vec::with_capacity(ids.len());
    {
        let rocks = RocksStore::open(&rocks_dir, 4 << 30).map_err(|e| e.to_string())?;
        for id in ids {
            let o = origin
                .get(id)
                .map_err(|e| e.to_string())?
                .ok_or("chunk vanished")?;
            sizes.push(o.len());
            rocks.put(id, &o).map_err(|e| e.to_string())?;
        }
    }
    sizes.sort_unstable();
    let object_bytes = percentile(&sizes, 0.5).ok_or("no chunks")?;
    let rocks = RocksStore::open(&rocks_dir, 4 << 30).map_err(|e| e.to_string())?;
    let shared = time_gets(&rocks, ids, "shared local")?;
    drop(rocks);

    let mut node_cmd = s.cmd();
    node_cmd
        .args(["cache-node", "--listen", "127.0.0.1:0", "--capacity", "1G"])
        .arg("--data")
        .arg(s.path("node"))
        .args(["--origin", &s.origin_url]);
    let (node, line) =
        Running::spawn_until(node_cmd, "cache node listening on ", "imagefs cache-node")?;
    let url = line
        .trim_start_matches("cache node listening on ")
        .split_whitespace()
        .next()
        .ok_or("no URL in the cache node's first line")?
        .to_string();
    let tier = |http2| {
        AzTier::new(AzConfig {
            http2,
            ..AzConfig::with_nodes([url.clone()])
        })
        .map_err(|e| e.to_string())
    };
    let (h1, h2) = (tier(false)?, tier(true)?);
    let node_cold = time_gets(&h1, ids, "cache node (cold)")?;
    let (mut warm_h1, mut warm_h2) = (Vec::new(), Vec::new());
    for _ in 0..WARM_ROUNDS {
        warm_h1.extend(time_gets(&h1, ids, "cache node (warm, HTTP/1.1)")?);
        warm_h2.extend(time_gets(&h2, ids, "cache node (warm, h2c)")?);
    }
    drop(node);

    let plain_reused = plain_http(object_bytes, ids.len(), true)?;
    let plain_fresh = plain_http(object_bytes, ids.len(), false)?;

    let mut measured = [
        (
            "plain HTTP/1.1 GET, kept-alive connection (axum + reqwest)",
            plain_reused,
        ),
        ("plain HTTP/1.1 GET, new connection each", plain_fresh),
        ("shared local (RocksDB)", shared),
        ("cache node, loopback, warm, HTTP/1.1", warm_h1),
        ("cache node, loopback, warm, h2c", warm_h2),
        ("cache node, loopback, cold (via Garage)", node_cold),
        ("Garage (S3, loopback)", garage),
    ];
    for (_, lat) in &mut measured {
        lat.sort_by(f64::total_cmp);
    }
    let base = quantile(&measured[0].1, 0.5);
    let report = LatencyReport {
        chunks: ids.len(),
        object_bytes,
        rows: measured
            .iter()
            .map(|(name, lat)| LatencyRow {
                tier: (*name).to_string(),
                gets: lat.len(),
                p50_ms: quantile(lat, 0.5) * 1e3,
                p99_ms: quantile(lat, 0.99) * 1e3,
                p50_vs_plain_http: quantile(lat, 0.5) / base,
            })
            .collect(),
    };
    println!("{}", report.table());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}
