//! Human-readable tier statistics (`imagefs mount --stats`), with latency
//! percentiles estimated from the histogram buckets.

use std::fmt::Write;

use cachetiers::tiered::LATENCY_BUCKETS;
use cachetiers::{TierSnapshot, TieredSnapshot};

use crate::LazyMetrics;

/// The upper bound, in seconds, of the bucket holding quantile `q` (0..1)
/// of a tier's gets; `None` when it had none. The last bucket has no upper
/// bound and reports infinity.
pub fn quantile_upper_bound(t: &TierSnapshot, q: f64) -> Option<f64> {
    let total: u64 = t.latency_buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in t.latency_buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    Some(f64::INFINITY)
}

fn ms(bound: Option<f64>) -> String {
    match bound {
        None => "-".into(),
        Some(s) if s.is_infinite() => {
            format!(">{}ms", LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1e3)
        }
        Some(s) => format!("<={}ms", s * 1e3),
    }
}

/// A table of every tier's counters, then the reader's own.
pub fn render(tiers: &TieredSnapshot, lazy: &LazyMetrics) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>8} {:>8} {:>12} {:>8} {:>7} {:>7} {:>10} {:>10}",
        "tier", "hits", "misses", "bytes", "corrupt", "errors", "fills", "p50", "p99"
    );
    for t in &tiers.tiers {
        let _ = writeln!(
            out,
            "{:<14} {:>8} {:>8} {:>12} {:>8} {:>7} {:>7} {:>10} {:>10}",
            t.tier,
            t.hits,
            t.misses,
            t.bytes,
            t.verification_failures,
            t.errors,
            t.fills,
            ms(quantile_upper_bound(t, 0.5)),
            ms(quantile_upper_bound(t, 0.99)),
        );
        if let Some(e) = &t.last_error {
            let _ = writeln!(out, "  last error in {}: {e}", t.tier);
        }
    }
    let _ = writeln!(
        out,
        "reads: {} bytes returned; chunks from dedicated {}, memory {}, holes {}, fetched {} ({} bytes, {} by read-ahead, {} shared, {} failed)",
        lazy.bytes_read,
        lazy.dedicated_hits,
        lazy.memory_hits,
        lazy.hole_reads,
        lazy.store_fetches,
        lazy.store_bytes,
        lazy.readahead_fetches,
        lazy.shared_fetches,
        lazy.fetch_errors,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(buckets: Vec<u64>) -> TierSnapshot {
        TierSnapshot {
            tier: "t".into(),
            hits: 0,
            misses: 0,
            bytes: 0,
            verification_failures: 0,
            errors: 0,
            fills: 0,
            fill_failures: 0,
            latency_buckets: buckets,
            latency_sum_seconds: 0.0,
            last_error: None,
        }
    }

    #[test]
    fn quantiles_come_from_the_bucket_bounds() {
        let mut b = vec![0; LATENCY_BUCKETS.len() + 1];
        b[0] = 98; // <= 0.1 ms
        b[5] = 1; // <= 5 ms
        b[LATENCY_BUCKETS.len()] = 1; // +Inf
        let t = tier(b);
        assert_eq!(quantile_upper_bound(&t, 0.5), Some(LATENCY_BUCKETS[0]));
        assert_eq!(quantile_upper_bound(&t, 0.99), Some(LATENCY_BUCKETS[5]));
        assert_eq!(quantile_upper_bound(&t, 1.0), Some(f64::INFINITY));
        assert_eq!(quantile_upper_bound(&tier(vec![0; 15]), 0.5), None);
    }
}
