//! Keeps the Raft memberships equal to what the metadata says, from the metadata group's leader:
//! every member is in the metadata group (three as voters, the rest learners; a removed one
//! leaves it once another voter took its place), and every shard's group has its placed
//! replicas as voters (a leaving member is placed nowhere, so its replicas move away; a removed
//! one's are rebuilt from the live replicas where the placement now puts them). A replica enters as a learner, catches
//! up (a snapshot and then the log, through the transport) and only then becomes a voter, so a
//! group never counts a member that does not hold its data.
//!
//! A replica the placement no longer names (a fourth node took its share) is removed, but only
//! once every placed replica votes, so a group never has fewer than its placed voters during a
//! move: a move is "add the new replica as a learner, let it catch up, make it a voter, then
//! remove the old one". At most `--replica-moves-max` shards (2) are changed at a time, so a
//! node's arrival does not stream every shard's snapshot at once while ingest goes on. Every
//! change is a Raft proposal, so a crash mid-way leaves either the old or the new membership,
//! and the next round goes on from whichever it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver as _;
use openraft::impls::BasicNode;
use openraft::ChangeMembers;
use veil_raft::NodeId;

use super::{EnsureReplicas, EnsureReply, MetaCommand};
use crate::node::Node;

/// How often the leader of the metadata group compares memberships with the placement.
const ROUND: Duration = Duration::from_millis(500);

/// How long one shard's replica change may take (a learner's catch-up included).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(600);

/// Voters of the metadata group.
const META_VOTERS: usize = 3;

/// Runs rounds until the node stops. Every node runs it; only the metadata group's leader acts
/// (and every node makes sure its own addresses are the ones on record).
pub fn spawn(node: Arc<Node>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = node.cluster.meta_store.subscribe();
        // Shards whose replicas change at once, across rounds (a change outlives its round).
        let moves = Arc::new(tokio::sync::Semaphore::new(node.config.replica_moves_max));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ROUND) => {}
                _ = changes.changed() => {}
            }
            if let Err(e) = round(&node, &moves).await {
                tracing::debug!(error = %e, "placement round");
            }
        }
    })
}

