//! What `GET /api/v1/cluster`, `GET /api/v1/health` and `GET /api/v1/admin/digests` answer:
//! the members and whether each answers now, every shard's replicas, leader, indexes and lag
//! (from this node's replica, or for a shard it holds none of, from a replica's node), and
//! digests of this node's replicas.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver as _;
use serde::{Deserialize, Serialize};
use veil_raft::NodeId;

use super::HelloReply;
use crate::node::Node;

/// How long a member may take to answer before it counts as down.
const PING_TIMEOUT: Duration = Duration::from_millis(800);

/// One member.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub http_addr: String,
    pub grpc_addr: String,
    pub peer_addr: String,
    /// `up` when it answered now, `down` otherwise.
    pub state: &'static str,
    /// `active` (placed, holding its share) or `leaving` (being decommissioned: its replicas
    /// move away, then it is removed).
    pub membership: &'static str,
}

/// One shard's group, as the node holding the replica that reported it sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardStatus {
    pub shard: u32,
    /// The node whose replica this is from (the answering node's own when it holds one).
    pub reported_by: NodeId,
    /// Voters.
    pub replicas: Vec<NodeId>,
    /// Replicas still catching up before they vote.
    pub learners: Vec<NodeId>,
    /// The replicas the placement names for the shard, in priority order, as the answering
    /// node computes it from the members: differs from `replicas` while a move is under way.
    /// (Filled in by the answering node; a peer's answer leaves it empty.)
    pub placed: Vec<NodeId>,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// This node's replica: committed and applied Raft index.
    pub commit_index: u64,
    pub applied_index: u64,
    /// On the leader: how far each replica's log is behind the leader's (entries); empty
    /// elsewhere. (Always written: the `shard_status` call carries this type in bincode, which
    /// cannot read a struct with a field left out — a follower's answer was undecodable, so a
    /// shard whose leader was not a placed replica was reported from a stale view.)
    pub lag: BTreeMap<NodeId, u64>,
}

/// The whole answer of `GET /api/v1/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// The node that answered.
    pub node_id: NodeId,
    pub metadata_leader: Option<NodeId>,
    /// The metadata group's voters, as this node's view of the group has them.
    pub metadata_voters: Vec<NodeId>,
    pub nodes: Vec<NodeStatus>,
    /// Former members (decommissioned or removed): refused if they come back.
    pub removed_nodes: Vec<NodeId>,
    pub shards: Vec<ShardStatus>,
}

/// Asks every member whether it answers, concurrently.
async fn states(node: &Arc<Node>) -> BTreeMap<NodeId, bool> {
    let members = node.cluster.meta_store.state().members;
    let pings = members.keys().map(|id| {
        let id = *id;
        let channel = (id != node.cluster.me)
            .then(|| node.peer_channel(id))
            .flatten();
        async move {
            if id == node.cluster.me {
                return (id, true);
            }
            let Some(channel) = channel else {
                return (id, false);
            };
            let hello: Result<HelloReply, _> =
                super::call(channel, "hello", &(), PING_TIMEOUT).await;
            (id, hello.is_ok_and(|h| h.node_id == id))
        }
    });
    futures::future::join_all(pings).await.into_iter().collect()
}

/// The status of the cluster as this node sees it.
pub async fn cluster(node: &Arc<Node>) -> ClusterStatus {
    let up = states(node).await;
    let state = node.cluster.meta_store.state();
    let nodes = state
        .members
        .iter()
        .map(|(id, m)| NodeStatus {
            id: *id,
            http_addr: m.http_addr.clone(),
            grpc_addr: m.grpc_addr.clone(),
            peer_addr: m.peer_addr.clone(),
            state: if up.get(id).copied().unwrap_or(false) {
                "up"
            } else {
                "down"
            },
            membership: state
                .member_state(*id)
                .map_or("active", super::meta::MemberState::as_str),
        })
        .collect();
    let shards = futures::future::join_all(
        node.groups
            .iter()
            .map(|g| shard_status(node, g.shard.id().0)),
    )
    .await;
    ClusterStatus {
        cluster_id: node.cluster.cluster_id.clone(),
        node_id: node.cluster.me,
        metadata_leader: node.cluster.meta_leader(),
        metadata_voters: node
            .cluster
            .meta_raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect(),
        nodes,
        removed_nodes: state.removed.keys().copied().collect(),
        shards,
    }
}

