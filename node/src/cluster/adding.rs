//! Adding a node by invitation. A node started with `veil serve --await-add` and no data
//! directory binds its listeners and serves only its invitation ([`await_add`]) until a member
//! invites it: `veil admin nodes add HTTP_ADDR` asks any member (`POST /api/v1/admin/nodes`),
//! which calls the new node's `POST /api/v1/admin/join` with its own peer address. The new node
//! then joins through that address exactly as `--join` does ([`join_and_record`]: admitted by
//! the metadata group, its identity written to its new directory), answers the member, and
//! starts as a member that takes its share of the shards by itself. A running member answers
//! an invitation with 409 `already_a_member`.
//!
//! An invitation carries no secret: the PII keys never travel, and a node with other keys is
//! refused by the cluster as on `--join`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use veil_raft::NodeId;

use super::{JoinError, JoinRequest, Member};
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::node::Node;

/// How long an invited node keeps retrying its join while the metadata group has no leader
/// (an election: a few seconds at most); past it the invitation answers 503.
const INVITED_JOIN_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a member waits for an invited node's answer: its join, plus the time to connect.
/// Below `veil admin`'s default 10 s per answer, so the CLI hears the member's reason.
const INVITE_TIMEOUT: Duration = Duration::from_secs(8);

/// The identity a joined node records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub shards: u32,
}

/// Why a join did not leave this node with an identity.
#[derive(Debug, thiserror::Error)]
pub enum JoinAndRecordError {
    /// The cluster did not admit it.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// This node could not load its keys or write its directory, or its `--shards` differs
    /// from the cluster's.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// Asks the cluster behind `join` (a member's peer address) to admit this node, within
/// `timeout`, and records the identity it is given in a new data directory (nothing is written
/// when the cluster cannot be reached or refuses).
pub async fn join_and_record(
    config: &NodeConfig,
    member: &Member,
    join: &str,
    timeout: Duration,
) -> Result<Joined, JoinAndRecordError> {
    let keys = match veil_node::pii::keys::KeyRing::from_env().map_err(anyhow::Error::from)? {
        Some(k) => k,
        None => veil_node::pii::keys::KeyRing::load_or_create(&config.key_file)
            .map_err(anyhow::Error::from)?,
    };
    let request = JoinRequest {
        member: member.clone(),
        key_fingerprint: keys.fingerprint(),
        node_id: config.node_id,
    };
    let (cluster_id, node_id, shards) = super::join(join, &request, timeout).await?;
    if let Some(asked) = config.shards.filter(|s| *s != shards) {
        return Err(
            anyhow::anyhow!("--shards {asked} differs from the cluster's {shards} shards").into(),
        );
    }
    crate::datadir::create_joined(&config.data_dir, cluster_id.clone(), node_id, shards)?;
    tracing::info!(%cluster_id, node_id, shards, "joined the cluster");
    Ok(Joined {
        cluster_id,
        node_id,
        shards,
    })
}

/// A member's invitation: join through `join`, a member of `cluster_id` with `shards` shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    /// The inviting member's peer address.
    pub join: String,
    pub cluster_id: String,
    pub shards: u32,
}

/// An awaiting node: what it needs to join when invited.
struct Awaiting {
    config: NodeConfig,
    member: Member,
    /// The identity once joined; held while an invitation is served, so a second one waits
    /// for the first's outcome.
    joined: tokio::sync::Mutex<Option<Joined>>,
    /// Set once joined: the awaiting server stops.
    done: tokio::sync::watch::Sender<bool>,
}

/// Serves a node started with `--await-add` and no data directory on its HTTP listener until a
/// member's invitation has made it a member with a directory; hands the listener back for the
/// node's own API. Prints `veil awaiting add http=… grpc=… peer=…` once it listens.
pub async fn await_add(
    config: &NodeConfig,
    member: &Member,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<tokio::net::TcpListener> {
    use std::io::Write;
    // Two handles on one socket: the awaiting server's, dropped when it stops, and the one
    // the node serves on afterwards (connections waiting in the backlog stay there).
    let socket = listener.into_std()?;
    let serving = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
    let listener = tokio::net::TcpListener::from_std(socket)?;
    let (done, mut stopped) = tokio::sync::watch::channel(false);
    let state = Arc::new(Awaiting {
        config: config.clone(),
        member: member.clone(),
        joined: tokio::sync::Mutex::new(None),
        done,
    });
    let app = Router::new()
        .route("/api/v1/admin/join", post(invited))
        .route("/api/v1/health", get(awaiting_health))
        .fallback(awaiting_other)
        .with_state(state);
    println!(
        "veil awaiting add http={} grpc={} peer={}",
        member.http_addr, member.grpc_addr, member.peer_addr
    );
    std::io::stdout().flush()?;
    tracing::info!(http_addr = %member.http_addr, "awaiting a member's invitation (veil admin nodes add)");
    axum::serve(serving, app)
        .with_graceful_shutdown(async move {
            // An error means the sender is gone, which also means stop.
            let _ = stopped.wait_for(|joined| *joined).await;
        })
        .await?;
    Ok(listener)
}

/// `POST /api/v1/admin/join` on an awaiting node: joins through the inviting member.
async fn invited(
    State(s): State<Arc<Awaiting>>,
    body: Result<Json<Invitation>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(invitation) =
        body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    let mut joined = s.joined.lock().await;
    if let Some(j) = joined.as_ref() {
        // The same cluster asking again (its first answer lost) hears the same identity.
        if j.cluster_id == invitation.cluster_id {
            return Ok(Json(j.clone()).into_response());
        }
        return Err(already_a_member(j.node_id, &j.cluster_id));
    }
    if let Some(asked) = s.config.shards.filter(|n| *n != invitation.shards) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "shards_differ",
            format!(
                "this node was started with --shards {asked} and the cluster has {}; restart it \
                 without --shards",
                invitation.shards
            ),
        ));
    }
    match join_and_record(&s.config, &s.member, &invitation.join, INVITED_JOIN_TIMEOUT).await {
        Ok(j) => {
            *joined = Some(j.clone());
            s.done.send_replace(true);
            Ok(Json(j).into_response())
        }
        Err(JoinAndRecordError::Join(JoinError::Refused { why, .. })) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "join_refused",
            format!("the cluster refused this node: {why}"),
        )),
        Err(JoinAndRecordError::Join(e)) => {
            Err(ApiError::unavailable("join_unavailable", e.to_string()))
        }
        Err(JoinAndRecordError::Local(e)) => {
            Err(ApiError::internal("joining the cluster", format!("{e:#}")))
        }
    }
}

