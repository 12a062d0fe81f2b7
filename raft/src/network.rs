//! The peer network seam.
//!
//! A one-node cluster has no peers, so its groups never send a Raft message. [`NoPeersNetwork`]
//! is the network factory for that case: asked for a client it hands out one that reports every
//! peer unreachable. The cluster issue replaces it with the gRPC network that carries every group
//! over one connection per peer; nothing else changes, because openraft sees only the trait.

use std::future::Future;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};

use crate::alias::Vote;
use crate::{NodeId, TypeConfig};

/// A network factory for a node that has no peers.
#[derive(Debug, Clone, Default)]
pub struct NoPeersNetwork;

fn unreachable(target: NodeId) -> Unreachable<TypeConfig> {
    Unreachable::new(&AnyError::error(format!(
        "node {target} is not reachable: this node has no peer network configured"
    )))
}

/// A client that reaches no peer.
#[derive(Debug)]
pub struct NoPeerClient {
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NoPeersNetwork {
    type Network = NoPeerClient;

    async fn new_client(
        &mut self,
        target: NodeId,
        _node: &openraft::impls::BasicNode,
    ) -> Self::Network {
        NoPeerClient { target }
    }
}

impl RaftNetworkV2<TypeConfig> for NoPeerClient {
    type SnapshotData = crate::SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(self.target)))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(self.target)))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable(self.target)))
    }
}
