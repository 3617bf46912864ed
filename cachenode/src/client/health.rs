//! Node health from recent latency, for the replicated mode: a node whose
//! recent requests were slower than the hedge delay (or never answered)
//! keeps its chunks but is no longer asked first, so it stops costing the
//! hedge delay on every chunk it owns.
//!
//! A node is *slow* after [`STRIKES`] requests in a row that were slower
//! than `hedge_after`, failed, or were dropped unanswered. One answer
//! faster than `hedge_after` clears it. A slow node is still asked first
//! once per [`PROBE_EVERY`] (a probe), so it is found again when it
//! recovers; in between it moves behind the next healthy node, which keeps
//! it in line for the hedge (it still has the chunk) rather than the last
//! resort.
//!
//! The erasure-coded mode needs none of this: it asks all five nodes and
//! uses the first four answers, so a slow node never delays a read.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive slow or failed requests that make a node slow.
pub(super) const STRIKES: u32 = 2;

/// How often a slow node is still asked first.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The health of every node of one tier.
#[derive(Debug)]
pub(super) struct Health {
    epoch: Instant,
    probe_every: Duration,
    nodes: Vec<NodeHealth>,
}

#[derive(Debug, Default)]
struct NodeHealth {
    /// Slow or failed requests in a row.
    strikes: AtomicU32,
    /// When it was last asked first while slow, in ms since `epoch` + 1
    /// (0: never).
    last_probe_ms: AtomicU64,
}

impl Health {
    /// Health for `nodes` nodes, slow ones probed every `probe_every`
    /// ([`PROBE_EVERY`] outside tests).
    pub(super) fn new(nodes: usize, probe_every: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            probe_every,
            nodes: (0..nodes).map(|_| NodeHealth::default()).collect(),
        }
    }

    /// Whether node `k` is slow now.
    pub(super) fn is_slow(&self, k: usize) -> bool {
        self.nodes[k].strikes.load(Ordering::Relaxed) >= STRIKES
    }

    /// An answer from node `k` after `took`.
    pub(super) fn answered(&self, k: usize, took: Duration, hedge_after: Duration) {
        if took < hedge_after {
            self.nodes[k].strikes.store(0, Ordering::Relaxed);
        } else {
            self.strike(k);
        }
    }

    /// A request to node `k` that failed, timed out, or was dropped after
    /// `hedge_after` because another node answered first. (One dropped
    /// sooner says nothing about the node.)
    pub(super) fn strike(&self, k: usize) {
        // Saturating: a node down for days does not wrap around.
        let _ = self.nodes[k]
            .strikes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(1))
            });
    }

    /// Rearranges a preference order so that each slow node comes right
    /// after the next healthy one, unless it is due a probe (then it keeps
    /// its place, and the probe is recorded). Returns how many slow nodes
    /// were moved back.
    pub(super) fn arrange(&self, order: &mut Vec<usize>) -> usize {
        if !order.iter().any(|&k| self.is_slow(k)) {
            return 0;
        }
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let probe_ms = u64::try_from(self.probe_every.as_millis()).unwrap_or(u64::MAX);
        let mut arranged = Vec::with_capacity(order.len());
        let mut waiting = Vec::new();
        let mut moved = 0;
        for &k in order.iter() {
            if self.is_slow(k) && !self.take_probe(k, now_ms, probe_ms) {
                waiting.push(k);
                moved += 1;
                continue;
            }
            arranged.push(k);
            arranged.append(&mut waiting);
        }
        arranged.append(&mut waiting);
        *order = arranged;
        moved
    }

    /// Whether slow node `k` is due a probe now; if so, records it.
    fn take_probe(&self, k: usize, now_ms: u64, every_ms: u64) -> bool {
        let last = &self.nodes[k].last_probe_ms;
        let seen = last.load(Ordering::Relaxed);
        if seen != 0 && now_ms.saturating_sub(seen) < every_ms {
            return false;
        }
        // One caller wins the probe; the others go on without it.
        last.compare_exchange(seen, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEDGE: Duration = Duration::from_millis(50);
    /// Longer than any test: the first probe of a slow node is the only one.
    const NEVER: Duration = Duration::from_secs(3600);

    #[test]
    fn strikes_make_a_node_slow_and_a_fast_answer_clears_it() {
        let h = Health::new(3, NEVER);
        h.answered(1, Duration::from_millis(80), HEDGE);
        assert!(!h.is_slow(1), "one slow answer is not enough");
        h.strike(1);
        assert!(h.is_slow(1));
        h.answered(1, Duration::from_millis(2), HEDGE);
        assert!(!h.is_slow(1));
    }

    #[test]
    fn a_slow_node_moves_behind_the_next_healthy_one_between_probes() {
        let h = Health::new(4, NEVER);
        let mut order = vec![2, 0, 3, 1];
        assert_eq!(h.arrange(&mut order), 0);
        assert_eq!(order, [2, 0, 3, 1]);
        h.strike(2);
        h.strike(2);
        // The first call after it turned slow probes it: order unchanged.
        let mut order = vec![2, 0, 3, 1];
        assert_eq!(h.arrange(&mut order), 0);
        assert_eq!(order, [2, 0, 3, 1]);
        // Until the next probe it comes second: still the hedge, never last.
        let mut order = vec![2, 0, 3, 1];
        assert_eq!(h.arrange(&mut order), 1);
        assert_eq!(order, [0, 2, 3, 1]);
        // Two slow nodes in a row both wait for the next healthy one.
        h.strike(0);
        h.strike(0);
        assert!(h.take_probe(0, 1, u64::MAX), "its first probe");
        let mut order = vec![2, 0, 3, 1];
        assert_eq!(h.arrange(&mut order), 2);
        assert_eq!(order, [3, 2, 0, 1]);
        // All slow: the order stays as it was.
        for k in [1, 3] {
            h.strike(k);
            h.strike(k);
            assert!(h.take_probe(k, 1, u64::MAX), "its first probe");
        }
        let mut order = vec![2, 0, 3, 1];
        h.arrange(&mut order);
        assert_eq!(order, [2, 0, 3, 1]);
    }

    #[test]
    fn a_slow_node_is_probed_again_after_the_probe_interval() {
        let h = Health::new(2, NEVER);
        h.strike(0);
        h.strike(0);
        assert!(h.take_probe(0, 10, 1000));
        assert!(!h.take_probe(0, 500, 1000));
        assert!(h.take_probe(0, 1011, 1000));
    }
}
