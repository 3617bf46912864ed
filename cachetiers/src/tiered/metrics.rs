//! Per-tier counters and latency histograms, and their Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use telemetry::prometheus::{Kind, Text};

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
    /// Chunks whose origin copy failed verification and was quarantined
    /// (each id counted once; the origin's object is never deleted).
    pub quarantined: u64,
}

impl TieredSnapshot {
    /// The snapshot in the Prometheus text exposition format
    /// (`imagefs_tier_hits_total{tier="…"}` and so on).
    pub fn to_prometheus(&self) -> String {
        let mut text = Text::new();
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
            let name = format!("imagefs_tier_{name}_total");
            let mut family = text.family(&name, Kind::Counter, &format!("{help}."));
            for t in &self.tiers {
                family.sample(&[("tier", &t.tier)], field(t));
            }
        }
        let mut latency = text.family(
            "imagefs_tier_get_seconds",
            Kind::Histogram,
            "Latency of gets from the tier.",
        );
        for t in &self.tiers {
            latency.histogram(
                &[("tier", &t.tier)],
                &LATENCY_BUCKETS,
                &t.latency_buckets,
                t.latency_sum_seconds,
            );
        }
        text.family(
            "imagefs_tiered_shared_fetches_total",
            Kind::Counter,
            "Gets that shared another's fetch.",
        )
        .sample(&[], self.shared_fetches);
        text.family(
            "imagefs_tiered_unavailable_total",
            Kind::Counter,
            "Gets no tier could serve.",
        )
        .sample(&[], self.unavailable);
        text.family(
            "imagefs_tiered_quarantined_total",
            Kind::Counter,
            "Chunks whose origin copy failed verification, quarantined.",
        )
        .sample(&[], self.quarantined);
        text.finish()
    }
}
