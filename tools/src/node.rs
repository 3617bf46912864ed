//! `imagefs cache-node`: an AZ cache node over a capacity-bounded RocksDB
//! store, filled from the origin.

use std::error::Error;
use std::io::{Write, stdout};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cachenode::server::{NodeConfig, start};
use imagefs::tiers::stats::tiers_report;
use imagefs::tiers::{TierConfig, parse_size};
use manifest::report::CacheNodeStats;

use crate::report::write_json;
use crate::signals::Signals;

/// Arguments of `imagefs cache-node` (flags override the [node] and
/// [origin] sections of `--config`).
#[derive(Debug, clap::Args)]
pub struct CacheNodeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The node's RocksDB directory; kept across restarts.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Most object bytes the node keeps (least recently used go first).
    #[arg(long, value_parser = parse_size)]
    capacity: Option<u64>,
    /// The origin: a directory, file:///DIR or s3://BUCKET/PREFIX.
    #[arg(long)]
    origin: Option<String>,
    /// Chunk requests worked on at once; more get 503 (default 512).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Origin fetches at once (default 64).
    #[arg(long)]
    max_origin_fetches: Option<usize>,
    /// Requests per second per client IP (IPv6: per /64); more get 429.
    /// 0 turns it off (default 5000).
    #[arg(long)]
    client_rate: Option<f64>,
    /// Bytes of erasure-coded stripes kept in memory (default 1G).
    #[arg(long, value_parser = parse_size)]
    stripe_capacity: Option<u64>,
    /// The file holding the fleet token that stripe writes (PUT, DELETE)
    /// must carry; without it, IMAGEFS_FLEET_TOKEN if set; without either
    /// the node refuses stripe writes. The token is never printed.
    #[arg(long, value_name = "FILE")]
    fleet_token_file: Option<PathBuf>,
    /// Tier configuration (TOML) with [node], [node.limits] and [origin]
    /// sections.
    #[arg(long, env = "IMAGEFS_CONFIG")]
    config: Option<PathBuf>,
    /// When stopped, write the node's tier counters to FILE as JSON
    /// (`manifest::report::CacheNodeStats`).
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
}

impl CacheNodeArgs {
    /// Runs the node until SIGINT or SIGTERM.
    pub fn run(self, signals: &Signals) -> Result<(), Box<dyn Error>> {
        let file = match &self.config {
            Some(path) => TierConfig::load(path)?,
            None => TierConfig::default(),
        };
        let section = file.node.clone();
        let listen = match (
            self.listen,
            section.as_ref().and_then(|n| n.listen.as_ref()),
        ) {
            (Some(a), _) => a,
            (None, Some(text)) => text
                .parse()
                .map_err(|e| format!("[node] listen = {text:?}: {e}"))?,
            (None, None) => return Err("give --listen (or [node] listen)".into()),
        };
        let data = self
            .data
            .or_else(|| section.as_ref().and_then(|n| n.data.clone()))
            .ok_or("give --data (or [node] data)")?;
        let capacity = self
            .capacity
            .or_else(|| section.as_ref().and_then(|n| n.capacity.map(|c| c.0)))
            .ok_or("give --capacity (or [node] capacity)")?;
        let origin_url = self
            .origin
            .or_else(|| file.origin.as_ref().map(|o| o.url.clone()))
            .ok_or("give --origin (or [origin] url)")?;

        let local = Arc::new(cachetiers::RocksStore::open(&data, capacity)?);
        let limits = file
            .origin
            .as_ref()
            .map(imagefs::tiers::config::OriginConfig::limits)
            .unwrap_or_default();
        let origin = cachetiers::origin::open_origin_with(&origin_url, false, &limits)?;
        let mut node_limits = section
            .as_ref()
            .and_then(|n| n.limits.clone())
            .unwrap_or_default();
        if let Some(n) = self.max_in_flight {
            node_limits.max_in_flight = n;
        }
        if let Some(n) = self.max_origin_fetches {
            node_limits.max_origin_fetches = n;
        }
        if let Some(rate) = self.client_rate {
            node_limits.client_rate = rate;
        }
        let armed = signals.arm();
        let node = start(
            &NodeConfig {
                listen,
                limits: node_limits,
                stripe_capacity: self
                    .stripe_capacity
                    .or_else(|| {
                        section
                            .as_ref()
                            .and_then(|n| n.stripe_capacity.map(|c| c.0))
                    })
                    .unwrap_or(cachenode::server::DEFAULT_STRIPE_CAPACITY),
                fleet_token_file: self
                    .fleet_token_file
                    .or_else(|| section.as_ref().and_then(|n| n.fleet_token_file.clone())),
            },
            local,
            origin,
        )?;
        let stop = node.stop_handle();
        armed.stop_with(move || stop.stop());
        // Tests and scripts read this line for the real port.
        writeln!(
            stdout(),
            "cache node listening on {} (data {}, capacity {capacity} bytes, origin {origin_url})",
            node.url(),
            data.display()
        )?;
        stdout().flush()?;
        let url = node.url();
        let store = std::sync::Arc::clone(node.node());
        node.wait()?;
        drop(armed);
        if let Some(path) = &self.stats_json {
            let stats = CacheNodeStats {
                url,
                tiers: tiers_report(store.store().metrics()),
            };
            write_json(path, &stats)?;
        }
        Ok(())
    }
}