/// `GET /api/v1/health` on an awaiting node: not serving yet.
async fn awaiting_health() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"status": "awaiting_add"})),
    )
        .into_response()
}

/// Anything else an awaiting node is asked.
async fn awaiting_other() -> ApiError {
    ApiError::unavailable(
        "awaiting_add",
        "this node is not a member of a cluster yet: add it with `veil admin --addr MEMBER \
         nodes add THIS_HTTP_ADDR`",
    )
}

fn already_a_member(node_id: NodeId, cluster_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_a_member",
        format!(
            "it is node {node_id} of cluster {cluster_id} already (a node is added once, started \
             with --await-add and no data directory)"
        ),
    )
}

/// The member routes of adding a node (merged into the HTTP router).
pub fn router() -> Router<Arc<Node>> {
    Router::new()
        .route("/api/v1/admin/nodes", post(add_http))
        .route("/api/v1/admin/join", post(member_invited))
}

/// `POST /api/v1/admin/join` on a member: it is one already.
async fn member_invited(State(node): State<Arc<Node>>) -> ApiError {
    already_a_member(node.cluster.me, &node.cluster.cluster_id)
}

/// The body of `POST /api/v1/admin/nodes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNode {
    /// The new node's HTTP address (HOST:PORT), where it awaits its invitation.
    http_addr: String,
}

/// What adding a node answers.
#[derive(Serialize)]
struct Added {
    node_id: NodeId,
    http_addr: String,
    cluster_id: String,
    membership: &'static str,
}

/// `POST /api/v1/admin/nodes` with `{"http_addr": "HOST:PORT"}`: invites the node awaiting there
/// (`veil serve --await-add`) to join through this member; 201 once it is a member, with its
/// id. It then takes its share of the replicas (`GET /api/v1/cluster` shows the moves).
async fn add_http(
    State(node): State<Arc<Node>>,
    body: Result<Json<AddNode>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(AddNode { http_addr }) =
        body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    let addr = http_addr.trim();
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !addr.contains('/');
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_http_addr",
            format!("http_addr {addr:?} is not HOST:PORT"),
        )
        .with_field("http_addr"));
    }
    if !node.is_ready() {
        return Err(ApiError::unavailable("not_ready", "the node is starting"));
    }
    let state = node.cluster.meta_store.state();
    if let Some((id, _)) = state.members.iter().find(|(_, m)| m.http_addr == addr) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_a_member",
            format!("node {id} of this cluster listens at {addr} already"),
        ));
    }
    let invitation = Invitation {
        join: node.cluster.member.peer_addr.clone(),
        cluster_id: node.cluster.cluster_id.clone(),
        shards: node.shard_map.shard_count(),
    };
    let client = reqwest::Client::builder()
        .timeout(INVITE_TIMEOUT)
        .build()
        .map_err(|e| ApiError::internal("making an HTTP client", e))?;
    let sent = client
        .post(format!("http://{addr}/api/v1/admin/join"))
        .json(&invitation)
        .send()
        .await;
    let response = sent.map_err(|e| {
        ApiError::unavailable(
            "node_unreachable",
            format!(
                "no node answers at {addr} ({e}); start it there with `veil serve --await-add \
                 --http-addr {addr}` and no data directory, then retry"
            ),
        )
    })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == StatusCode::OK {
        let joined: Joined = serde_json::from_value(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "unexpected_answer",
                format!("the node at {addr} answered its invitation with something else: {e}"),
            )
        })?;
        tracing::info!(node_id = joined.node_id, %addr, "node added");
        let added = Added {
            node_id: joined.node_id,
            http_addr: addr.to_string(),
            cluster_id: joined.cluster_id,
            membership: "active",
        };
        return Ok((StatusCode::CREATED, Json(added)).into_response());
    }
    let message = body["error"]["message"].as_str().unwrap_or_default();
    let refused = |code| {
        ApiError::new(
            StatusCode::CONFLICT,
            code,
            format!("the node at {addr} cannot be added: {message}"),
        )
    };
    Err(match (status, body["error"]["code"].as_str()) {
        (StatusCode::CONFLICT, Some("already_a_member")) => refused("already_a_member"),
        (StatusCode::CONFLICT, Some("shards_differ")) => refused("shards_differ"),
        (StatusCode::CONFLICT, Some("join_refused")) => refused("join_refused"),
        (StatusCode::SERVICE_UNAVAILABLE, _) => ApiError::unavailable(
            "join_unavailable",
            format!("the node at {addr} could not join now: {message}"),
        ),
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "unexpected_answer",
            format!(
                "the node at {addr} answered {status} to its invitation (is it a Veil node \
                 started with --await-add?) {message}"
            ),
        ),
    })
}
