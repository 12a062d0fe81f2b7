//! What a node does for the cluster: its [`ClusterHandle`] (identity, peers, the metadata
//! group), the write path across nodes (a shard's part goes to the shard's leader, local or
//! remote, and is retried there until it is applied or the deadline passes), proposals to the
//! metadata group, joins, and read indexes for strong reads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver as _;
use openraft::Instant as _;
use tonic::transport::Channel;
use veil_raft::{Command, NodeId, Peers, Router};
use veil_shard::{EntryOutcome, ShardCommand, ShardId, StoredEntry};

use super::{
    CallError, ForwardReply, ForwardRequest, JoinReply, JoinRequest, Member, MetaCommand, MetaRaft,
    MetaReply, MetaStore, ReadIndexReply,
};
use crate::error::ApiError;
use crate::node::Node;

/// How long a group may go without word from its leader before this node calls it leaderless
/// (the Raft groups' longest election timeout).
pub const LEADER_SILENCE_MAX_MS: u64 = 3000;

/// A node's place in the cluster.
pub struct ClusterHandle {
    /// This node's id.
    pub me: NodeId,
    /// The cluster's id (fixed at founding, recorded in every member's data directory).
    pub cluster_id: String,
    /// This node's addresses.
    pub member: Member,
    /// `KeyRing::fingerprint` of this node's PII keys.
    pub key_fingerprint: String,
    /// One connection per peer, shared by every group and call.
    pub peers: Peers,
    /// Hands arriving Raft messages to their group.
    pub router: Router,
    /// The metadata group.
    pub meta_raft: MetaRaft,
    /// Its state.
    pub meta_store: Arc<MetaStore>,
    /// How long a write may keep retrying a shard whose leader moves (`--forward-timeout-ms`).
    pub forward_timeout: Duration,
    /// Shards whose membership is being changed from this node.
    changing: Mutex<HashSet<u32>>,
    /// Per group: the last leader seen and how many times it changed (for `/metrics`).
    leaders_seen: Mutex<std::collections::HashMap<u32, (Option<NodeId>, u64)>>,
    /// The placement last computed, with the member list it was computed from.
    placed: Mutex<Option<Placed>>,
    /// Per shard this node holds no replica of: its leader as a replica last named it (this
    /// node's own Raft instance of such a shard never hears from the group).
    leader_hints: Mutex<std::collections::HashMap<u32, NodeId>>,
    /// Set once this node applied its own removal from the cluster (the process stops).
    removed: tokio::sync::watch::Sender<bool>,
}

/// Every shard's placed replicas (`ClusterState::placement`), with the metadata version
/// they were computed from.
type Placed = (u64, Arc<Vec<Vec<NodeId>>>);

/// Releases a shard's change claim when dropped.
pub struct ChangeClaim<'a> {
    handle: &'a ClusterHandle,
    shard: u32,
}

impl Drop for ChangeClaim<'_> {
    fn drop(&mut self) {
        self.handle
            .changing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.shard);
    }
}

