//! Per-tier counters and latency histograms, and their Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets; a last,
/// implicit `+Inf` bucket takes the rest.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Live counters of one tier.
#[derive(Debug, Default)]
pub(super) struct TierCounters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) verification_failures: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) fills: AtomicU64,
    pub(super) fill_failures: AtomicU64,
    /// Non-cumulative counts per bucket, `+Inf` last.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_micros: AtomicU64,
    pub(super) last_error: Mutex<Option<String>>,
}

impl TierCounters {
    pub(super) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(super) fn note_error(&self, message: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message);
    }

    pub(super) fn snapshot(&self, name: &str) -> TierSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TierSnapshot {
            tier: name.to_string(),
            hits: get(&self.hits),
            misses: get(&self.misses),
            bytes: get(&self.bytes),
            verification_failures: get(&self.verification_failures),
            errors: get(&self.errors),
            fills: get(&self.fills),
            fill_failures: get(&self.fill_failures),
            latency_buckets: self.buckets.iter().map(get).collect(),
            latency_sum_seconds: get(&self.latency_micros) as f64 / 1e6,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

pub use manifest::report::TierSnapshot;

/// The counters of a whole tiered store at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TieredSnapshot {
    /// One entry per tier, fastest first.
    pub tiers: Vec<TierSnapshot>,
    /// Gets that shared another thread's fetch (single-flight).
    pub shared_fetches: u64,
    /// Gets that no tier could serve.
    pub unavailable: u64,
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl TieredSnapshot {
    /// The snapshot in the Prometheus text exposition format
    /// (`imagefs_tier_hits_total{tier="…"}` and so on).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        type Field = fn(&TierSnapshot) -> u64;
        let counters: [(&str, &str, Field); 7] = [
            ("hits", "Gets served by the tier", |t| t.hits),
            ("misses", "Gets the tier did not have", |t| t.misses),
            ("bytes", "Bytes served by the tier", |t| t.bytes),
            (
                "verification_failures",
                "Objects that failed their id check",
                |t| t.verification_failures,
            ),
            ("errors", "Gets that failed", |t| t.errors),
            (
                "fills",
                "Objects written into the tier after a lower hit",
                |t| t.fills,
            ),
            ("fill_failures", "Fills that failed", |t| t.fill_failures),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP imagefs_tier_{name}_total {help}.");
            let _ = writeln!(out, "# TYPE imagefs_tier_{name}_total counter");
            for t in &self.tiers {
                let _ = writeln!(
                    out,
                    "imagefs_tier_{name}_total{{tier=\"{}\"}} {}",
                    label(&t.tier),
                    field(t)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP imagefs_tier_get_seconds Latency of gets from the tier."
        );
        let _ = writeln!(out, "# TYPE imagefs_tier_get_seconds histogram");
        for t in &self.tiers {
            let tier = label(&t.tier);
            let mut cumulative = 0;
            for (i, count) in t.latency_buckets.iter().enumerate() {
                cumulative += count;
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "imagefs_tier_get_seconds_bucket{{tier=\"{tier}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "imagefs_tier_get_seconds_sum{{tier=\"{tier}\"}} {}",
                t.latency_sum_seconds
            );
            let _ = writeln!(
                out,
                "imagefs_tier_get_seconds_count{{tier=\"{tier}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP imagefs_tiered_shared_fetches_total Gets that shared another's fetch."
        );
        let _ = writeln!(out, "# TYPE imagefs_tiered_shared_fetches_total counter");
        let _ = writeln!(
            out,
            "imagefs_tiered_shared_fetches_total {}",
            self.shared_fetches
        );
        let _ = writeln!(
            out,
            "# HELP imagefs_tiered_unavailable_total Gets no tier could serve."
        );
        let _ = writeln!(out, "# TYPE imagefs_tiered_unavailable_total counter");
        let _ = writeln!(out, "imagefs_tiered_unavailable_total {}", self.unavailable);
        out
    }
}
