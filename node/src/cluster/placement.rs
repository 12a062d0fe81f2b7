//! Where each shard's replicas go: a consistent-hash ring over the members (the
//! `consistent_hash` crate the design names: virtual nodes on a SipHash-1-3 ring, candidates in
//! priority order, distinct nodes), and each shard's replicas are its first
//! [`REPLICAS`] candidates. Adding or removing a node moves only the replicas whose candidates
//! it enters or leaves (about 3·S/N of them), not a reshuffle.
//!
//! Every node computes the same placement from the same member list, so it needs no storage of
//! its own: the metadata group holds the members.

use consistent_hash::{DefaultHash, Node, StaticHashRing};
use veil_raft::NodeId;

/// Replicas per shard.
pub const REPLICAS: usize = 3;

/// Virtual nodes per member: enough for an even spread over a few dozen nodes.
const VNODES: usize = 64;

/// The replicas of every shard over `members` (at most [`REPLICAS`] each, fewer when there are
/// fewer members), by shard id, each list in priority order.
pub fn place(members: &[NodeId], shards: u32) -> Vec<Vec<NodeId>> {
    if members.is_empty() {
        return vec![Vec::new(); shards as usize];
    }
    let ring = StaticHashRing::new(
        DefaultHash,
        members.iter().map(|id| Node::new(*id).quantity(VNODES)),
    );
    (0..shards)
        .map(|shard| {
            ring.calc_candidates(&("veil-shard", shard))
                .take(REPLICAS)
                .map(|n| n.key)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_gets_three_distinct_members_and_a_new_node_moves_few() {
        let shards = 48;
        let three = place(&[1, 2, 3], shards);
        for replicas in &three {
            let mut r = replicas.clone();
            r.sort();
            assert_eq!(r, vec![1, 2, 3]);
        }
        assert_eq!(place(&[1], 4), vec![vec![1]; 4]);
        let twelve: Vec<NodeId> = (1..=12).collect();
        let before = place(&twelve, shards);
        let mut per_node = std::collections::BTreeMap::<NodeId, usize>::new();
        for replicas in &before {
            let mut r = replicas.clone();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), 3);
            for id in replicas {
                *per_node.entry(*id).or_default() += 1;
            }
        }
        // 144 replicas over 12 nodes: 12 each on average; none far off.
        assert_eq!(per_node.len(), 12);
        assert!(
            per_node.values().all(|n| (4..=22).contains(n)),
            "{per_node:?}"
        );
        // A thirteenth node: only the replicas it takes move (3·S/N ≈ 11), not a reshuffle.
        let thirteen: Vec<NodeId> = (1..=13).collect();
        let after = place(&thirteen, shards);
        let moved: usize = before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.iter().filter(|id| !b.contains(id)).count())
            .sum();
        let to_new: usize = after.iter().filter(|a| a.contains(&13)).count();
        assert_eq!(moved, to_new, "every moved replica goes to the new node");
        assert!(moved <= 24, "{moved} replicas moved");
    }

    #[test]
    fn placement_is_the_same_on_every_node() {
        // Pinned: nodes of one build must agree, whatever order they list members in.
        assert_eq!(place(&[3, 1, 2, 5, 4], 4), place(&[1, 2, 3, 4, 5], 4));
    }
}