impl ClusterHandle {
    /// A handle; see the fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        cluster_id: String,
        member: Member,
        key_fingerprint: String,
        peers: Peers,
        router: Router,
        meta_raft: MetaRaft,
        meta_store: Arc<MetaStore>,
        forward_timeout: Duration,
    ) -> Self {
        Self {
            me,
            cluster_id,
            member,
            key_fingerprint,
            peers,
            router,
            meta_raft,
            meta_store,
            forward_timeout,
            changing: Mutex::new(HashSet::new()),
            leaders_seen: Mutex::default(),
            placed: Mutex::default(),
            leader_hints: Mutex::default(),
            removed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Records that this node was removed from the cluster: [`Self::wait_removed`] returns.
    pub fn mark_removed(&self) {
        self.removed.send_replace(true);
    }

    /// Returns once this node was removed from the cluster and should stop.
    pub async fn wait_removed(&self) {
        let mut removed = self.removed.subscribe();
        // An error means the sender is gone, which happens only as the node itself goes.
        let _ = removed.wait_for(|r| *r).await;
    }

    /// The leader of a shard this node holds no replica of, as a replica last named it.
    pub fn leader_hint(&self, shard: ShardId) -> Option<NodeId> {
        let hints = self.leader_hints.lock().unwrap_or_else(|p| p.into_inner());
        hints.get(&shard.0).copied()
    }

    /// Records (or, with None, forgets) the leader a replica of `shard` named. A replica that
    /// names this node (a stale one, from before this node's replica was moved away) is not
    /// recorded: this node holds no replica of the shard, so it leads nothing there, and a
    /// hint naming it sent every later part to its own deposed Raft instance until the
    /// deadline (seen while a fourth node joined with 1 GB).
    pub fn set_leader_hint(&self, shard: ShardId, leader: Option<NodeId>) {
        let leader = leader.filter(|id| *id != self.me);
        let mut hints = self.leader_hints.lock().unwrap_or_else(|p| p.into_inner());
        match leader {
            Some(id) => hints.insert(shard.0, id),
            None => hints.remove(&shard.0),
        };
    }

    /// Every shard's placed replicas over the active members the metadata holds now (a
    /// leaving one is placed nowhere), or a shard's placement override, in priority order
    /// (computed again only when the metadata changes, not on every question or write).
    pub fn placement(&self, shards: u32) -> Arc<Vec<Vec<NodeId>>> {
        // The version before the state: a change between the two is then computed again on
        // the next call, never kept under the newer version.
        let version = self.meta_store.version();
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, placement)) = &*placed {
            if *known == version {
                return placement.clone();
            }
        }
        let placement = Arc::new(self.meta_store.state().placement(shards));
        *placed = Some((version, placement.clone()));
        placement
    }

    /// Claims the right to change `shard`'s membership; None while another change runs.
    pub fn claim_change(&self, shard: u32) -> Option<ChangeClaim<'_>> {
        let claimed = self
            .changing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard);
        // The lock is released here: a claim's drop takes it again.
        claimed.then(|| ChangeClaim {
            handle: self,
            shard,
        })
    }

    /// Records `leader` as group `group`'s current one; returns the changes seen so far.
    /// (Sampled when `/metrics` is scraped: a change and back between scrapes is not seen.)
    pub fn leader_changes(&self, group: u32, leader: Option<NodeId>) -> u64 {
        let mut seen = self.leaders_seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(group).or_insert((leader, 0));
        if entry.0 != leader && leader.is_some() {
            *entry = (leader, entry.1 + 1);
        }
        entry.1
    }

    /// The metadata group's leader, if known.
    pub fn meta_leader(&self) -> Option<NodeId> {
        self.meta_raft.metrics().borrow_watched().current_leader
    }
}

/// Why one try of a shard's part failed.
enum TryError {
    /// Worth another try (no leader, leader moved, connection lost); `unknown` when the part
    /// may have been applied all the same.
    Retry { why: String, unknown: bool },
    /// Another try would fail the same way.
    Final(ApiError),
}

impl Node {
    /// The channel to member `id`, by the address the metadata holds.
    pub fn peer_channel(&self, id: NodeId) -> Option<Channel> {
        let addr = self
            .cluster
            .meta_store
            .state()
            .members
            .get(&id)?
            .peer_addr
            .clone();
        self.cluster.peers.channel(id, &addr).ok()
    }

    /// True when `shard`'s group has a live leader as far as this node can tell: this node
    /// leads it and a quorum acknowledged it recently, or the leader's appends (heartbeats
    /// included) reached this node recently. "Recently": within the longest election timeout,
    /// after which a healthy group would have elected another leader.
    pub fn has_leader(&self, shard: ShardId) -> bool {
        if self.single_voter(shard) {
            // This node is the group's only voter: its own majority.
            return true;
        }
        let recent = Duration::from_millis(LEADER_SILENCE_MAX_MS);
        let m = self.groups[shard.0 as usize]
            .raft
            .metrics()
            .borrow_watched()
            .clone();
        match m.current_leader {
            None => false,
            Some(id) if id == self.cluster.me => {
                m.last_quorum_acked.is_some_and(|t| t.elapsed() < recent)
            }
            Some(_) => self
                .cluster
                .router
                .since_leader_heard(veil_raft::GroupId(shard.0))
                .is_some_and(|d| d < recent),
        }
    }

