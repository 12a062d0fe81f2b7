//! Shrinking and repairing a cluster: decommissioning a member (it is marked leaving, the
//! placement drops it, reconcile moves its replicas away, then it is removed), removing a dead
//! one (removed at once; its replicas are rebuilt from the live ones where the placement now
//! puts them), and refusing a removed node that comes back, at its start and while it runs.
//!
//! Life of a decommission:
//! 1. `POST /api/v1/admin/nodes/{id}/decommission` proposes `MetaCommand::Decommission`; the
//!    apply refuses it when fewer than three active members would be left (unless forced).
//! 2. Every node's placement (`ClusterState::placed_members`) leaves the node out, so each
//!    shard it holds has a new placed replica: reconcile adds it as a learner, lets it catch up,
//!    makes it a voter and removes the leaving one (`reconcile::ensure_replicas_here`).
//! 3. Once no shard's group names the node, as placed replicas report them
//!    ([`finish_leaving`]), the metadata leader proposes `MetaCommand::RemoveNode`.
//! 4. The metadata group promotes another member if the removed one voted, then drops it
//!    (`reconcile::meta_group`); the removed process, once it applied its removal and no longer
//!    leads the metadata group, stops by itself ([`spawn_removal_watch`]).
//!
//! Every step is a proposal, so a crash anywhere leaves a state the next round goes on from.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use openraft::async_runtime::watch::WatchReceiver as _;
use serde::{Deserialize, Serialize};
use veil_raft::NodeId;

use super::meta::{ClusterState, MemberState, MembershipRefusal};
use super::status::ShardStatus;
use super::{HelloReply, MetaCommand, MetaReply};
use crate::error::ApiError;
use crate::node::Node;

/// How long a member may take to answer before a removal counts it as down.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(800);

/// A starting node's question to a member: what is node `node_id` of `cluster_id` now?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberQuery {
    pub cluster_id: String,
    pub node_id: NodeId,
}

/// The answer to a [`MemberQuery`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberAnswer {
    /// The answering node's cluster.
    pub cluster_id: String,
    /// What the asked node is in that cluster's metadata (None: never a member).
    pub state: Option<MemberState>,
}

/// The admin routes of membership changes (merged into the HTTP router).
pub fn router() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/api/v1/admin/nodes/{id}/decommission",
            post(decommission_http),
        )
        .route("/api/v1/admin/nodes/{id}", delete(remove_http))
        .route("/api/v1/admin/leaders/balance", post(balance_http))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceParam {
    #[serde(default)]
    force: bool,
}

/// What a decommission or removal answers.
#[derive(Serialize)]
struct MemberChange {
    node_id: NodeId,
    membership: &'static str,
}

/// `POST /api/v1/admin/nodes/{id}/decommission[?force=true]`: marks the member leaving (202:
/// its replicas move away, then it is removed; `GET /api/v1/cluster` shows the progress).
async fn decommission_http(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    force: Result<Query<ForceParam>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = node_id(&id)?;
    let force = force_param(force)?;
    let state = node
        .change_membership(MetaCommand::Decommission { id, force })
        .await?;
    tracing::info!(node = id, force, "decommission started");
    let body = MemberChange {
        node_id: id,
        membership: state.as_str(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `DELETE /api/v1/admin/nodes/{id}[?force=true]`: removes a member that is down now; its
/// replicas are rebuilt from the live ones. A member that answers is refused (decommission it,
/// which moves its replicas first, or stop it).
async fn remove_http(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    force: Result<Query<ForceParam>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = node_id(&id)?;
    let force = force_param(force)?;
    let state = node.cluster.meta_store.state();
    let member = state.member_state(id);
    if matches!(member, Some(MemberState::Active | MemberState::Leaving))
        && node.member_answers(id).await
    {
        let what = if member == Some(MemberState::Leaving) {
            "it is being decommissioned and is removed once its replicas have moved; \
             wait for that, or stop it and remove it then"
        } else {
            "decommission it (its replicas move first), or stop it and remove it then"
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "node_up",
            format!("node {id} is up; {what}"),
        ));
    }
    let state = node
        .change_membership(MetaCommand::RemoveNode { id, force })
        .await?;
    tracing::info!(node = id, force, "node removed");
    let body = MemberChange {
        node_id: id,
        membership: state.as_str(),
    };
    Ok(Json(body).into_response())
}

/// `POST /api/v1/admin/leaders/balance`: one look of the leader balancer, now, from this node.
async fn balance_http(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    if !node.is_ready() {
        return Err(ApiError::unavailable("not_ready", "the node is starting"));
    }
    let outcome = super::leaders::balance_once(&node, Duration::from_secs(5))
        .await
        .map_err(|why| ApiError::unavailable("balance_failed", why))?;
    Ok(Json(outcome).into_response())
}

fn node_id(id: &str) -> Result<NodeId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request("invalid_node_id", format!("{id:?} is not a node id")))
}

fn force_param(
    q: Result<Query<ForceParam>, axum::extract::rejection::QueryRejection>,
) -> Result<bool, ApiError> {
    q.map(|Query(p)| p.force)
        .map_err(|e| ApiError::bad_request("invalid_parameters", e.body_text()))
}

impl From<MembershipRefusal> for ApiError {
    fn from(refusal: MembershipRefusal) -> Self {
        let code = match refusal {
            MembershipRefusal::NotMember(_) => {
                return ApiError::new(StatusCode::NOT_FOUND, "node_not_found", refusal.to_string())
            }
            MembershipRefusal::Removed(_) => "node_removed",
            MembershipRefusal::TooFewMembers { .. } => "too_few_members",
            MembershipRefusal::LastMember(_) => "last_member",
        };
        ApiError::new(StatusCode::CONFLICT, code, refusal.to_string())
    }
}

