//! The Raft transport between nodes, client side: [`Peers`] keeps one gRPC channel (one HTTP/2
//! connection, reconnected by tonic when it drops) per peer node, shared by every group and by
//! the node's own calls; [`PeerNetwork`] is a group's openraft network factory over it.
//!
//! Messages are openraft's own request and answer types encoded with bincode inside the
//! `veil.peer.v1.RaftTransport` service; both ends are the same build. Snapshots travel as a
//! client stream of chunks ([`SNAPSHOT_CHUNK_BYTES`] each, at most two queued), checksummed,
//! as their own HTTP/2 stream, so the group's appends and votes keep flowing beside them; the
//! chunks of every group's snapshots together go no faster than the node's [`RateLimit`].

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::SinkExt;
use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};
use veil_proto::peer::raft_transport_client::RaftTransportClient;
use veil_proto::peer::{RaftCall, RaftKind, RaftReply, SnapshotChunk};

use crate::alias::Vote;
use crate::{GroupId, NodeId, RateLimit, SnapshotData, TypeConfig};

/// The size of one snapshot chunk on the wire.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest message a peer call may carry (an AppendEntries of many large entries).
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 << 20;

/// One channel per peer node, by node id, shared by every group's network and the node's own
/// calls. A channel connects lazily and reconnects by itself after a failure.
#[derive(Clone, Default)]
pub struct Peers {
    inner: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    /// Every member's peer address as the cluster's metadata has it: preferred over the address
    /// a group's membership recorded (which may be older).
    book: Arc<Mutex<HashMap<NodeId, String>>>,
    /// The bound on the bytes of snapshots sent, shared by every group's sends.
    snapshot_send: RateLimit,
    /// Snapshot bytes sent so far (for metrics).
    snapshot_bytes_sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Peers whose snapshot sends, all groups together, take at most what `snapshot_send`
    /// allows (`Peers::default()` has no bound).
    pub fn new(snapshot_send: RateLimit) -> Peers {
        Peers {
            snapshot_send,
            ..Peers::default()
        }
    }

    /// Bytes of snapshot data sent to peers since the node started.
    pub fn snapshot_bytes_sent(&self) -> u64 {
        self.snapshot_bytes_sent.load(Ordering::Relaxed)
    }

    /// The channel to node `id` at `addr` (`HOST:PORT`), made on first use; a new address
    /// replaces the old channel.
    pub fn channel(&self, id: NodeId, addr: &str) -> Result<Channel, String> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, channel)) = map.get(&id) {
            if known == addr {
                return Ok(channel.clone());
            }
        }
        let channel = endpoint(addr)?.connect_lazy();
        map.insert(id, (addr.to_string(), channel.clone()));
        Ok(channel)
    }

    /// Replaces the address book (every member's peer address).
    pub fn set_addresses(&self, book: HashMap<NodeId, String>) {
        *self.book.lock().unwrap_or_else(|p| p.into_inner()) = book;
    }

    /// Node `id`'s peer address in the book.
    pub fn address(&self, id: NodeId) -> Option<String> {
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}

/// The endpoint of a peer address, with the transport's timeouts.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| format!("bad peer address {addr}: {e}"))
}

/// The openraft network factory of one group: clients over the node's [`Peers`].
#[derive(Clone, Debug)]
pub struct PeerNetwork {
    group: GroupId,
    peers: Peers,
}

impl PeerNetwork {
    /// The network of `group` over `peers`.
    pub fn new(group: GroupId, peers: Peers) -> Self {
        Self { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(
        &mut self,
        target: NodeId,
        node: &openraft::impls::BasicNode,
    ) -> Self::Network {
        let addr = self
            .peers
            .address(target)
            .unwrap_or_else(|| node.addr.clone());
        PeerClient {
            group: self.group,
            target,
            channel: self.peers.channel(target, &addr),
            snapshot_send: self.peers.snapshot_send.clone(),
            snapshot_bytes_sent: self.peers.snapshot_bytes_sent.clone(),
        }
    }
}

/// A group's client to one peer.
pub struct PeerClient {
    group: GroupId,
    target: NodeId,
    channel: Result<Channel, String>,
    snapshot_send: RateLimit,
    snapshot_bytes_sent: Arc<AtomicU64>,
}

fn unreachable(target: NodeId, why: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::new(&AnyError::error(format!("node {target}: {why}")))
}

fn network(target: NodeId, why: impl std::fmt::Display) -> NetworkError<TypeConfig> {
    NetworkError::new(&AnyError::error(format!("node {target}: {why}")))
}

/// What can go wrong on a call, before openraft's error types are chosen for it.
enum CallError {
    /// No connection could be made (or it broke): back off.
    Unreachable(String),
    /// The call took longer than its time-to-live.
    Timeout(Duration),
    /// Anything else: retry soon.
    Network(String),
}

impl CallError {
    fn from_status(status: tonic::Status) -> CallError {
        match status.code() {
            tonic::Code::Unavailable => CallError::Unreachable(status.message().to_string()),
            _ => CallError::Network(format!("{}: {}", status.code(), status.message())),
        }
    }

    fn rpc(self, target: NodeId, action: RPCTypes) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(why) => RPCError::Unreachable(unreachable(target, why)),
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: target,
                target,
                timeout,
            }),
            CallError::Network(why) => RPCError::Network(network(target, why)),
        }
    }

    fn streaming(self, target: NodeId) -> StreamingError<TypeConfig> {
        match self {
            CallError::Unreachable(why) => StreamingError::Unreachable(unreachable(target, why)),
            CallError::Timeout(timeout) => StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: target,
                target,
                timeout,
            }),
            CallError::Network(why) => StreamingError::Network(network(target, why)),
        }
    }
}