async fn round(node: &Arc<Node>, moves: &Arc<tokio::sync::Semaphore>) -> anyhow::Result<()> {
    let cluster = &node.cluster;
    let state = cluster.meta_store.state();
    if state.removed.contains_key(&cluster.me) {
        // Removed from the cluster: it proposes nothing (`membership::spawn_removal_watch`
        // stops it).
        return Ok(());
    }
    // This node's own record: added at founding, refreshed after an address change.
    if state.members.get(&cluster.me) != Some(&cluster.member) {
        let command = if state.members.contains_key(&cluster.me) {
            MetaCommand::SetAddrs {
                id: cluster.me,
                member: cluster.member.clone(),
            }
        } else {
            MetaCommand::AddNode {
                id: Some(cluster.me),
                member: cluster.member.clone(),
            }
        };
        node.propose_meta(command).await?;
    }
    let meta_metrics = cluster.meta_raft.metrics().borrow_watched().clone();
    if meta_metrics.current_leader != Some(cluster.me) {
        return Ok(());
    }
    meta_group(node, &state, &meta_metrics).await?;
    // Every shard's group, as a node holding it sees it (this one's view of a group it is not
    // in knows nothing).
    let placed = state.placement(node.shard_map.shard_count());
    let statuses = futures::future::join_all(
        (0..placed.len()).map(|shard| super::status::shard_status(node, shard as u32)),
    )
    .await;
    for ((shard, replicas), status) in placed.into_iter().enumerate().zip(&statuses) {
        if !status.placed.contains(&status.reported_by) {
            // No placed replica answered: this node's own view of a group it may have been
            // moved out of (it may even think it still leads) is no ground for a change.
            tracing::debug!(shard, "no placed replica reported the shard; next round");
            continue;
        }
        let wanted: Vec<(NodeId, String)> = replicas
            .iter()
            .filter_map(|id| state.members.get(id).map(|m| (*id, m.peer_addr.clone())))
            .collect();
        let voters: BTreeSet<NodeId> = status.replicas.iter().copied().collect();
        let group = &node.groups[shard];
        let m = group.raft.metrics().borrow_watched().clone();
        let addrs_right = m
            .membership_config
            .membership()
            .nodes()
            .all(|(id, n)| state.members.get(id).is_none_or(|m| m.peer_addr == n.addr));
        let exact = voters.len() == wanted.len()
            && status.learners.is_empty()
            && wanted.iter().all(|(id, _)| voters.contains(id));
        if exact && addrs_right {
            continue;
        }
        let Ok(permit) = moves.clone().try_acquire_owned() else {
            // Enough shards are changing this round; the rest wait for the next.
            continue;
        };
        let request = EnsureReplicas {
            shard: shard as u32,
            wanted,
        };
        match status.leader.or(m.current_leader) {
            Some(leader) if leader == cluster.me => {
                let node = node.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    // Bounded like the call to another leader: a leadership lost mid-change
                    // must not hold the shard's claim and a move slot for good.
                    let change = ensure_replicas_here(&node, request);
                    match tokio::time::timeout(CHANGE_TIMEOUT, change).await {
                        Ok(EnsureReply::Failed(why)) => {
                            tracing::warn!(shard, %why, "replica change failed; retried next round")
                        }
                        Ok(_) => {}
                        Err(_) => {
                            tracing::warn!(shard, "replica change timed out; retried next round")
                        }
                    }
                });
            }
            Some(leader) => {
                let Some(channel) = node.peer_channel(leader) else {
                    continue;
                };
                tokio::spawn(async move {
                    let _permit = permit;
                    let reply: Result<EnsureReply, _> =
                        super::call(channel, "ensure_replicas", &request, CHANGE_TIMEOUT).await;
                    if let Ok(EnsureReply::Failed(why)) = reply {
                        tracing::warn!(shard, %why, "replica change failed; retried next round");
                    }
                });
            }
            None => {}
        }
    }
    super::membership::finish_leaving(node, &state, &statuses).await
}