impl Node {
    /// Proposes a decommission or removal; answers the member's state once committed, or the
    /// refusal.
    async fn change_membership(&self, command: MetaCommand) -> Result<MemberState, ApiError> {
        match self.propose_meta(command).await {
            Ok(MetaReply::Membership(Ok(state))) => Ok(state),
            Ok(MetaReply::Membership(Err(refusal))) => Err(refusal.into()),
            Ok(other) => Err(ApiError::internal(
                "changing the membership",
                format!("unexpected answer {other:?}"),
            )),
            Err(e) => Err(ApiError::unavailable(
                "metadata_unavailable",
                format!("the membership change was not committed ({e:#}); retry"),
            )),
        }
    }

    /// True when member `id` answers a hello as itself now.
    pub(crate) async fn member_answers(&self, id: NodeId) -> bool {
        if id == self.cluster.me {
            return true;
        }
        let Some(channel) = self.peer_channel(id) else {
            return false;
        };
        let hello: Result<HelloReply, _> = super::call(channel, "hello", &(), ANSWER_TIMEOUT).await;
        hello.is_ok_and(|h| h.node_id == id)
    }

    /// Answers a starting node's [`MemberQuery`] from this node's metadata.
    pub fn answer_member_query(&self, query: &MemberQuery) -> MemberAnswer {
        let state = self.cluster.meta_store.state();
        MemberAnswer {
            cluster_id: self.cluster.cluster_id.clone(),
            state: (query.cluster_id == self.cluster.cluster_id)
                .then(|| state.member_state(query.node_id))
                .flatten(),
        }
    }
}

/// On the metadata leader, after a reconcile round: a leaving member that no shard's group
/// names any more (every shard reported by one of its placed replicas, whose view is the
/// group's) is removed.
pub async fn finish_leaving(
    node: &Arc<Node>,
    state: &ClusterState,
    statuses: &[ShardStatus],
) -> anyhow::Result<()> {
    if state.leaving.is_empty() {
        return Ok(());
    }
    let trusted = statuses.iter().all(|s| s.placed.contains(&s.reported_by));
    if !trusted {
        return Ok(());
    }
    for id in &state.leaving {
        let named = statuses
            .iter()
            .any(|s| s.replicas.contains(id) || s.learners.contains(id));
        if named {
            continue;
        }
        let reply = node
            .propose_meta(MetaCommand::RemoveNode {
                id: *id,
                force: false,
            })
            .await?;
        tracing::info!(
            node = id,
            ?reply,
            "decommissioned node holds no replica; removed"
        );
    }
    Ok(())
}

/// Watches this node's own record: once the metadata it applied says it was removed, it hands
/// the metadata group's leadership over if it holds it (the new leader drops it from the group)
/// and then asks the process to stop ([`super::ClusterHandle::wait_removed`]).
pub fn spawn_removal_watch(node: Arc<Node>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = node.cluster.meta_store.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = changes.changed() => {}
            }
            let state = node.cluster.meta_store.state();
            if !state.removed.contains_key(&node.cluster.me) {
                continue;
            }
            let meta = node.cluster.meta_raft.metrics().borrow_watched().clone();
            if meta.current_leader == Some(node.cluster.me) {
                let to = meta
                    .membership_config
                    .membership()
                    .voter_ids()
                    .find(|id| *id != node.cluster.me && !state.removed.contains_key(id));
                if let Some(to) = to {
                    if let Err(e) = node.cluster.meta_raft.trigger().transfer_leader(to).await {
                        tracing::debug!(error = %e, "handing the metadata group over");
                    }
                }
                continue;
            }
            tracing::warn!(
                node = node.cluster.me,
                cluster = %node.cluster.cluster_id,
                "this node was removed from the cluster; stopping"
            );
            node.cluster.mark_removed();
            return;
        }
    })
}

/// Before a node with a data directory starts its groups: asks the `--join` address and the
/// members its own metadata names whether this node is still a member, and refuses to start
/// when one says it was removed (a removed node's groups must not campaign among the members).
/// Nobody answering is no refusal: the node starts from its own directory, as before.
pub async fn refuse_if_removed(
    data_dir: &std::path::Path,
    cluster_id: &str,
    node_id: NodeId,
    join: Option<&str>,
) -> anyhow::Result<()> {
    let own = super::meta_store::read_state(&data_dir.join("cluster"))?;
    let removed = |why: &str| {
        anyhow::anyhow!(
            "node {node_id} was removed from cluster {cluster_id} ({why}); a removed node \
             cannot rejoin with its old data directory: delete {} and start it with --join to \
             join as a new node",
            data_dir.display()
        )
    };
    if own.removed.contains_key(&node_id) {
        return Err(removed("its own metadata says so"));
    }
    let mut addrs: Vec<String> = join.map(String::from).into_iter().collect();
    addrs.extend(
        own.members
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(_, m)| m.peer_addr.clone()),
    );
    addrs.dedup();
    let query = MemberQuery {
        cluster_id: cluster_id.to_string(),
        node_id,
    };
    let asks = addrs.iter().map(|addr| {
        let query = query.clone();
        async move {
            let answer: Result<MemberAnswer, _> =
                super::call_addr(addr, "member_state", &query, Duration::from_secs(2)).await;
            (addr.clone(), answer)
        }
    });
    for (addr, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(a) if a.cluster_id == cluster_id && a.state == Some(MemberState::Removed) => {
                return Err(removed(&format!("the member at {addr} says so")));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%addr, error = %e, "member not asked whether this node was removed")
            }
        }
    }
    Ok(())
}
