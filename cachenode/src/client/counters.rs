//! Counters of the AZ client tier and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use telemetry::counter::Counter;

use telemetry::prometheus::{Kind, Text};

/// Live counters of one node.
#[derive(Debug, Default)]
pub(super) struct NodeCounters {
    pub(super) requests: Counter,
    pub(super) errors: Counter,
    pub(super) corrupt: Counter,
    /// Erasure mode: requests dropped because 4 other stripes came first.
    pub(super) dropped_slow: Counter,
    /// Recent latency of the node's answers (exponentially weighted, µs).
    pub(super) recent_us: AtomicU64,
}

impl NodeCounters {
    /// Folds one answer's latency into the recent latency (weight 1/8).
    pub(super) fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // Racing updates lose one sample at worst; it is a health figure.
        let old = self.recent_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.recent_us.store(new, Ordering::Relaxed);
    }
}

/// Live counters of the tier.
#[derive(Debug)]
pub(super) struct AzCounters {
    pub(super) calls: Counter,
    pub(super) requests: Counter,
    pub(super) hedges_sent: Counter,
    pub(super) hedge_wins: Counter,
    pub(super) failovers: Counter,
    pub(super) slow_passed_over: Counter,
    pub(super) unavailable: Counter,
    pub(super) rebuilt_with_parity: Counter,
    pub(super) bad_stripes: Counter,
    pub(super) stripes_repaired: Counter,
    pub(super) fills_started: Counter,
    pub(super) fills_skipped: Counter,
    pub(super) stripe_writes_failed: Counter,
    pub(super) nodes: Vec<NodeCounters>,
}

impl AzCounters {
    pub(super) fn new(nodes: usize) -> Self {
        Self {
            calls: Counter::new(),
            requests: Counter::new(),
            hedges_sent: Counter::new(),
            hedge_wins: Counter::new(),
            failovers: Counter::new(),
            slow_passed_over: Counter::new(),
            unavailable: Counter::new(),
            rebuilt_with_parity: Counter::new(),
            bad_stripes: Counter::new(),
            stripes_repaired: Counter::new(),
            fills_started: Counter::new(),
            fills_skipped: Counter::new(),
            stripe_writes_failed: Counter::new(),
            nodes: (0..nodes).map(|_| NodeCounters::default()).collect(),
        }
    }