/// The metadata group itself: every member in it (a learner first), [`META_VOTERS`] voters
/// among the members when there are that many (a leaving one is not promoted), and a removed
/// member out of it, once another voter took its place where one can.
async fn meta_group(
    node: &Arc<Node>,
    state: &super::meta::ClusterState,
    meta_metrics: &openraft::RaftMetrics<veil_raft::TypeConfig>,
) -> anyhow::Result<()> {
    let cluster = &node.cluster;
    let membership = meta_metrics.membership_config.membership().clone();
    let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    for (id, member) in &state.members {
        if !known.contains(id) {
            let node_info = BasicNode {
                addr: member.peer_addr.clone(),
            };
            cluster.meta_raft.add_learner(*id, node_info, false).await?;
        }
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let staying: BTreeSet<NodeId> = voters
        .iter()
        .filter(|id| !state.removed.contains_key(id))
        .copied()
        .collect();
    if staying.len() < META_VOTERS {
        let caught_up = |id: &NodeId| {
            meta_metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .is_some_and(|matched| matched.is_some())
        };
        let promote: BTreeSet<NodeId> = state
            .members
            .keys()
            .filter(|id| !voters.contains(id) && known.contains(id) && caught_up(id))
            .filter(|id| !state.leaving.contains(id))
            .take(META_VOTERS - staying.len())
            .copied()
            .collect();
        if !promote.is_empty() {
            tracing::info!(?promote, "metadata group: new voters");
            cluster
                .meta_raft
                .change_membership(ChangeMembers::AddVoterIds(promote), false)
                .await?;
            // The removal waits for the next round, which sees the new voters.
            return Ok(());
        }
    }
    let gone_voters: BTreeSet<NodeId> = voters.difference(&staying).copied().collect();
    if !gone_voters.is_empty() && !staying.is_empty() {
        tracing::info!(?gone_voters, "metadata group: removed members stop voting");
        cluster
            .meta_raft
            .change_membership(ChangeMembers::RemoveVoters(gone_voters), false)
            .await?;
        return Ok(());
    }
    let gone_learners: BTreeSet<NodeId> = membership
        .learner_ids()
        .filter(|id| state.removed.contains_key(id))
        .collect();
    if !gone_learners.is_empty() {
        tracing::info!(?gone_learners, "metadata group: removed members leave");
        cluster
            .meta_raft
            .change_membership(ChangeMembers::RemoveNodes(gone_learners), false)
            .await?;
    }
    Ok(())
}

/// On the shard's leader: adds every wanted replica the group lacks as a learner, waits for it
/// to catch up, then makes the learners voters; corrects addresses that changed.
pub async fn ensure_replicas_here(node: &Arc<Node>, request: EnsureReplicas) -> EnsureReply {
    let Some(group) = node.groups.get(request.shard as usize) else {
        return EnsureReply::Failed(format!("no shard {}", request.shard));
    };
    let Some(_busy) = node.cluster.claim_change(request.shard) else {
        return EnsureReply::Busy;
    };
    let raft = &group.raft;
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(node.cluster.me) {
        return EnsureReply::NotLeader;
    }
    let membership = m.membership_config.membership().clone();
    let wrong_addrs: BTreeMap<NodeId, BasicNode> = membership
        .nodes()
        .filter_map(|(id, n)| {
            let addr = &request.wanted.iter().find(|(w, _)| w == id)?.1;
            (n.addr != *addr).then(|| (*id, BasicNode { addr: addr.clone() }))
        })
        .collect();
    if !wrong_addrs.is_empty() {
        if let Err(e) = raft
            .change_membership(ChangeMembers::SetNodes(wrong_addrs), false)
            .await
        {
            return EnsureReply::Failed(format!("address update: {e}"));
        }
    }
    let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    for (id, addr) in &request.wanted {
        if !known.contains(id) {
            tracing::info!(shard = request.shard, node = id, "adding a replica");
            let started = std::time::Instant::now();
            // Blocking: returns once the learner has caught up with the leader's log.
            if let Err(e) = raft
                .add_learner(*id, BasicNode { addr: addr.clone() }, true)
                .await
            {
                return EnsureReply::Failed(format!("add learner {id}: {e}"));
            }
            tracing::info!(
                shard = request.shard,
                node = id,
                seconds = started.elapsed().as_secs_f64(),
                "replica caught up"
            );
        }
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let promote: BTreeSet<NodeId> = request
        .wanted
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !voters.contains(id))
        .collect();
    for id in &promote {
        if let Err(why) = wait_caught_up(raft, node.cluster.me, *id).await {
            return why;
        }
    }
    if !promote.is_empty() {
        tracing::info!(shard = request.shard, ?promote, "replicas become voters");
        if let Err(e) = raft
            .change_membership(ChangeMembers::AddVoterIds(promote), false)
            .await
        {
            return EnsureReply::Failed(format!("change membership: {e}"));
        }
    }
    // Every placed replica votes now: the ones the placement no longer names go (voters and
    // learners alike), never below the placed voters.
    let now = raft
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .clone();
    let wanted: BTreeSet<NodeId> = request.wanted.iter().map(|(id, _)| *id).collect();
    let all_vote = wanted.iter().all(|id| now.voter_ids().any(|v| v == *id));
    let extra: BTreeSet<NodeId> = now
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| !wanted.contains(id))
        .collect();
    if all_vote && !wanted.is_empty() && !extra.is_empty() {
        tracing::info!(shard = request.shard, ?extra, "replicas moved away");
        let voters_out: BTreeSet<NodeId> = extra
            .iter()
            .copied()
            .filter(|id| now.voter_ids().any(|v| v == *id))
            .collect();
        if !voters_out.is_empty() {
            if let Err(e) = raft
                .change_membership(ChangeMembers::RemoveVoters(voters_out), false)
                .await
            {
                return EnsureReply::Failed(format!("remove voters: {e}"));
            }
        }
        let left = raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone();
        let learners_out: BTreeSet<NodeId> =
            left.learner_ids().filter(|id| extra.contains(id)).collect();
        if !learners_out.is_empty() {
            if let Err(e) = raft
                .change_membership(ChangeMembers::RemoveNodes(learners_out), false)
                .await
            {
                return EnsureReply::Failed(format!("remove learners: {e}"));
            }
        }
    }
    EnsureReply::Done
}