/// A shard's status from this node's replica, or from the first of its placed replicas' nodes
/// that answers (this node's own view, which knows nothing of the group, when none does).
pub async fn shard_status(node: &Arc<Node>, shard: u32) -> ShardStatus {
    let placed = node
        .cluster
        .placement(node.shard_map.shard_count())
        .get(shard as usize)
        .cloned()
        .unwrap_or_default();
    let mut status = shard_status_from(node, shard, &placed).await;
    status.placed = placed;
    status
}

async fn shard_status_from(node: &Arc<Node>, shard: u32, placed: &[NodeId]) -> ShardStatus {
    if let Some(here) = shard_status_here(node, shard) {
        return here;
    }
    for id in placed {
        let Some(channel) = (*id != node.cluster.me)
            .then(|| node.peer_channel(*id))
            .flatten()
        else {
            continue;
        };
        let answer: Result<Option<ShardStatus>, _> =
            super::call(channel, "shard_status", &shard, PING_TIMEOUT).await;
        if let Ok(Some(status)) = answer {
            return status;
        }
    }
    local_status(node, &node.groups[shard as usize])
}

/// A shard's status from this node's replica, if it holds one (voter or learner) where the
/// placement puts one: a replica moved away may never hear that it was removed, so its view is
/// not the group's.
pub fn shard_status_here(node: &Node, shard: u32) -> Option<ShardStatus> {
    let g = node.groups.get(shard as usize)?;
    let me = node.cluster.me;
    let placement = node.cluster.placement(node.shard_map.shard_count());
    if !placement
        .get(shard as usize)
        .is_some_and(|p| p.contains(&me))
    {
        return None;
    }
    let status = local_status(node, g);
    (status.replicas.contains(&me) || status.learners.contains(&me)).then_some(status)
}

fn local_status(node: &Node, g: &crate::node::Group) -> ShardStatus {
    let m = g.raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    let last = m.last_log_index.unwrap_or(0);
    let lag = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, matched)| {
                    let matched = matched.as_ref().map(|l| l.index()).unwrap_or(0);
                    (*id, last.saturating_sub(matched))
                })
                .collect()
        })
        .unwrap_or_default();
    ShardStatus {
        shard: g.shard.id().0,
        reported_by: node.cluster.me,
        replicas: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        placed: Vec::new(),
        leader: m.current_leader,
        term: m.current_term,
        commit_index: m.local_committed.as_ref().map(|l| l.index()).unwrap_or(0),
        applied_index: m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
        lag,
    }
}

/// `ok`, `degraded` (some shard has a replica down) or `unavailable` (some shard has lost its
/// majority), with the shards concerned: of the shards this node holds a replica of (its Raft
/// instance of a shard placed elsewhere knows nothing of that group).
pub async fn health(node: &Arc<Node>) -> (&'static str, Vec<u32>, Vec<u32>) {
    let up = states(node).await;
    let mut degraded = Vec::new();
    let mut unavailable = Vec::new();
    for g in node
        .groups
        .iter()
        .filter(|g| node.holds_placed_replica(g.shard.id()))
    {
        let m = g.raft.metrics().borrow_watched().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let alive = voters
            .iter()
            .filter(|id| **id == node.cluster.me || up.get(id).copied().unwrap_or(false))
            .count();
        if alive * 2 <= voters.len() || !node.has_leader(g.shard.id()) {
            unavailable.push(g.shard.id().0);
        } else if alive < voters.len() {
            degraded.push(g.shard.id().0);
        }
    }
    let status = if !unavailable.is_empty() {
        "unavailable"
    } else if !degraded.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    (status, degraded, unavailable)
}