/// Decodes a reply's payload, or its error.
fn decode_reply<T: serde::de::DeserializeOwned>(reply: RaftReply) -> Result<T, CallError> {
    if !reply.error.is_empty() {
        return Err(CallError::Network(reply.error));
    }
    bincode::deserialize(&reply.payload)
        .map_err(|e| CallError::Network(format!("undecodable answer: {e}")))
}

impl PeerClient {
    fn client(&self) -> Result<RaftTransportClient<Channel>, CallError> {
        let channel = self.channel.clone().map_err(CallError::Unreachable)?;
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }

    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: RaftKind,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let payload = bincode::serialize(request)
            .map_err(|e| CallError::Network(format!("unencodable request: {e}")))?;
        let mut client = self.client()?;
        let call = RaftCall {
            group: self.group.0,
            kind: kind as i32,
            payload,
        };
        let reply = tokio::time::timeout(ttl, client.call(call))
            .await
            .map_err(|_| CallError::Timeout(ttl))?
            .map_err(CallError::from_status)?;
        decode_reply(reply.into_inner())
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftKind::Append, &rpc, option.hard_ttl())
            .await
            .map_err(|e| e.rpc(self.target, RPCTypes::AppendEntries))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftKind::Vote, &rpc, option.hard_ttl())
            .await
            .map_err(|e| e.rpc(self.target, RPCTypes::Vote))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftKind::PreVote, &rpc, option.hard_ttl())
            .await
            .map_err(|e| e.rpc(self.target, RPCTypes::Vote))
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftKind::TransferLeader, &rpc, option.hard_ttl())
            .await
            .map_err(|e| e.rpc(self.target, RPCTypes::TransferLeader))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let target = self.target;
        // A live state writes its copy now: that copy's own metadata is what travels.
        let (meta, path, owned) = match snapshot.snapshot {
            SnapshotData::File(path) => (snapshot.meta, path, false),
            SnapshotData::Live(state) => {
                let (meta, path) = tokio::task::spawn_blocking(move || state.write_file())
                    .await
                    .map_err(|e| StreamingError::Network(network(target, e)))?
                    .map_err(|e| {
                        StreamingError::Network(network(
                            target,
                            format!("writing the snapshot: {e}"),
                        ))
                    })?;
                (meta, path, true)
            }
        };
        let sent = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.send_snapshot(&vote, &meta, &path) => sent.map_err(|e| e.streaming(target)),
        };
        if owned {
            // A copy made only for this transfer; failing to delete it only wastes disk.
            let _ = std::fs::remove_file(&path);
        }
        sent
    }
}

impl PeerClient {
    /// Streams the snapshot file at `path` in chunks, with its checksum in the last one.
    async fn send_snapshot(
        &self,
        vote: &Vote,
        meta: &crate::alias::SnapshotMeta,
        path: &PathBuf,
    ) -> Result<SnapshotResponse<TypeConfig>, CallError> {
        let encode = |e: bincode::Error| CallError::Network(format!("unencodable snapshot: {e}"));
        let first = SnapshotChunk {
            group: self.group.0,
            vote: bincode::serialize(vote).map_err(encode)?,
            meta: bincode::serialize(meta).map_err(encode)?,
            ..Default::default()
        };
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| CallError::Network(format!("snapshot file {}: {e}", path.display())))?;
        // At most two chunks wait to be sent: memory stays bounded whatever the snapshot's size.
        let (mut tx, rx) = futures::channel::mpsc::channel::<SnapshotChunk>(2);
        let mut client = self.client()?;
        let call = tokio::spawn(async move { client.install_snapshot(rx).await });
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let feed = async {
            tx.send(first).await.map_err(|_| ())?;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            loop {
                let n = read_full(&mut file, &mut buf).await.map_err(|_| ())?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                // The bound on snapshot sends, taken before the chunk goes: a move streams no
                // faster than `--snapshot-send-bytes-per-sec`, whatever the file's size.
                self.snapshot_send.take(n as u64).await;
                self.snapshot_bytes_sent
                    .fetch_add(n as u64, Ordering::Relaxed);
                let chunk = SnapshotChunk {
                    data: buf[..n].to_vec(),
                    ..Default::default()
                };
                tx.send(chunk).await.map_err(|_| ())?;
            }
            tx.send(SnapshotChunk {
                last: true,
                checksum: hasher.digest(),
                ..Default::default()
            })
            .await
            .map_err(|_| ())
        };
        let fed = feed.await;
        drop(tx);
        let reply = call
            .await
            .map_err(|e| CallError::Network(format!("snapshot task: {e}")))?
            .map_err(CallError::from_status)?;
        if fed.is_err() {
            return Err(CallError::Network(
                "the snapshot stream closed early".to_string(),
            ));
        }
        decode_reply(reply.into_inner())
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let read = file.read(&mut buf[n..]).await?;
        if read == 0 {
            break;
        }
        n += read;
    }
    Ok(n)
}