/// On a shard's leader: waits until learner `id` holds the leader's log up to where it ends
/// now. openraft's blocking `add_learner` returns at once when the learner needs a snapshot
/// (the log behind it purged), so a replica without the shard's data was made a voter and the
/// one it replaced removed while the snapshot was still on its way (seen once snapshots were
/// rate-limited: the move "finished" seconds before the data arrived).
async fn wait_caught_up(
    raft: &crate::proposer::ShardRaft,
    me: NodeId,
    id: NodeId,
) -> Result<(), EnsureReply> {
    let target = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
    let matched = |m: &openraft::RaftMetrics<veil_raft::TypeConfig>| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id))
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.index())
    };
    let waited = raft
        .wait(Some(CHANGE_TIMEOUT))
        .metrics(
            |m| matched(m) >= target || m.current_leader != Some(me),
            "learner caught up",
        )
        .await;
    match waited {
        Ok(m) if m.current_leader != Some(me) => Err(EnsureReply::NotLeader),
        Ok(_) => Ok(()),
        Err(e) => Err(EnsureReply::Failed(format!(
            "learner {id} did not catch up to index {target}: {e}"
        ))),
    }
}

impl Node {
    /// Waits until this node votes in, and knows the leader of, every shard placed on it (a
    /// joining node is added as a learner first and catches up before it votes). A shard
    /// placed elsewhere needs nothing here: questions about it go to its replicas. A joining
    /// node's replicas arrive one move at a time, snapshot then log, which with a gigabyte
    /// takes minutes: the wait fails only when no placed shard made progress (became a voter
    /// here, or applied more) for `stall` (`--startup-timeout-ms`). A bound on the whole wait
    /// made a node joining a cluster with 1 GB give up after 60 s, a voter of some shards
    /// already, and stop.
    pub async fn wait_placed_replicas(&self, stall: Duration) -> anyhow::Result<()> {
        let me = self.cluster.me;
        let mut seen: Option<(usize, u64)> = None;
        let mut progressed = std::time::Instant::now();
        loop {
            let placed = self.cluster.placement(self.shard_map.shard_count());
            let mut waiting = Vec::new();
            let (mut voting, mut applied) = (0usize, 0u64);
            for (group, replicas) in self.groups.iter().zip(placed.iter()) {
                if !replicas.contains(&me) && !self.holds_placed_replica(group.shard.id()) {
                    continue;
                }
                let m = group.raft.metrics().borrow_watched().clone();
                applied += m.last_applied.map_or(0, |l| l.index());
                let votes = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == me);
                if votes && m.current_leader.is_some() {
                    voting += 1;
                } else {
                    waiting.push(group.shard.id());
                }
            }
            let Some(first) = waiting.first() else {
                return Ok(());
            };
            if seen != Some((voting, applied)) {
                seen = Some((voting, applied));
                progressed = std::time::Instant::now();
            }
            if progressed.elapsed() > stall {
                anyhow::bail!(
                    "shard {first} has no leader or this node is not yet its voter, and none of \
                     the {} shards placed here still waiting made progress for {} ms",
                    waiting.len(),
                    stall.as_millis()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
