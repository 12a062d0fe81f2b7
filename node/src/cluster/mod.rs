//! The cluster: who the members are (the metadata group, `meta.rs`), where each shard's
//! replicas go (`placement.rs`), the settings every node shares (the custom PII patterns,
//! `patterns.rs`), the node-to-node calls beside Raft (joining, forwarded writes, replica
//! changes, questions to a shard's replica: `service.rs` serves them), reads of any shard from
//! its replicas here or elsewhere (`reads.rs`), the loop that keeps every shard's Raft
//! membership equal to its placement (`reconcile.rs`), decommissioning and removing members
//! (`membership.rs`), adding a node by invitation (`veil serve --await-add`, `adding.rs`), moving
//! one replica by hand (`moves.rs`), leader balance (`leaders.rs`), and followers copying
//! their leader's index commits instead of indexing (`index_copy.rs`).
//!
//! Every call travels over the node's [`veil_raft::Peers`]: one connection per pair of nodes
//! carries Raft messages of every group and these calls alike.

pub mod adding;
pub mod index_copy;
pub mod leaders;
pub mod membership;
pub mod meta;
pub mod meta_store;
pub mod moves;
pub mod patterns;
pub mod placement;
pub mod reads;
pub mod reconcile;
pub mod routing;
pub mod service;
pub mod status;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use veil_proto::peer::cluster_client::ClusterClient;
use veil_proto::peer::ClusterCall;
use veil_raft::NodeId;

pub use meta::{Member, MetaCommand, MetaReply, META_GROUP};
pub use meta_store::MetaStore;
pub use routing::ClusterHandle;

/// The metadata group's Raft handle.
pub type MetaRaft = veil_raft::alias::Raft<meta_store::MetaStateMachine>;

/// A node asking to join, sent to any member's peer address (forwarded to the metadata
/// group's leader by whoever receives it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The joining node's addresses.
    pub member: Member,
    /// `KeyRing::fingerprint` of its PII keys: a node with other keys is refused.
    pub key_fingerprint: String,
    /// The id it asks for (`--node-id`), or None for the next free one.
    pub node_id: Option<NodeId>,
}

/// The answer to a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinReply {
    /// Admitted: the identity to record in the data directory.
    Joined {
        cluster_id: String,
        node_id: NodeId,
        shards: u32,
    },
    /// Refused, with the reason (another cluster's keys, an id or address taken).
    Refused(String),
    /// The metadata group has no leader right now; retry.
    Unavailable(String),
}

/// Who a node is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    pub cluster_id: String,
    pub node_id: NodeId,
}

/// A shard's part of an ingest batch, forwarded to the node that leads the shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub shard: u32,
    /// True when the receiving node minted every log_id and this is the first try.
    pub minted: bool,
    /// `ShardCommand::encode` of the entries (already masked).
    pub command: Vec<u8>,
}

/// The answer to a forwarded part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// Committed and applied: `veil_shard::encode_outcomes` of the outcomes.
    Outcomes(Vec<u8>),
    /// This node does not lead the shard (any more); the leader it knows, if any.
    NotLeader(Option<NodeId>),
    /// Could not be done now; the outcome may be unknown (retry as `Append`).
    Unavailable(String),
    /// The part itself is wrong (it would fail again).
    Failed(String),
}

/// Makes sure a shard's group has these replicas as voters (adding each as a learner first and
/// waiting for it to catch up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnsureReplicas {
    pub shard: u32,
    /// Node ids and peer addresses.
    pub wanted: Vec<(NodeId, String)>,
}

/// The answer to [`EnsureReplicas`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EnsureReply {
    /// The group's voters include every wanted replica.
    Done,
    /// A change is already running for the shard.
    Busy,
    /// This node does not lead the shard.
    NotLeader,
    /// The change failed (it is retried on the next round).
    Failed(String),
}

/// A read index for a strong read: the leader's committed log index, confirmed by a quorum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadIndexReply {
    Index(u64),
    NotLeader(Option<NodeId>),
    Failed(String),
}

/// Why a call to another node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connection (refused, reset, unknown address).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time: what the call did is unknown.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The other node answered with an error.
    #[error("{0}")]
    Failed(String),
}

/// Calls `kind` on the node behind `channel` with `request`, waiting at most `timeout`.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    channel: Channel,
    kind: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let payload = call_raw(channel, kind, request, timeout).await?;
    bincode::deserialize(&payload)
        .map_err(|e| CallError::Failed(format!("undecodable answer: {e}")))
}

/// [`call`], returning the answer's bytes undecoded (for answers large enough that decoding
/// belongs on a blocking thread).
pub async fn call_raw<Req: Serialize>(
    channel: Channel,
    kind: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let payload = bincode::serialize(request).map_err(|e| CallError::Failed(e.to_string()))?;
    let mut client = ClusterClient::new(channel)
        .max_decoding_message_size(veil_raft::PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(veil_raft::PEER_MESSAGE_BYTES_MAX);
    let call = ClusterCall {
        kind: kind.to_string(),
        payload,
    };
    let reply = tokio::time::timeout(timeout, client.call(call))
        .await
        .map_err(|_| CallError::Timeout(timeout))?
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable => CallError::Unreachable(status.message().to_string()),
            _ => CallError::Failed(format!("{}: {}", status.code(), status.message())),
        })?;
    Ok(reply.into_inner().payload)
}

/// Calls a node by its peer address alone (a join, before this node has peers of its own).
pub async fn call_addr<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    kind: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let endpoint = veil_raft::endpoint(addr).map_err(CallError::Unreachable)?;
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| CallError::Timeout(timeout))?
        .map_err(|e| CallError::Unreachable(format!("{addr}: {e}")))?;
    call(channel, kind, request, timeout).await
}

/// Why a join did not admit this node.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The cluster said no (another cluster's keys, an id or address taken, a removed id).
    #[error("the cluster at {at} refused this node: {why}")]
    Refused { at: String, why: String },
    /// Its metadata group had no leader until the bound ran out; a retry can work.
    #[error("the cluster at {at} could not admit this node in time: {why}")]
    Unavailable { at: String, why: String },
    /// Nothing that speaks Veil's peer protocol answers at the address.
    #[error("cannot join through {at}: {why} (is a member's --peer-addr there?)")]
    Unreachable { at: String, why: String },
}

/// Asks the cluster behind `join` (any member's peer address) to admit this node, retrying
/// while its metadata group has no leader, up to `timeout`.
pub async fn join(
    join: &str,
    request: &JoinRequest,
    timeout: Duration,
) -> Result<(String, NodeId, u32), JoinError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let at = join.to_string();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer: Result<JoinReply, CallError> =
            call_addr(join, "join", request, left.min(Duration::from_secs(10))).await;
        match answer {
            Ok(JoinReply::Joined {
                cluster_id,
                node_id,
                shards,
            }) => return Ok((cluster_id, node_id, shards)),
            Ok(JoinReply::Refused(why)) => return Err(JoinError::Refused { at, why }),
            Ok(JoinReply::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                tracing::info!(%why, "join: retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(JoinReply::Unavailable(why)) => return Err(JoinError::Unavailable { at, why }),
            Err(e) => {
                return Err(JoinError::Unreachable {
                    at,
                    why: e.to_string(),
                })
            }
        }
    }
}
