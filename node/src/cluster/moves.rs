//! Moving one shard's replica by hand (`veil admin shards move`): a placement override in the
//! metadata beside the ring, which reconcile honours like any placement.
//!
//! Life of a move:
//! 1. `POST /api/v1/admin/shards/{shard}/move` with `{"from": A, "to": B}` checks here what
//!    only the live groups know (no move of the shard under way, `B` up), then proposes
//!    `MetaCommand::MoveReplica`, whose apply checks the rest alike on every node (the shard
//!    exists, `A` holds one of its placed replicas, `B` none and is active) and records the
//!    shard's replicas with `B` in `A`'s place (`ClusterState::placement_overrides`).
//! 2. Every node's placement names `B` for the shard instead of `A`: the metadata leader's
//!    reconcile adds `B` as a learner, lets it catch up (a snapshot, rate-limited by
//!    `--snapshot-send-bytes-per-sec`, then the log), makes it a voter and only then removes
//!    `A` (`reconcile::ensure_replicas_here`): the group never has fewer voters than before.
//! 3. The override stays, so the ring never moves the replica back; it is dropped when a member
//!    it names is decommissioned or removed, and the shard then falls back to the ring over
//!    the members left.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use veil_raft::NodeId;

use super::meta::MoveRefusal;
use super::{MetaCommand, MetaReply};
use crate::error::ApiError;
use crate::node::Node;

/// The admin route of replica moves (merged into the HTTP router).
pub fn router() -> Router<Arc<Node>> {
    Router::new().route("/api/v1/admin/shards/{shard}/move", post(move_http))
}

/// The body of a move.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    from: NodeId,
    to: NodeId,
}

/// What a move answers.
#[derive(Serialize)]
struct MoveAccepted {
    shard: u32,
    from: NodeId,
    to: NodeId,
    /// The shard's placed replicas now, in priority order (its voters once the move is done).
    placed: Vec<NodeId>,
}

/// `POST /api/v1/admin/shards/{shard}/move`: moves one replica (202: reconcile moves it; `GET
/// /api/v1/cluster` shows the progress).
async fn move_http(
    State(node): State<Arc<Node>>,
    Path(shard): Path<String>,
    body: Result<Json<MoveBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let shard: u32 = shard.parse().map_err(|_| {
        ApiError::bad_request("invalid_shard", format!("{shard:?} is not a shard number"))
    })?;
    let Json(MoveBody { from, to }) =
        body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    let shards = node.shard_map.shard_count();
    if shard < shards {
        settled_before_move(&node, shard).await?;
    }
    let state = node.cluster.meta_store.state();
    let to_is_active = state.member_state(to) == Some(super::meta::MemberState::Active);
    if to_is_active && !node.member_answers(to).await {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "node_down",
            format!("node {to} does not answer; a replica moved there could not catch up"),
        ));
    }
    let command = MetaCommand::MoveReplica {
        shard,
        from,
        to,
        shards,
    };
    let placed = match node.propose_meta(command).await {
        Ok(MetaReply::Move(Ok(placed))) => placed,
        Ok(MetaReply::Move(Err(refusal))) => return Err(refusal.into()),
        Ok(other) => {
            return Err(ApiError::internal(
                "moving a replica",
                format!("unexpected answer {other:?}"),
            ))
        }
        Err(e) => {
            return Err(ApiError::unavailable(
                "metadata_unavailable",
                format!("the move was not committed ({e:#}); retry"),
            ))
        }
    };
    tracing::info!(shard, from, to, ?placed, "replica move started");
    let body = MoveAccepted {
        shard,
        from,
        to,
        placed,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Refuses a move while the shard's group is not yet its placement (another move, a join or a
/// decommission under way) or has no leader: one change of a shard at a time.
async fn settled_before_move(node: &Arc<Node>, shard: u32) -> Result<(), ApiError> {
    let status = super::status::shard_status(node, shard).await;
    let voters: BTreeSet<NodeId> = status.replicas.iter().copied().collect();
    let placed: BTreeSet<NodeId> = status.placed.iter().copied().collect();
    if status.leader.is_none() {
        return Err(ApiError::unavailable(
            "shard_unavailable",
            format!("shard {shard} has no leader now; retry once it has one"),
        ));
    }
    if voters != placed || !status.learners.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "shard_moving",
            format!(
                "shard {shard} is still changing replicas (voters {:?}, learners {:?}, placed \
                 {:?}); wait for it to settle (`veil admin shards show {shard}`)",
                status.replicas, status.learners, status.placed
            ),
        ));
    }
    Ok(())
}

impl From<MoveRefusal> for ApiError {
    fn from(refusal: MoveRefusal) -> Self {
        let (status, code) = match refusal {
            MoveRefusal::UnknownShard { .. } => (StatusCode::NOT_FOUND, "shard_not_found"),
            MoveRefusal::NotMember(_) => (StatusCode::NOT_FOUND, "node_not_found"),
            MoveRefusal::NotAReplica { .. } => (StatusCode::CONFLICT, "not_a_replica"),
            MoveRefusal::AlreadyAReplica { .. } => (StatusCode::CONFLICT, "already_a_replica"),
            MoveRefusal::NotActive { .. } => (StatusCode::CONFLICT, "node_not_active"),
        };
        ApiError::new(status, code, refusal.to_string())
    }
}