/// One replica's digest, for `GET /api/v1/admin/digests`.
#[derive(Debug, Serialize)]
pub struct DigestLine {
    pub shard: u32,
    pub applied_index: u64,
    pub entries: u64,
    /// Hex.
    pub digest: String,
}

/// Digests of this node's replicas (reads every entry: an admin call).
pub async fn digests(node: &Arc<Node>) -> anyhow::Result<Vec<DigestLine>> {
    let shards: Vec<_> = node.groups.iter().map(|g| g.shard.clone()).collect();
    tokio::task::spawn_blocking(move || {
        shards
            .iter()
            .map(|s| {
                let d = s.digest()?;
                Ok(DigestLine {
                    shard: s.id().0,
                    applied_index: d.applied_index,
                    entries: d.entries,
                    digest: format!("{:016x}", d.digest),
                })
            })
            .collect()
    })
    .await?
}

/// Appends the per-group Raft figures to `/metrics`: term, whether this node leads, leader
/// changes seen, the replicas' lag on the leader, and snapshots received.
pub fn render_raft_metrics(node: &Node, out: &mut String) {
    use std::fmt::Write as _;
    let mut lines = |name: &str, help: &str, kind: &str, values: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in values {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let mut term = Vec::new();
    let mut leader = Vec::new();
    let mut changes = Vec::new();
    let mut lag = Vec::new();
    let mut record =
        |group: String, m: &openraft::RaftMetrics<veil_raft::TypeConfig>, seen: u64| {
            let labels = format!("{{group=\"{group}\"}}");
            term.push((labels.clone(), m.current_term));
            leader.push((
                labels.clone(),
                u64::from(m.current_leader == Some(node.cluster.me)),
            ));
            changes.push((labels.clone(), seen));
            let last = m.last_log_index.unwrap_or(0);
            for (id, matched) in m.replication.iter().flatten() {
                let matched = matched.as_ref().map(|l| l.index()).unwrap_or(0);
                lag.push((
                    format!("{{group=\"{group}\",node=\"{id}\"}}"),
                    last.saturating_sub(matched),
                ));
            }
        };
    let meta = node.cluster.meta_raft.metrics().borrow_watched().clone();
    record(
        "meta".into(),
        &meta,
        node.cluster.leader_changes(u32::MAX, meta.current_leader),
    );
    for g in &node.groups {
        let m = g.raft.metrics().borrow_watched().clone();
        let id = g.shard.id().0;
        let seen = node.cluster.leader_changes(id, m.current_leader);
        record(id.to_string(), &m, seen);
    }
    lines(
        "veil_raft_term",
        "Current Raft term per group.",
        "gauge",
        term,
    );
    lines(
        "veil_raft_is_leader",
        "1 when this node leads the group.",
        "gauge",
        leader,
    );
    lines(
        "veil_raft_leader_changes_total",
        "Leader changes this node has seen per group since it started (counted when scraped).",
        "counter",
        changes,
    );
    lines(
        "veil_raft_replication_lag_entries",
        "On the leader: how many log entries each replica is behind.",
        "gauge",
        lag,
    );
    lines(
        "veil_raft_snapshots_received_total",
        "Snapshots this node received and installed.",
        "counter",
        vec![(
            String::new(),
            node.cluster
                .router
                .snapshots_received
                .load(std::sync::atomic::Ordering::Relaxed),
        )],
    );
    lines(
        "veil_raft_snapshot_bytes_sent_total",
        "Bytes of snapshots this node sent to others (bounded by --snapshot-send-bytes-per-sec).",
        "counter",
        vec![(String::new(), node.cluster.peers.snapshot_bytes_sent())],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_s_shard_status_crosses_the_peer_call() {
        let follower = ShardStatus {
            shard: 2,
            reported_by: 4,
            replicas: vec![2, 3, 4],
            learners: vec![],
            placed: vec![],
            leader: Some(3),
            term: 2,
            commit_index: 10,
            applied_index: 10,
            lag: BTreeMap::new(),
        };
        let answer: Option<ShardStatus> = Some(follower);
        let bytes = bincode::serialize(&answer).unwrap();
        let back: Option<ShardStatus> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back.unwrap().leader, Some(3));
    }
}
