//! Reads of any shard, from whichever node asks: the node's side of the coordinator's
//! interface (`coordinator::Leaves`). A question goes to this node's replica when it holds one
//! (a voter), else to the shard's replicas elsewhere, in placement order; strong questions go
//! to the shard's leader next when this node knows it. A replica on another node gets a
//! `leaf` cluster call and answers it through [`Node::answer_from_replica`], the very path a
//! local question takes: a query slot for a search, the strong wait, then the shard's own
//! method on a blocking thread, under the time the asker gave it.
//!
//! Strong reads: the replica that answers makes itself current. It asks the shard's leader for
//! a read index (the leader confirms its leadership with a quorum, `ensure_linearizable`; on
//! the leader itself no call), waits until it has applied that index and, for a search,
//! commits its index, then answers. The read index is taken after the question began, so every
//! entry acknowledged before the question began is in the answer, whichever replica gives it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver as _;
use veil_raft::NodeId;
use veil_shard::{ShardId, ShardMap};

use crate::config::NodeConfig;
use crate::coordinator::{Ask, Leaves, QueryContext, Replica};
use crate::error::ApiError;
use crate::leaf::{self, LeafCall, LeafError, LeafReply, LeafRequest, LeafResult, Origin};
use crate::node::Node;
use crate::slots::QueryClock;
use veil_node::pii::Masker;

/// Answers above this size are decoded on a blocking thread.
const DECODE_INLINE_BYTES_MAX: usize = 256 << 10;

impl Leaves for Node {
    fn replicas(&self, shard: ShardId, strong: bool) -> Vec<Replica> {
        let me = self.cluster.me;
        let m = self.groups[shard.0 as usize]
            .raft
            .metrics()
            .borrow_watched()
            .clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let placement = self.cluster.placement(self.shard_map.shard_count());
        let mut order = Vec::with_capacity(4);
        // A replica the placement no longer names is being moved away, or was (a removed
        // replica may never hear that it was): it is not asked, by this node or any other.
        if self.holds_placed_replica(shard) {
            order.push(Replica::Local);
        }
        let mut others: Vec<NodeId> = Vec::with_capacity(4);
        if strong {
            // Its read index needs no call of its own. For a shard held elsewhere, the leader
            // its replicas named to this node's writes.
            let leader = m.current_leader.or_else(|| self.cluster.leader_hint(shard));
            others.extend(leader.filter(|id| *id != me));
        }
        let placed = placement.get(shard.0 as usize).into_iter().flatten();
        for id in placed.chain(voters.iter()) {
            if *id != me && !others.contains(id) {
                others.push(*id);
            }
        }
        order.extend(others.into_iter().map(Replica::Remote));
        order
    }

    async fn ask(
        &self,
        shard: ShardId,
        replica: Replica,
        request: &Arc<LeafRequest>,
        ask: &Ask,
        budget: Duration,
    ) -> Result<LeafReply, LeafError> {
        let bytes_max = self.config.query_shard_answer_bytes_max as u64;
        match replica {
            Replica::Local => {
                // Confirming a strong read waits on the leader, which another replica may
                // reach when this node cannot: bounded like a remote replica, when there is
                // another to ask.
                let strong_wait = match ask.strong && self.replicas(shard, true).len() > 1 {
                    true => budget.min(ask.replica_timeout),
                    false => budget,
                };
                self.answer_from_replica(
                    shard,
                    request.clone(),
                    Instant::now() + budget,
                    ask.strong.then_some(strong_wait),
                    ask.clock.clone(),
                    move |reply| {
                        leaf::check_size(shard.0, &reply, bytes_max)?;
                        Ok(reply)
                    },
                )
                .await
            }
            Replica::Remote(id) => self.ask_remote(id, shard, request, ask, budget).await,
        }
    }

    fn moved_on(&self, shard: ShardId, replica: Replica, why: &str) {
        crate::metrics::Metrics::add(&self.metrics.shard_question_retries, 1);
        tracing::debug!(shard_id = %shard, ?replica, why, "replica did not answer; asking the next");
    }
}

impl QueryContext for Node {
    fn config(&self) -> &NodeConfig {
        &self.config
    }

    fn masker(&self) -> Arc<Masker> {
        Node::masker(self)
    }

    fn shard_map(&self) -> ShardMap {
        self.shard_map
    }

    fn is_ready(&self) -> bool {
        Node::is_ready(self)
    }
}

impl crate::exceptions::ExceptionContext for Node {
    fn span_sums(&self) -> &crate::exceptions::SpanSums {
        &self.exception_spans
    }
}

impl Node {
    /// Who answers from this node: its id and this process's incarnation.
    pub fn origin(&self) -> Origin {
        Origin {
            node: self.cluster.me,
            incarnation: self.incarnation,
        }
    }

