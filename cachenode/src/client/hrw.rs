//! Rendezvous (highest random weight) hashing: which node owns a chunk.
//!
//! Every (node, chunk) pair gets a pseudo-random score; the chunk's nodes
//! in preference order are the nodes sorted by score, highest first. The
//! score depends only on the node's URL and the chunk id, so:
//!
//! - every instance computes the same order, without coordination;
//! - the order does not depend on how the node list is ordered;
//! - removing a node moves only the chunks it owned (for every other
//!   chunk the winner's score is unchanged and still the highest), and
//!   adding one takes over only the chunks it now wins.

use manifest::ChunkId;
use sha2::{Digest, Sha256};

/// The score of `node` for `id`: the first 8 bytes of
/// SHA-256(len(node) ‖ node ‖ id), big-endian.
///
/// The length prefix keeps (node, id) pairs from colliding by
/// concatenation; SHA-256 spreads scores evenly, which is what gives each
/// node an even share of the chunks.
pub fn score(node: &str, id: &ChunkId) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update((node.len() as u64).to_be_bytes());
    hasher.update(node.as_bytes());
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Indices into `nodes` in preference order for `id`: the owner first.
///
/// Ties (astronomically unlikely) are broken by the node's URL, so the
/// order never depends on the list's order.
pub fn preference_order<S: AsRef<str>>(id: &ChunkId, nodes: &[S]) -> Vec<usize> {
    let mut scored: Vec<(u64, &str, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| (score(node.as_ref(), id), node.as_ref(), i))
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, _, i)| i).collect()
}

/// The node that owns `id` (first in [`preference_order`]), or `None` for
/// an empty list.
pub fn owner<'a, S: AsRef<str>>(id: &ChunkId, nodes: &'a [S]) -> Option<&'a str> {
    preference_order(id, nodes)
        .first()
        .map(|&i| nodes[i].as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<ChunkId> {
        (0..n)
            .map(|i| ChunkId::of_object(&i.to_le_bytes()))
            .collect()
    }

    const NODES: [&str; 3] = [
        "http://10.0.0.1:8420",
        "http://10.0.0.2:8420",
        "http://10.0.0.3:8420",
    ];

    #[test]
    fn order_is_a_permutation_and_stable() {
        for id in ids(100) {
            let order = preference_order(&id, &NODES);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2]);
            assert_eq!(preference_order(&id, &NODES), order);
        }
    }

    #[test]
    fn order_does_not_depend_on_list_order() {
        let reversed: Vec<&str> = NODES.iter().rev().copied().collect();
        for id in ids(200) {
            let a: Vec<&str> = preference_order(&id, &NODES)
                .into_iter()
                .map(|i| NODES[i])
                .collect();
            let b: Vec<&str> = preference_order(&id, &reversed)
                .into_iter()
                .map(|i| reversed[i])
                .collect();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn distribution_is_roughly_even() {
        let mut owned = [0usize; 3];
        let all = ids(3000);
        for id in &all {
            owned[preference_order(id, &NODES)[0]] += 1;
        }
        for (node, count) in NODES.iter().zip(owned) {
            assert!(
                count * 5 > all.len(),
                "{node} owns {count} of {} chunks (want > 20 %): {owned:?}",
                all.len()
            );
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_chunks() {
        let all = ids(3000);
        let fewer = [NODES[0], NODES[2]];
        let mut moved = 0;
        for id in &all {
            let before = owner(id, &NODES).unwrap();
            let after = owner(id, &fewer).unwrap();
            if before == NODES[1] {
                moved += 1;
                // Its chunks go to their second choice.
                let second = NODES[preference_order(id, &NODES)[1]];
                assert_eq!(after, second, "chunk {id}");
            } else {
                assert_eq!(after, before, "chunk {id} moved off a node that stayed");
            }
        }
        assert!(moved > 0, "the removed node owned nothing");
    }

    #[test]
    fn adding_a_node_takes_chunks_only_for_itself() {
        let all = ids(3000);
        let more = [NODES[0], NODES[1], NODES[2], "http://10.0.0.4:8420"];
        let mut taken = 0;
        for id in &all {
            let before = owner(id, &NODES).unwrap();
            let after = owner(id, &more).unwrap();
            if after != before {
                assert_eq!(after, more[3], "chunk {id} moved between old nodes");
                taken += 1;
            }
        }
        // About a quarter; more than an eighth is a loose, safe bound.
        assert!(taken * 8 > all.len(), "new node took only {taken}");
    }

    #[test]
    fn empty_and_single() {
        let id = ChunkId::of_object(b"x");
        let none: [&str; 0] = [];
        assert!(preference_order(&id, &none).is_empty());
        assert_eq!(owner(&id, &none), None);
        assert_eq!(owner(&id, &["http://a"]), Some("http://a"));
    }
}
