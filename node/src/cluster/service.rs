//! The receiving side of the nodes' own calls (`veil.peer.v1.Cluster`), served on the peer
//! address beside the Raft transport: `hello`, `member_state`, `join`, `meta_propose`, `append`,
//! `ensure_replicas`, `read_index`, `leaf` (a question about one shard, answered from this
//! node's replica: `reads.rs`), and `index_copy` and `index_file` (a follower copying this
//! leader's index commit: `index_copy.rs`).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};
use veil_proto::peer::cluster_server::Cluster as ClusterRpc;
use veil_proto::peer::{ClusterCall, ClusterReply};

use super::{EnsureReplicas, ForwardRequest, HelloReply, JoinRequest, MetaCommand};
use crate::node::Node;

/// Serves the cluster calls of one node.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    bincode::deserialize(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))
}

fn encode<T: Serialize>(answer: &T) -> Result<Response<ClusterReply>, Status> {
    let payload = bincode::serialize(answer)
        .map_err(|e| Status::internal(format!("unencodable answer: {e}")))?;
    Ok(Response::new(ClusterReply { payload }))
}

#[tonic::async_trait]
impl ClusterRpc for ClusterService {
    async fn call(&self, request: Request<ClusterCall>) -> Result<Response<ClusterReply>, Status> {
        let call = request.into_inner();
        let node = &self.node;
        match call.kind.as_str() {
            "hello" => encode(&HelloReply {
                cluster_id: node.cluster.cluster_id.clone(),
                node_id: node.cluster.me,
            }),
            "member_state" => {
                let query: super::membership::MemberQuery = decode(&call.payload)?;
                encode(&node.answer_member_query(&query))
            }
            "join" => {
                let request: JoinRequest = decode(&call.payload)?;
                encode(&node.handle_join(request).await)
            }
            "meta_propose" => {
                let command: MetaCommand = decode(&call.payload)?;
                encode(&node.propose_meta_here(command).await)
            }
            "append" => {
                let request: ForwardRequest = decode(&call.payload)?;
                encode(&node.propose_here(request).await)
            }
            "ensure_replicas" => {
                let request: EnsureReplicas = decode(&call.payload)?;
                encode(&super::reconcile::ensure_replicas_here(node, request).await)
            }
            "transfer_leader" => {
                let m: super::leaders::LeaderMove = decode(&call.payload)?;
                encode(&super::leaders::transfer_here(node, m).await)
            }
            "shard_status" => {
                let shard: u32 = decode(&call.payload)?;
                encode(&super::status::shard_status_here(node, shard))
            }
            "index_copy" => {
                let request: super::index_copy::CopyRequest = decode(&call.payload)?;
                encode(&node.index_copy_here(request).await)
            }
            "index_file" => {
                let request: super::index_copy::FileRequest = decode(&call.payload)?;
                encode(&node.index_file_here(request).await)
            }
            "read_index" => {
                let shard: u32 = decode(&call.payload)?;
                encode(&node.read_index_here(shard).await)
            }
            "leaf" => {
                // Encoded on the blocking thread that answered (it can be megabytes).
                let leaf: crate::leaf::LeafCall<crate::leaf::LeafRequest> = decode(&call.payload)?;
                Ok(Response::new(ClusterReply {
                    payload: node.answer_leaf_call(leaf).await,
                }))
            }
            other => Err(Status::unimplemented(format!(
                "unknown cluster call {other}"
            ))),
        }
    }
}