    pub(super) fn snapshot(&self, urls: &[String]) -> AzSnapshot {
        AzSnapshot {
            calls: self.calls.get(),
            requests: self.requests.get(),
            hedges_sent: self.hedges_sent.get(),
            hedge_wins: self.hedge_wins.get(),
            failovers: self.failovers.get(),
            slow_passed_over: self.slow_passed_over.get(),
            unavailable: self.unavailable.get(),
            rebuilt_with_parity: self.rebuilt_with_parity.get(),
            bad_stripes: self.bad_stripes.get(),
            stripes_repaired: self.stripes_repaired.get(),
            fills_started: self.fills_started.get(),
            fills_skipped: self.fills_skipped.get(),
            stripe_writes_failed: self.stripe_writes_failed.get(),
            nodes: urls
                .iter()
                .zip(&self.nodes)
                .map(|(url, c)| NodeSnapshot {
                    url: url.clone(),
                    requests: c.requests.get(),
                    errors: c.errors.get(),
                    corrupt: c.corrupt.get(),
                    dropped_slow: c.dropped_slow.get(),
                    recent_latency_us: c.recent_us.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// One node's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// The node's base URL.
    pub url: String,
    /// Requests sent to it (gets, hedges and HEADs).
    pub requests: u64,
    /// Requests that failed: connect errors, statuses other than 200 and
    /// 404, timeouts, oversized or corrupt objects.
    pub errors: u64,
    /// Of those, objects whose bytes did not hash to their id (erasure
    /// mode: stripes found bad).
    pub corrupt: u64,
    /// Erasure mode: requests to it dropped unanswered because 4 other
    /// stripes came first (how often it was the slowest).
    pub dropped_slow: u64,
    /// Its recent answer latency in µs (exponentially weighted; 0 before
    /// the first answer).
    pub recent_latency_us: u64,
}

/// The AZ tier's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzSnapshot {
    /// Chunk-store calls that went to the nodes (get and contains).
    pub calls: u64,
    /// HTTP requests sent, all nodes together.
    pub requests: u64,
    /// Requests sent to a further node because the one in flight was
    /// slower than `hedge_after`.
    pub hedges_sent: u64,
    /// Calls whose answer came from a hedge.
    pub hedge_wins: u64,
    /// Requests sent to a further node because one failed.
    pub failovers: u64,
    /// Replicated mode: calls that asked a slow node (slower than the
    /// hedge delay in a row, see `health`) after a healthy one instead of
    /// first.
    pub slow_passed_over: u64,
    /// Calls that no node answered.
    pub unavailable: u64,
    /// Erasure mode: objects rebuilt with the parity stripe (a data
    /// stripe was missing, slow or bad).
    pub rebuilt_with_parity: u64,
    /// Erasure mode: stripes found bad (wrong header, or the one whose
    /// exclusion made the object verify).
    pub bad_stripes: u64,
    /// Erasure mode: stripes rewritten on a node that had a bad one or
    /// none (after a verified read).
    pub stripes_repaired: u64,
    /// Erasure mode: objects whose 5 stripes were written behind a miss.
    pub fills_started: u64,
    /// Erasure mode: fills and repairs skipped because too many were in
    /// flight.
    pub fills_skipped: u64,
    /// Erasure mode: stripe writes a node did not accept.
    pub stripe_writes_failed: u64,
    /// Per node, in configuration order.
    pub nodes: Vec<NodeSnapshot>,
}

impl AzSnapshot {
    /// The snapshot in the Prometheus text format
    /// (`imagefs_az_requests_total`, `imagefs_az_node_errors_total{node="…"}`, …).
    pub fn to_prometheus(&self) -> String {
        let mut text = Text::new();
        let totals = [
            (
                "calls",
                "Chunk-store calls sent to the AZ nodes",
                self.calls,
            ),
            ("requests", "HTTP requests sent to AZ nodes", self.requests),
            ("hedges_sent", "Hedged requests sent", self.hedges_sent),
            ("hedge_wins", "Calls answered by a hedge", self.hedge_wins),
            (
                "failovers",
                "Requests sent after a node failed",
                self.failovers,
            ),
            (
                "slow_passed_over",
                "Calls that asked a slow node after a healthy one",
                self.slow_passed_over,
            ),
            ("unavailable", "Calls no node answered", self.unavailable),
            (
                "rebuilt_with_parity",
                "Objects rebuilt with the parity stripe",
                self.rebuilt_with_parity,
            ),
            ("bad_stripes", "Stripes found bad", self.bad_stripes),
            (
                "stripes_repaired",
                "Stripes rewritten after a verified read",
                self.stripes_repaired,
            ),
            (
                "fills_started",
                "Objects written behind a miss",
                self.fills_started,
            ),
            (
                "fills_skipped",
                "Fills and repairs skipped (too many in flight)",
                self.fills_skipped,
            ),
            (
                "stripe_writes_failed",
                "Stripe writes a node did not accept",
                self.stripe_writes_failed,
            ),
        ];
        for (name, help, value) in totals {
            let name = format!("imagefs_az_{name}_total");
            text.family(&name, Kind::Counter, &format!("{help}."))
                .sample(&[], value);
        }
        type Field = fn(&NodeSnapshot) -> u64;
        let per_node: [(&str, &str, Field); 4] = [
            ("requests", "HTTP requests sent to the node", |n| n.requests),
            ("errors", "Requests to the node that failed", |n| n.errors),
            (
                "corrupt",
                "Objects from the node that failed their id check",
                |n| n.corrupt,
            ),
            (
                "dropped_slow",
                "Requests to the node dropped because 4 stripes came first",
                |n| n.dropped_slow,
            ),
        ];
        for (name, help, field) in per_node {
            let name = format!("imagefs_az_node_{name}_total");
            let mut family = text.family(&name, Kind::Counter, &format!("{help}."));
            for node in &self.nodes {
                family.sample(&[("node", &node.url)], field(node));
            }
        }
        let mut family = text.family(
            "imagefs_az_node_recent_latency_microseconds",
            Kind::Gauge,
            "Recent answer latency of the node (exponentially weighted).",
        );
        for node in &self.nodes {
            family.sample(&[("node", &node.url)], node.recent_latency_us);
        }
        text.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_prometheus_text() {
        let counters = AzCounters::new(2);
        counters.calls.add(3);
        counters.hedges_sent.inc();
        counters.nodes[1].errors.add(2);
        counters.nodes[1].corrupt.inc();
        let urls = ["http://a:1".to_string(), "http://b:2".to_string()];
        let snapshot = counters.snapshot(&urls);
        assert_eq!(snapshot.calls, 3);
        assert_eq!(snapshot.nodes[1].url, "http://b:2");
        assert_eq!(
            (snapshot.nodes[1].errors, snapshot.nodes[1].corrupt),
            (2, 1)
        );
        let text = snapshot.to_prometheus();
        for line in [
            "imagefs_az_calls_total 3",
            "imagefs_az_hedges_sent_total 1",
            "imagefs_az_hedge_wins_total 0",
            "imagefs_az_node_errors_total{node=\"http://a:1\"} 0",
            "imagefs_az_node_errors_total{node=\"http://b:2\"} 2",
            "imagefs_az_node_corrupt_total{node=\"http://b:2\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }
}