    /// Stores one shard's part of a batch: proposed here when this node leads the shard,
    /// forwarded to the leader otherwise, and retried (leader changes, lost connections, a try
    /// unanswered within `--forward-try-timeout-ms`) until it is applied or
    /// `--forward-timeout-ms` passes. A try whose outcome is unknown is
    /// retried as a checked `Append`, so entries the first try stored are not stored again.
    /// For a shard this node holds no replica of, the leader is the one its replicas name:
    /// the part goes to a placed replica, which answers "not the leader, node N is" unless it
    /// leads, and the next try goes to N (remembered for the next parts).
    pub(crate) async fn commit_part(
        &self,
        shard: ShardId,
        minted: bool,
        entries: Vec<StoredEntry>,
    ) -> Result<Vec<EntryOutcome>, ApiError> {
        let group = &self.groups[shard.0 as usize];
        if self.single_voter(shard) {
            // This node is the only voter: no other node to move to, nothing to retry across.
            return self.proposers[shard.0 as usize]
                .propose(minted, entries)
                .await;
        }
        let deadline = tokio::time::Instant::now() + self.cluster.forward_timeout;
        let mut minted = minted;
        let mut backoff = Duration::from_millis(10);
        let mut attempt = 0usize;
        loop {
            // A replica the placement no longer names may have been removed without hearing
            // so: its view of the leader (itself, even) is not to be trusted.
            // Where this node's replica knows no leader (it is electing, perhaps because the
            // leader's messages stopped reaching it while its own still reach the leader), the
            // other replicas may: ask them as a node without a replica does.
            let placed = self.holds_placed_replica(shard);
            let local = group.raft.metrics().borrow_watched().current_leader;
            // A leader whose replica is being moved away (the placement names its successor
            // already, which is still catching up) leads until it hands over: it takes the
            // writes meanwhile. Every other try asks the others, in case it was deposed
            // without hearing so. Sending them elsewhere made every part of such a shard wait
            // out the forward deadline while the move lasted, since the replicas name this
            // node as the leader (seen while a fourth node joined a cluster holding 1 GB).
            let leading_while_moving = !placed
                && local == Some(self.cluster.me)
                && self.holds_replica(shard)
                && attempt.is_multiple_of(2);
            let leader = if placed || leading_while_moving {
                local
            } else {
                None
            }
            .or_else(|| self.leader_elsewhere(shard, attempt));
            attempt += 1;
            // One try is bounded on its own: a leader cut off or paused answers nothing, and
            // the whole budget spent waiting on it is a write lost.
            let try_for = Duration::from_millis(self.config.forward_try_timeout_ms);
            let try_deadline = deadline.min(tokio::time::Instant::now() + try_for);
            let tried = match leader {
                // Bounded like a forward: a proposal whose leadership is lost before it
                // commits may never be answered; past the deadline its outcome is unknown.
                Some(id) if id == self.cluster.me => {
                    let proposal =
                        self.proposers[shard.0 as usize].propose(minted, entries.clone());
                    let until = if placed { deadline } else { try_deadline };
                    match tokio::time::timeout_at(until, proposal).await {
                        Ok(reply) => reply.map_err(|e| TryError::Retry {
                            why: e.message,
                            unknown: true,
                        }),
                        Err(_) => Err(TryError::Retry {
                            why: "the proposal here was not committed in time".into(),
                            unknown: true,
                        }),
                    }
                }
                Some(id) => {
                    let forwarded = self.forward(id, shard, minted, &entries, try_deadline);
                    if placed {
                        // This node's replica hears of a new leader before the old one's
                        // silence runs out the try: go to the new one at once.
                        let wait = group.raft.wait(None);
                        let moved = wait.metrics(
                            |m| m.current_leader.is_some_and(|l| l != id),
                            "the shard's leader moved",
                        );
                        tokio::select! {
                            tried = forwarded => tried,
                            _ = moved => Err(TryError::Retry {
                                why: format!("shard {shard}'s leader moved away from node {id}"),
                                unknown: true,
                            }),
                        }
                    } else {
                        forwarded.await
                    }
                }
                None => Err(TryError::Retry {
                    why: format!("shard {shard} has no leader"),
                    unknown: false,
                }),
            };
            match tried {
                Ok(outcomes) => return Ok(outcomes),
                Err(TryError::Final(e)) => return Err(e),
                Err(TryError::Retry { why, unknown }) => {
                    if unknown {
                        minted = false;
                    }
                    let now = tokio::time::Instant::now();
                    if now + backoff >= deadline {
                        let mut e = ApiError::unavailable(
                            "shard_unavailable",
                            format!(
                                "shard {shard} could not store the entries within {} ms ({why}); \
                                 retry (with idempotency keys, a retry is stored once)",
                                self.cluster.forward_timeout.as_millis()
                            ),
                        );
                        e.retry_after_secs = Some(1);
                        return Err(e);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Where to send a part of `shard` that this node's replica cannot place (it holds none, or
    /// its replica knows no leader), at try `attempt`: the leader a replica named last, else
    /// the shard's other placed replicas in turn.
    fn leader_elsewhere(&self, shard: ShardId, attempt: usize) -> Option<NodeId> {
        if let Some(leader) = self.cluster.leader_hint(shard) {
            return Some(leader);
        }
        let placement = self.cluster.placement(self.shard_map.shard_count());
        let replicas: Vec<NodeId> = placement
            .get(shard.0 as usize)?
            .iter()
            .copied()
            .filter(|id| *id != self.cluster.me)
            .collect();
        replicas.get(attempt % replicas.len().max(1)).copied()
    }

    async fn forward(
        &self,
        leader: NodeId,
        shard: ShardId,
        minted: bool,
        entries: &[StoredEntry],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<EntryOutcome>, TryError> {
        let Some(channel) = self.peer_channel(leader) else {
            return Err(TryError::Retry {
                why: format!("no address for node {leader}"),
                unknown: false,
            });
        };
        let command = if minted {
            ShardCommand::AppendMinted(entries.to_vec())
        } else {
            ShardCommand::Append(entries.to_vec())
        };
        let request = ForwardRequest {
            shard: shard.0,
            minted,
            command: command.encode(),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reply: Result<ForwardReply, CallError> =
            super::call(channel, "append", &request, left).await;
        {
            // What the replica said about the shard's leader, for the next try and part.
            match &reply {
                Ok(ForwardReply::Outcomes(_)) => self.cluster.set_leader_hint(shard, Some(leader)),
                Ok(ForwardReply::NotLeader(named)) => self
                    .cluster
                    .set_leader_hint(shard, named.filter(|id| *id != leader)),
                Err(CallError::Unreachable(_)) => self.cluster.set_leader_hint(shard, None),
                _ => {}
            }
        }
        match reply {
            Ok(ForwardReply::Outcomes(bytes)) => {
                let outcomes = veil_shard::decode_outcomes(shard, &bytes)
                    .map_err(|e| TryError::Final(ApiError::internal("decoding outcomes", e)))?;
                if outcomes.len() != entries.len() {
                    return Err(TryError::Final(ApiError::internal(
                        "ingesting",
                        format!(
                            "node {leader} answered {} outcomes for {} entries",
                            outcomes.len(),
                            entries.len()
                        ),
                    )));
                }
                Ok(outcomes)
            }
            Ok(ForwardReply::NotLeader(_)) => Err(TryError::Retry {
                why: format!("node {leader} no longer leads shard {shard}"),
                unknown: false,
            }),
            Ok(ForwardReply::Unavailable(why)) => Err(TryError::Retry { why, unknown: true }),
            Ok(ForwardReply::Failed(why)) => Err(TryError::Final(ApiError::internal(
                "forwarding a batch",
                why,
            ))),
            // Refused before sending: nothing was applied.
            Err(CallError::Unreachable(why)) => Err(TryError::Retry {
                why,
                unknown: false,
            }),
            Err(e) => Err(TryError::Retry {
                why: e.to_string(),
                unknown: true,
            }),
        }
    }

    /// Before a graceful stop: every group this node leads hands its leadership to another
    /// voter, and the stop waits (up to two seconds) for the others to take over, so writes
    /// move on at once instead of after an election timeout.
    pub async fn hand_over_leadership(&self) {
        let me = self.cluster.me;
        let mut waits = Vec::new();
        for group in &self.groups {
            let m = group.raft.metrics().borrow_watched().clone();
            if m.current_leader != Some(me) {
                continue;
            }
            let Some(to) = m
                .membership_config
                .membership()
                .voter_ids()
                .find(|id| *id != me)
            else {
                continue;
            };
            let raft = &group.raft;
            if raft.trigger().transfer_leader(to).await.is_ok() {
                waits.push(async move {
                    let _ = raft
                        .wait(Some(Duration::from_secs(2)))
                        .metrics(|m| m.current_leader != Some(me), "leadership handed over")
                        .await;
                });
            }
        }
        futures::future::join_all(waits).await;
    }

    /// Proposes a forwarded part, when this node leads its shard.
    pub async fn propose_here(&self, request: ForwardRequest) -> ForwardReply {
        let Some(group) = self.groups.get(request.shard as usize) else {
            return ForwardReply::Failed(format!("no shard {}", request.shard));
        };
        let shard = group.shard.id();
        let leader = group.raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.cluster.me) {
            return ForwardReply::NotLeader(leader);
        }
        let entries = match ShardCommand::decode(shard, &request.command) {
            Ok(c) => c.into_entries(),
            Err(e) => return ForwardReply::Failed(format!("undecodable part: {e}")),
        };
        match self.proposers[shard.0 as usize]
            .propose(request.minted, entries)
            .await
        {
            Ok(outcomes) => ForwardReply::Outcomes(veil_shard::encode_outcomes(&outcomes)),
            Err(e) => ForwardReply::Unavailable(e.message),
        }
    }

    /// Proposes a change to the metadata group, through its leader wherever it is.
    pub async fn propose_meta(&self, command: MetaCommand) -> anyhow::Result<MetaReply> {
        match self.cluster.meta_leader() {
            Some(leader) if leader == self.cluster.me => self
                .propose_meta_here(command)
                .await
                .map_err(anyhow::Error::msg),
            Some(leader) => {
                let channel = self
                    .peer_channel(leader)
                    .ok_or_else(|| anyhow::anyhow!("no address for node {leader}"))?;
                let reply: Result<MetaReply, String> =
                    super::call(channel, "meta_propose", &command, Duration::from_secs(10)).await?;
                reply.map_err(anyhow::Error::msg)
            }
            None => anyhow::bail!("the metadata group has no leader"),
        }
    }

    /// Proposes a change to the metadata group, when this node leads it.
    pub async fn propose_meta_here(&self, command: MetaCommand) -> Result<MetaReply, String> {
        let bytes = bincode::serialize(&command).map_err(|e| e.to_string())?;
        let response = self
            .cluster
            .meta_raft
            .client_write(Command(bytes))
            .await
            .map_err(|e| format!("metadata proposal: {e}"))?;
        bincode::deserialize(&response.response().0).map_err(|e| e.to_string())
    }

    /// Admits a node: checks its keys, records it in the metadata (through the leader).
    pub async fn handle_join(&self, request: JoinRequest) -> JoinReply {
        if request.key_fingerprint != self.cluster.key_fingerprint {
            return JoinReply::Refused(
                "its PII keys differ from this cluster's (every node needs the same key file: \
                 copy it from a member)"
                    .to_string(),
            );
        }
        let command = MetaCommand::AddNode {
            id: request.node_id,
            member: request.member,
        };
        match self.propose_meta(command).await {
            Ok(MetaReply::Member(node_id)) => {
                tracing::info!(node_id, "node joined");
                JoinReply::Joined {
                    cluster_id: self.cluster.cluster_id.clone(),
                    node_id,
                    shards: self.shard_map.shard_count(),
                }
            }
            Ok(MetaReply::Refused(why)) => JoinReply::Refused(why),
            Ok(other) => JoinReply::Unavailable(format!("unexpected answer {other:?}")),
            Err(e) => JoinReply::Unavailable(e.to_string()),
        }
    }

    /// The read index of `shard` when this node leads it: its committed index, once a quorum
    /// confirmed the leadership.
    pub async fn read_index_here(&self, shard: u32) -> ReadIndexReply {
        let Some(group) = self.groups.get(shard as usize) else {
            return ReadIndexReply::Failed(format!("no shard {shard}"));
        };
        let leader = group.raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.cluster.me) {
            return ReadIndexReply::NotLeader(leader);
        }
        match group
            .raft
            .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(read) => ReadIndexReply::Index(read.index()),
            Err(e) => ReadIndexReply::Failed(e.to_string()),
        }
    }

    /// Catches this node's replicas up to their leaders' read index, each for at most
    /// `--forward-try-timeout-ms`; returns the shards whose replica did not get there (its
    /// leader's messages do not reach it, say): what they hold must be asked of the others.
    pub async fn catch_up_replicas(&self) -> Vec<ShardId> {
        let timeout = Duration::from_millis(self.config.forward_try_timeout_ms)
            .min(self.cluster.forward_timeout);
        let shards: Vec<ShardId> = self
            .groups
            .iter()
            .map(|g| g.shard.id())
            // A shard placed elsewhere has nothing here to catch up (and no leader known here).
            .filter(|s| self.holds_placed_replica(*s) && !self.single_voter(*s))
            .collect();
        let waits = shards.iter().map(|s| self.wait_applied(*s, timeout));
        let results = futures::future::join_all(waits).await;
        shards
            .into_iter()
            .zip(results)
            .filter_map(|(shard, result)| {
                let e = result.err()?;
                tracing::debug!(
                    shard = shard.0,
                    code = e.code,
                    "replica not caught up before a keyed look-up: asking the others"
                );
                Some(shard)
            })
            .collect()
    }

    /// True when this node is one of `shard`'s voters (holds a caught-up replica). With more
    /// than three members some shards are placed elsewhere; questions about them go to the
    /// nodes that hold them (`reads.rs`).
    pub fn holds_replica(&self, shard: ShardId) -> bool {
        self.groups[shard.0 as usize]
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.cluster.me)
    }

    /// True when this node votes in `shard` and the placement names it: its replica is one a
    /// question may be asked of (a replica moved away may never hear that it was removed).
    pub fn holds_placed_replica(&self, shard: ShardId) -> bool {
        let placement = self.cluster.placement(self.shard_map.shard_count());
        self.holds_replica(shard)
            && placement
                .get(shard.0 as usize)
                .is_some_and(|p| p.contains(&self.cluster.me))
    }

    /// True when this node is `shard`'s only voter.
    fn single_voter(&self, shard: ShardId) -> bool {
        self.groups[shard.0 as usize]
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .eq([self.cluster.me])
    }

    /// Waits until this node's replica of `shard` has applied everything acknowledged before
    /// now: asks the shard's leader for its read index, then waits for the local apply to reach
    /// it (read-your-writes on any replica).
    pub async fn wait_strong(&self, shard: ShardId, timeout: Duration) -> Result<(), ApiError> {
        let started = tokio::time::Instant::now();
        let index = self.wait_applied(shard, timeout).await?;
        // Applied is not yet searchable: an index commit (here, or the leader's, copied)
        // makes it so.
        let left = timeout.saturating_sub(started.elapsed());
        self.copy_covering(shard, index, left).await
    }

    /// Waits until this node's replica of `shard` has applied what its leader had committed
    /// when asked (its read index).
    pub(crate) async fn wait_applied(
        &self,
        shard: ShardId,
        timeout: Duration,
    ) -> Result<u64, ApiError> {
        let group = &self.groups[shard.0 as usize];
        let deadline = tokio::time::Instant::now() + timeout;
        let index = loop {
            let leader = group.raft.metrics().borrow_watched().current_leader;
            let reply = match leader {
                Some(id) if id == self.cluster.me => self.read_index_here(shard.0).await,
                Some(id) => match self.peer_channel(id) {
                    Some(channel) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        super::call(channel, "read_index", &shard.0, left)
                            .await
                            .unwrap_or_else(|e| ReadIndexReply::Failed(e.to_string()))
                    }
                    None => ReadIndexReply::NotLeader(None),
                },
                None => ReadIndexReply::NotLeader(None),
            };
            if let ReadIndexReply::Index(index) = reply {
                break index;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::unavailable(
                    "no_leader",
                    format!("shard {shard} has no leader to confirm a strong read"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        group
            .raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "strong read")
            .await
            .map_err(|_| {
                ApiError::unavailable(
                    "replica_behind",
                    format!("this node's replica of shard {shard} did not catch up in time"),
                )
            })?;
        Ok(index)
    }
}
