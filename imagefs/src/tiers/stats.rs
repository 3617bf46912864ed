//! Tier statistics as a report ([`tiers_report`]) and as the human table
//! of `--stats` ([`render`]), made from the same values; latency
//! percentiles are upper bounds from the histogram buckets.

use std::fmt::Write;

use cachetiers::TieredSnapshot;
use cachetiers::tiered::LATENCY_BUCKETS;
use manifest::report::{LazyMetrics, PrefetchStats, TierSnapshot, TiersReport};
use telemetry::histogram::upper_bound;

/// The report form of a tiered store's snapshot.
pub fn tiers_report(snapshot: TieredSnapshot) -> TiersReport {
    TiersReport {
        tiers: snapshot.tiers,
        shared_fetches: snapshot.shared_fetches,
        unavailable: snapshot.unavailable,
        quarantined: snapshot.quarantined,
        latency_bounds_seconds: LATENCY_BUCKETS.to_vec(),
    }
}

/// The upper bound, in seconds, of the bucket holding quantile `q` (0..1)
/// of a tier's gets; `None` when it had none, infinity past the last
/// bound.
pub fn quantile_upper_bound(report: &TiersReport, t: &TierSnapshot, q: f64) -> Option<f64> {
    upper_bound(&t.latency_buckets, &report.latency_bounds_seconds, q)
}

fn ms(report: &TiersReport, bound: Option<f64>) -> String {
    match bound {
        None => "-".into(),
        Some(s) if s.is_infinite() => {
            let last = report.latency_bounds_seconds.last().copied().unwrap_or(0.0);
            format!(">{}ms", last * 1e3)
        }
        Some(s) => format!("<={}ms", s * 1e3),
    }
}

/// A table of every tier's counters, then the reader's own.
pub fn render(tiers: &TiersReport, lazy: &LazyMetrics) -> String {
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
            ms(tiers, quantile_upper_bound(tiers, t, 0.5)),
            ms(tiers, quantile_upper_bound(tiers, t, 0.99)),
        );
        if let Some(e) = &t.last_error {
            let _ = writeln!(out, "  last error in {}: {e}", t.tier);
        }
    }
    if tiers.quarantined > 0 {
        let _ = writeln!(
            out,
            "quarantined: {} chunk(s) corrupt in the origin (not deleted; re-convert to repair)",
            tiers.quarantined
        );
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

/// One line of what prefetch did, for the `--stats` table.
pub fn render_prefetch(p: &PrefetchStats) -> String {
    format!(
        "prefetch: {} queued, {} prefetched ({} used, {} unused so far), {} skipped, {} failed; {} demand misses waited on a prefetch{}\n",
        p.queued,
        p.prefetched,
        p.used,
        p.unused,
        p.skipped,
        p.errors,
        p.demand_waited,
        if p.stopped { "; stopped early" } else { "" },
    )
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
    fn the_table_shows_bucket_bounds() {
        let mut b = vec![0; LATENCY_BUCKETS.len() + 1];
        b[0] = 98; // <= 0.1 ms
        b[5] = 1; // <= 5 ms
        b[LATENCY_BUCKETS.len()] = 1; // +Inf
        let report = tiers_report(TieredSnapshot {
            tiers: vec![tier(b), tier(vec![0; LATENCY_BUCKETS.len() + 1])],
            shared_fetches: 0,
            unavailable: 0,
            quarantined: 2,
        });
        let t = &report.tiers[0];
        assert_eq!(
            quantile_upper_bound(&report, t, 0.5),
            Some(LATENCY_BUCKETS[0])
        );
        assert_eq!(
            quantile_upper_bound(&report, t, 0.99),
            Some(LATENCY_BUCKETS[5])
        );
        assert_eq!(quantile_upper_bound(&report, t, 1.0), Some(f64::INFINITY));
        assert_eq!(quantile_upper_bound(&report, &report.tiers[1], 0.5), None);
        let table = render(&report, &LazyMetrics::default());
        assert!(table.contains("<=0.1ms"), "{table}");
        assert!(table.contains("quarantined: 2 chunk(s)"), "{table}");
        assert!(table.contains("<=5ms"), "{table}");
        assert!(table.contains(" -"), "{table}");
    }

    #[test]
    fn the_prefetch_line_shows_used_and_unused() {
        let line = render_prefetch(&PrefetchStats {
            queued: 64,
            prefetched: 60,
            used: 50,
            unused: 10,
            skipped: 4,
            demand_waited: 3,
            ..PrefetchStats::default()
        });
        assert!(line.contains("60 prefetched (50 used, 10 unused"), "{line}");
        assert!(line.contains("3 demand misses waited"), "{line}");
        assert!(!line.contains("stopped"), "{line}");
    }
}
