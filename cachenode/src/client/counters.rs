//! Counters of the AZ client tier and their snapshot.

use telemetry::counter::Counter;

use telemetry::prometheus::{Kind, Text};

/// Live counters of one node.
#[derive(Debug, Default)]
pub(super) struct NodeCounters {
    pub(super) requests: Counter,
    pub(super) errors: Counter,
    pub(super) corrupt: Counter,
}

/// Live counters of the tier.
#[derive(Debug)]
pub(super) struct AzCounters {
    pub(super) calls: Counter,
    pub(super) requests: Counter,
    pub(super) hedges_sent: Counter,
    pub(super) hedge_wins: Counter,
    pub(super) failovers: Counter,
    pub(super) unavailable: Counter,
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
            unavailable: Counter::new(),
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
            unavailable: self.unavailable.get(),
            nodes: urls
                .iter()
                .zip(&self.nodes)
                .map(|(url, c)| NodeSnapshot {
                    url: url.clone(),
                    requests: c.requests.get(),
                    errors: c.errors.get(),
                    corrupt: c.corrupt.get(),
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
    /// Of those, objects whose bytes did not hash to their id.
    pub corrupt: u64,
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
    /// Calls that no node answered.
    pub unavailable: u64,
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
            ("unavailable", "Calls no node answered", self.unavailable),
        ];
        for (name, help, value) in totals {
            let name = format!("imagefs_az_{name}_total");
            text.family(&name, Kind::Counter, &format!("{help}."))
                .sample(&[], value);
        }
        type Field = fn(&NodeSnapshot) -> u64;
        let per_node: [(&str, &str, Field); 3] = [
            ("requests", "HTTP requests sent to the node", |n| n.requests),
            ("errors", "Requests to the node that failed", |n| n.errors),
            (
                "corrupt",
                "Objects from the node that failed their id check",
                |n| n.corrupt,
            ),
        ];
        for (name, help, field) in per_node {
            let name = format!("imagefs_az_node_{name}_total");
            let mut family = text.family(&name, Kind::Counter, &format!("{help}."));
            for node in &self.nodes {
                family.sample(&[("node", &node.url)], field(node));
            }
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
