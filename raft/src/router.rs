//! The Raft transport between nodes, server side: [`Router`] serves `veil.peer.v1.RaftTransport`
//! and hands each message to the group it names, whatever that group's state machine is.
//!
//! A snapshot arrives as a stream of chunks written to a file in the router's receive
//! directory as they come (memory bounded by one chunk); the file is installed only when its
//! checksum matches, and removed after the install.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use futures::StreamExt;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};
use veil_proto::peer::raft_transport_server::RaftTransport;
use veil_proto::peer::{RaftCall, RaftKind, RaftReply, SnapshotChunk};

use crate::alias::{SnapshotMeta, Vote};
use crate::{GroupId, SnapshotData, TypeConfig};

/// What the router needs of a running group: openraft's receiving side.
pub trait GroupEndpoint: Send + Sync {
    /// Handles an AppendEntries.
    fn append(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<TypeConfig>, String>>;
    /// Handles a Vote.
    fn vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<VoteResponse<TypeConfig>, String>>;
    /// Handles a PreVote.
    fn pre_vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<VoteResponse<TypeConfig>, String>>;
    /// Handles a leader's request that this node take over (a graceful stop).
    fn transfer_leader(
        &self,
        rpc: TransferLeaderRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<TransferLeaderResponse<TypeConfig>, String>>;
    /// Installs the snapshot file at `path` under `meta`.
    fn install(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        path: PathBuf,
    ) -> BoxFuture<'_, Result<SnapshotResponse<TypeConfig>, String>>;
}

impl<SM> GroupEndpoint for openraft::Raft<TypeConfig, SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    fn append(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<TypeConfig>, String>> {
        Box::pin(async move { self.append_entries(rpc).await.map_err(|e| e.to_string()) })
    }

    fn vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<VoteResponse<TypeConfig>, String>> {
        Box::pin(async move {
            openraft::Raft::vote(self, rpc)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn pre_vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<VoteResponse<TypeConfig>, String>> {
        Box::pin(async move {
            openraft::Raft::pre_vote(self, rpc)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn transfer_leader(
        &self,
        rpc: TransferLeaderRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<TransferLeaderResponse<TypeConfig>, String>> {
        Box::pin(async move {
            self.handle_transfer_leader(rpc)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn install(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        path: PathBuf,
    ) -> BoxFuture<'_, Result<SnapshotResponse<TypeConfig>, String>> {
        Box::pin(async move {
            let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> {
                meta,
                snapshot: SnapshotData::File(path),
            };
            self.install_full_snapshot(vote, snapshot)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The groups running on this node, by id, and where received snapshots are written.
#[derive(Clone)]
pub struct Router {
    groups: Arc<RwLock<HashMap<GroupId, Arc<dyn GroupEndpoint>>>>,
    receive_dir: PathBuf,
    /// Counts snapshots received and installed (for metrics).
    pub snapshots_received: Arc<std::sync::atomic::AtomicU64>,
    /// When each group last took an AppendEntries (a heartbeat included) from its leader.
    heard: Arc<std::sync::Mutex<HashMap<GroupId, std::time::Instant>>>,
}

impl Router {
    /// A router with no groups yet; received snapshots go to `receive_dir` (created on use).
    pub fn new(receive_dir: PathBuf) -> Self {
        Self {
            groups: Default::default(),
            receive_dir,
            snapshots_received: Default::default(),
            heard: Default::default(),
        }
    }

    /// Routes `group`'s messages to `endpoint` from now on.
    pub fn add(&self, group: GroupId, endpoint: Arc<dyn GroupEndpoint>) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, endpoint);
    }

    /// How long ago `group` last took an AppendEntries from a leader (None: never since start).
    pub fn since_leader_heard(&self, group: GroupId) -> Option<std::time::Duration> {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .map(|t| t.elapsed())
    }

    fn group(&self, group: u32) -> Result<Arc<dyn GroupEndpoint>, String> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&GroupId(group))
            .cloned()
            .ok_or_else(|| format!("group {group} does not run on this node"))
    }

    async fn handle(&self, call: RaftCall) -> Result<Vec<u8>, String> {
        let group = self.group(call.group)?;
        let bad = |e: bincode::Error| format!("undecodable request: {e}");
        let encode = |e: bincode::Error| format!("unencodable answer: {e}");
        match RaftKind::try_from(call.kind) {
            Ok(RaftKind::Append) => {
                let rpc = bincode::deserialize(&call.payload).map_err(bad)?;
                let response = group.append(rpc).await?;
                if response.is_success() {
                    self.heard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(GroupId(call.group), std::time::Instant::now());
                }
                bincode::serialize(&response).map_err(encode)
            }
            Ok(RaftKind::Vote) => {
                let rpc = bincode::deserialize(&call.payload).map_err(bad)?;
                bincode::serialize(&group.vote(rpc).await?).map_err(encode)
            }
            Ok(RaftKind::PreVote) => {
                let rpc = bincode::deserialize(&call.payload).map_err(bad)?;
                bincode::serialize(&group.pre_vote(rpc).await?).map_err(encode)
            }
            Ok(RaftKind::TransferLeader) => {
                let rpc = bincode::deserialize(&call.payload).map_err(bad)?;
                bincode::serialize(&group.transfer_leader(rpc).await?).map_err(encode)
            }
            _ => Err(format!("unknown raft call kind {}", call.kind)),
        }
    }

    async fn receive(&self, mut chunks: Streaming<SnapshotChunk>) -> Result<Vec<u8>, String> {
        let first = chunks
            .next()
            .await
            .ok_or("empty snapshot stream")?
            .map_err(|e| format!("snapshot stream: {e}"))?;
        let group = self.group(first.group)?;
        let vote: Vote =
            bincode::deserialize(&first.vote).map_err(|e| format!("snapshot vote: {e}"))?;
        let meta: SnapshotMeta =
            bincode::deserialize(&first.meta).map_err(|e| format!("snapshot meta: {e}"))?;
        tokio::fs::create_dir_all(&self.receive_dir)
            .await
            .map_err(|e| format!("snapshot directory: {e}"))?;
        let path = self.receive_dir.join(format!(
            "group-{}-{}.snap",
            first.group,
            uuid::Uuid::now_v7()
        ));
        let received = async {
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| format!("snapshot file: {e}"))?;
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            loop {
                let chunk = chunks
                    .next()
                    .await
                    .ok_or("the snapshot stream ended before its last chunk")?
                    .map_err(|e| format!("snapshot stream: {e}"))?;
                if chunk.last {
                    if chunk.checksum != hasher.digest() {
                        return Err("snapshot checksum mismatch".to_string());
                    }
                    break;
                }
                hasher.update(&chunk.data);
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| format!("snapshot write: {e}"))?;
            }
            file.sync_all()
                .await
                .map_err(|e| format!("snapshot fsync: {e}"))?;
            Ok::<_, String>(())
        }
        .await;
        let installed = match received {
            Ok(()) => group.install(vote, meta, path.clone()).await,
            Err(e) => Err(e),
        };
        // The file is ours whatever happened: installed (the state machine copied it in) or not.
        let _ = tokio::fs::remove_file(&path).await;
        let response = installed?;
        self.snapshots_received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bincode::serialize(&response).map_err(|e| format!("unencodable answer: {e}"))
    }
}

fn reply(result: Result<Vec<u8>, String>) -> Response<RaftReply> {
    Response::new(match result {
        Ok(payload) => RaftReply {
            payload,
            error: String::new(),
        },
        Err(error) => RaftReply {
            payload: Vec::new(),
            error,
        },
    })
}

#[tonic::async_trait]
impl RaftTransport for Router {
    async fn call(&self, request: Request<RaftCall>) -> Result<Response<RaftReply>, Status> {
        Ok(reply(self.handle(request.into_inner()).await))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        Ok(reply(self.receive(request.into_inner()).await))
    }
}