    /// Answers a leaf question from this node's replica of `shard` by `deadline`: the local
    /// arm of every question, and what a `leaf` call from another node runs. With `strong`,
    /// the replica first catches up with its leader's read index, waiting at most that long.
    /// `finish` runs on the blocking thread after the answer (the size check, or the encoding
    /// for the wire).
    pub async fn answer_from_replica<T: Send + 'static>(
        &self,
        shard: ShardId,
        request: Arc<LeafRequest>,
        deadline: Instant,
        strong: Option<Duration>,
        clock: QueryClock,
        finish: impl FnOnce(LeafReply) -> Result<T, LeafError> + Send + 'static,
    ) -> Result<T, LeafError> {
        let me = self.cluster.me;
        if !self.is_ready() {
            return Err(LeafError::Unavailable(format!("node {me} is starting")));
        }
        let Some(group) = self.groups.get(shard.0 as usize) else {
            return Err(LeafError::Failed(format!("no shard {shard}")));
        };
        if !self.holds_replica(shard) {
            // An empty group here is not an empty shard.
            return Err(LeafError::Unavailable(format!(
                "node {me} holds no replica of shard {shard}"
            )));
        }
        let work = async {
            if let Some(wait) = strong {
                let left = deadline.saturating_duration_since(Instant::now()).min(wait);
                let caught_up = if request.is_search() {
                    self.wait_strong(shard, left).await
                } else {
                    self.wait_applied(shard, left).await.map(|_| ())
                };
                caught_up.map_err(strong_error)?;
            }
            let stale = strong.is_none() && !self.has_leader(shard);
            let slot = match request.is_search() {
                true => Some(self.query_slots.acquire(&clock).await),
                false => None,
            };
            let shard_data = group.shard.clone();
            let origin = self.origin();
            // The slot is held until the search ends, even when the deadline drops this future.
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let answer = leaf::answer_here(&shard_data, &request, deadline)?;
                finish(LeafReply {
                    answer,
                    stale,
                    origin,
                })
            })
            .await
            .map_err(|e| LeafError::Failed(format!("shard question task: {e}")))?
        };
        tokio::time::timeout_at(deadline.into(), work)
            .await
            .unwrap_or(Err(LeafError::DeadlineExceeded))
    }

    /// Asks node `id`'s replica of `shard`, giving it `budget`.
    async fn ask_remote(
        &self,
        id: NodeId,
        shard: ShardId,
        request: &Arc<LeafRequest>,
        ask: &Ask,
        budget: Duration,
    ) -> Result<LeafReply, LeafError> {
        let Some(channel) = self.peer_channel(id) else {
            return Err(LeafError::Unavailable(format!("no address for node {id}")));
        };
        crate::metrics::Metrics::add(&self.metrics.shard_questions_sent, 1);
        let call = LeafCall {
            shard: shard.0,
            request: &**request,
            budget_ms: budget.as_millis() as u64,
            strong: ask.strong,
            answer_bytes_max: self.config.query_shard_answer_bytes_max as u64,
            used_us: ask.clock.used_us(),
            age_ms: ask.clock.age().as_millis() as u64,
        };
        let bytes = super::call_raw(channel, "leaf", &call, budget)
            .await
            .map_err(|e| match e {
                super::CallError::Unreachable(why) => {
                    LeafError::Unavailable(format!("node {id} unreachable: {why}"))
                }
                super::CallError::Timeout(_) => LeafError::DeadlineExceeded,
                super::CallError::Failed(why) => LeafError::Failed(format!("node {id}: {why}")),
            })?;
        let small = bytes.len() <= DECODE_INLINE_BYTES_MAX;
        let decode = move || {
            bincode::deserialize::<LeafResult>(&bytes)
                .map_err(|e| LeafError::Failed(format!("undecodable answer from node {id}: {e}")))
        };
        if small {
            decode()?
        } else {
            tokio::task::spawn_blocking(decode)
                .await
                .map_err(|e| LeafError::Failed(format!("decoding task: {e}")))??
        }
    }

    /// Serves a `leaf` call: answers from this node's replica, under the asker's budget and
    /// size bound; the encoded `LeafResult`.
    pub async fn answer_leaf_call(&self, call: LeafCall<LeafRequest>) -> Vec<u8> {
        crate::metrics::Metrics::add(&self.metrics.shard_questions_served, 1);
        let deadline = Instant::now() + Duration::from_millis(call.budget_ms);
        let clock = QueryClock::resume(call.used_us, Duration::from_millis(call.age_ms));
        let (shard, bytes_max) = (call.shard, call.answer_bytes_max);
        let answered = self
            .answer_from_replica(
                ShardId(shard),
                Arc::new(call.request),
                deadline,
                call.strong
                    .then(|| deadline.saturating_duration_since(Instant::now())),
                clock,
                move |reply| Ok(leaf::encode_result(shard, &Ok(reply), bytes_max)),
            )
            .await;
        match answered {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(shard, error = %e, "leaf question not answered");
                leaf::encode_error(&e)
            }
        }
    }
}

/// Why a strong read could not be confirmed here, as a replica's error: a retry (or another
/// replica) can fix no leader and a replica behind.
fn strong_error(e: ApiError) -> LeafError {
    if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        LeafError::Unavailable(e.message)
    } else {
        LeafError::Failed(e.message)
    }
}
