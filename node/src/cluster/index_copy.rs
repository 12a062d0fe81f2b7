//! Followers copy their leader's index instead of indexing (segment replication).
//!
//! Indexing is most of what a replica spends on an entry (tantivy's indexing and merge threads
//! were ~46 % of a follower's CPU, BENCHMARKS.md session 17), and a shard's replicas would all
//! build the same index from the same entries. So only the leader indexes. Each follower
//! applies entries to RocksDB as before (they stay the truth, queued for indexing) and copies
//! the leader's index commits: one task per shard here asks the leader (`index_copy`, a long
//! poll answered at its next commit) for its last commit, writes the segment files it lacks
//! (carried in the answer up to `--index-copy-bytes-max`, the rest read in pieces with
//! `index_file`), waits until it has applied as far as the commit covers, and installs it
//! (`veil_shard::ShardIndex::install_copy`).
//!
//! Who indexes follows the Raft role: the task starts indexing when this node becomes the
//! shard's leader (from its last commit, copied or its own, indexing the entries applied above
//! it from the index queue: `Shard::start_indexing`), and stops it when another node leads.
//! A candidate, or a node that holds no replica, keeps what it has.
//!
//! A follower's default (`any`) read sees the last commit it copied: a commit interval and a
//! copy behind the leader. A strong read on a follower copies a commit that covers the read
//! index first ([`Node::copy_covering`]); the leader commits for it if it must.
//! `--index-shipping false` turns all of it off: every replica indexes its own entries.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver as _;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use veil_raft::NodeId;
use veil_shard::{IndexCopy, ShardId};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::node::Node;

/// A follower's ask for its leader's index commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRequest {
    pub shard: u32,
    /// Answer with a commit above this Raft index (the follower's own), waiting for one.
    pub after: u64,
    /// Answer with a commit covering at least this Raft index, committing for it if needed (a
    /// strong read's read index); 0 for none.
    pub at_least: u64,
    /// How long to wait for such a commit.
    pub wait_ms: u64,
    /// The segment files the follower holds, by name and length: not carried again.
    pub held: Vec<(String, u64)>,
    /// Most file bytes the answer carries.
    pub carry_bytes_max: u64,
}

/// The leader's answer to a [`CopyRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CopyReply {
    Copy(IndexCopy),
    /// No commit above `after` within the wait.
    Unchanged,
    /// This node does not index the shard (it no longer leads it).
    NotIndexing,
    Failed(String),
}

/// A piece of one index file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRequest {
    pub shard: u32,
    pub name: String,
    pub offset: u64,
    pub len: u64,
}

/// The answer to a [`FileRequest`].
#[derive(Clone, Serialize, Deserialize)]
pub enum FileReply {
    Bytes(Vec<u8>),
    /// Merged away since it was listed: the follower asks for the newer commit.
    Gone,
    Failed(String),
}

/// Why a copy round did not install a commit.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the leader answered: {0}")]
    Leader(String),
    #[error("node {0} does not index the shard")]
    NotIndexing(NodeId),
    #[error("the leader's commit changed while it was copied")]
    Stale,
    #[error("no address for node {0}")]
    NoAddress(NodeId),
    #[error("call: {0}")]
    Call(#[from] super::CallError),
    #[error("this replica did not apply up to the copied commit in time")]
    Behind,
    #[error("{0}")]
    Local(String),
}

/// What this node is to one shard, as far as its index goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Leads it: indexes.
    Lead,
    /// Holds a replica the named node leads: copies.
    Follow(NodeId),
    /// No leader known, or no replica here: keeps what it has.
    Wait,
}

fn role_of(m: &veil_raft::alias::RaftServerMetrics, me: NodeId) -> Role {
    let member = m
        .membership_config
        .membership()
        .nodes()
        .any(|(id, _)| *id == me);
    match (m.state, m.current_leader) {
        (ServerState::Leader, Some(l)) if l == me => Role::Lead,
        (ServerState::Follower | ServerState::Learner, Some(l)) if l != me && member => {
            Role::Follow(l)
        }
        _ => Role::Wait,
    }
}

/// One task per shard, keeping its index role equal to its Raft role (none when
/// `--index-shipping false`).
pub fn spawn(node: &Arc<Node>) -> Vec<tokio::task::JoinHandle<()>> {
    if !node.config.index_shipping {
        return Vec::new();
    }
    (0..node.groups.len())
        .map(|i| tokio::spawn(follow_role(node.clone(), i)))
        .collect()
}

async fn follow_role(node: Arc<Node>, i: usize) {
    let me = node.cluster.me;
    let mut server = node.groups[i].raft.server_metrics();
    let mut failures = 0u32;
    loop {
        let role = role_of(&server.borrow_watched(), me);
        match role {
            Role::Lead => {
                if let Err(e) = start_indexing(&node, i).await {
                    tracing::error!(shard_id = i, error = %e, "could not start indexing as the shard's leader");
                }
            }
            Role::Follow(leader) => {
                let shard = node.groups[i].shard.clone();
                if shard.index().is_indexing() {
                    let _ = tokio::task::spawn_blocking(move || shard.stop_indexing()).await;
                    tracing::debug!(
                        shard_id = i,
                        leader,
                        "stopped indexing: copying the leader's commits"
                    );
                }
                let round = async {
                    match node.copy_round(ShardId(i as u32), leader, 0).await {
                        Ok(_) => failures = 0,
                        Err(e) => {
                            Metrics::add(&node.metrics.index_copy_failures, 1);
                            tracing::debug!(shard_id = i, leader, error = %e, "index copy round failed");
                            // 100 ms, doubling to 5 s: a leader that cannot answer is not asked
                            // in a loop.
                            let backoff = Duration::from_millis(100)
                                .saturating_mul(1 << failures.min(6))
                                .min(Duration::from_secs(5));
                            failures = failures.saturating_add(1);
                            tokio::time::sleep(backoff).await;
                        }
                    }
                };
                // The next round, or the next role, whichever comes first.
                tokio::select! {
                    _ = round => {}
                    changed = role_changed(&mut server, me, role) => if changed.is_err() { return },
                }
                continue;
            }
            Role::Wait => {}
        }
        if role_changed(&mut server, me, role).await.is_err() {
            return;
        }
    }
}

/// Waits until this node's role in the group differs from `role` (Err: the group stopped).
async fn role_changed(
    server: &mut veil_raft::alias::ServerMetricsWatch,
    me: NodeId,
    role: Role,
) -> Result<(), ()> {
    loop {
        server.changed().await.map_err(|_| ())?;
        if role_of(&server.borrow_watched(), me) != role {
            return Ok(());
        }
    }
}

/// Runs `f` on a blocking thread (index files are read and written there).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> veil_shard::Result<T> + Send + 'static,
) -> Result<T, CopyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CopyError::Local(e.to_string()))?
        .map_err(|e| CopyError::Local(e.to_string()))
}

async fn start_indexing(node: &Node, i: usize) -> anyhow::Result<()> {
    let shard = node.groups[i].shard.clone();
    if shard.index().is_indexing() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let count = tokio::task::spawn_blocking(move || shard.start_indexing()).await??;
    tracing::info!(
        shard_id = i,
        entry_count = count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "leading the shard: indexing from its last commit"
    );
    Ok(())
}

impl Node {
    /// Copies `leader`'s index commit of `shard` if it is newer than this replica's (waiting
    /// up to `--index-copy-wait-ms` for one), or one covering `at_least`. Returns true when a
    /// commit was installed.
    pub(crate) async fn copy_round(
        &self,
        shard: ShardId,
        leader: NodeId,
        at_least: u64,
    ) -> Result<bool, CopyError> {
        let i = shard.0 as usize;
        let data = self.groups[i].shard.clone();
        let after = data.index().committed_up_to();
        if at_least > 0 && after >= at_least {
            return Ok(false);
        }
        let channel = self
            .peer_channel(leader)
            .ok_or(CopyError::NoAddress(leader))?;
        let held = {
            let data = data.clone();
            blocking(move || Ok(data.index().held_files())).await?
        };
        let wait = Duration::from_millis(self.config.index_copy_wait_ms);
        let request = CopyRequest {
            shard: shard.0,
            after,
            at_least,
            wait_ms: wait.as_millis() as u64,
            held,
            carry_bytes_max: self.config.index_copy_bytes_max,
        };
        let call_timeout = wait + Duration::from_millis(self.config.forward_try_timeout_ms);
        let raw = super::call_raw(channel.clone(), "index_copy", &request, call_timeout).await?;
        let reply: CopyReply = tokio::task::spawn_blocking(move || bincode::deserialize(&raw))
            .await
            .map_err(|e| CopyError::Local(e.to_string()))?
            .map_err(|e| CopyError::Leader(format!("undecodable answer: {e}")))?;
        let mut copy = match reply {
            CopyReply::Copy(copy) => copy,
            CopyReply::Unchanged => return Ok(false),
            CopyReply::NotIndexing => return Err(CopyError::NotIndexing(leader)),
            CopyReply::Failed(why) => return Err(CopyError::Leader(why)),
        };
        // One copy of a shard written at a time (the background round's and a strong read's),
        // but not held over the long poll: a strong read does not wait for an idle leader's.
        let _one = self.index_copy_locks[i].lock().await;
        if copy.raft_index <= data.index().committed_up_to() {
            return Ok(false);
        }
        let mut bytes = 0u64;
        for file in &mut copy.files {
            // Moved out: the install needs only the names and lengths.
            let carried = file.bytes.take();
            bytes += self
                .copy_file(&data, &channel, shard, file, carried, call_timeout)
                .await?;
        }
        // Every hit of the commit must find its entry in this replica's RocksDB.
        self.groups[i]
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(copy.raft_index), "index copy")
            .await
            .map_err(|_| CopyError::Behind)?;
        let installed = blocking(move || data.index().install_copy(&copy)).await?;
        if installed {
            Metrics::add(&self.metrics.index_copies_installed, 1);
            Metrics::add(&self.metrics.index_copy_bytes, bytes);
        }
        Ok(installed)
    }

    /// Writes one file of a copy: from the bytes the answer carried, else, unless this replica
    /// holds it, read from the leader in pieces. Returns the bytes written.
    async fn copy_file(
        &self,
        data: &Arc<veil_shard::Shard>,
        channel: &tonic::transport::Channel,
        shard: ShardId,
        file: &veil_shard::CopiedFile,
        carried: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<u64, CopyError> {
        let (d, name) = (data.clone(), file.name.clone());
        if let Some(bytes) = carried {
            blocking(move || {
                let mut write = d.index().write_copied_file(&name)?;
                write.write(&bytes)?;
                write.finish()
            })
            .await?;
            return Ok(file.len);
        }
        let (d, f) = (data.clone(), file.clone());
        if blocking(move || Ok(d.index().holds_file(&f))).await? {
            return Ok(0);
        }
        let d = data.clone();
        let mut write = blocking(move || d.index().write_copied_file(&name)).await?;
        while write.written() < file.len {
            let request = FileRequest {
                shard: shard.0,
                name: file.name.clone(),
                offset: write.written(),
                len: self.config.index_copy_bytes_max,
            };
            let reply: FileReply =
                super::call(channel.clone(), "index_file", &request, timeout).await?;
            let piece = match reply {
                FileReply::Bytes(piece) if !piece.is_empty() => piece,
                FileReply::Bytes(_) | FileReply::Gone => return Err(CopyError::Stale),
                FileReply::Failed(why) => return Err(CopyError::Leader(why)),
            };
            write = blocking(move || write.write(&piece).map(|()| write)).await?;
        }
        blocking(move || write.finish()).await?;
        Ok(file.len)
    }

    /// The leader's side of [`CopyRequest`]: its last commit once it is above `after` (or
    /// covers `at_least`), within the wait.
    pub(crate) async fn index_copy_here(&self, request: CopyRequest) -> CopyReply {
        let Some(group) = self.groups.get(request.shard as usize) else {
            return CopyReply::Failed(format!("no shard {}", request.shard));
        };
        let i = request.shard as usize;
        if !group.shard.index().is_indexing() {
            return CopyReply::NotIndexing;
        }
        let wait = Duration::from_millis(request.wait_ms);
        let deadline = tokio::time::Instant::now() + wait;
        if request.at_least > 0 {
            // A strong read's: applied that far, then committed for it if the ticker has not.
            if group
                .raft
                .wait(Some(wait))
                .applied_index_at_least(Some(request.at_least), "index copy for a strong read")
                .await
                .is_err()
            {
                return CopyReply::Failed("the leader did not apply the read index in time".into());
            }
            if group.shard.index().committed_up_to() < request.at_least {
                let (shard, at_least) = (group.shard.clone(), request.at_least);
                match tokio::task::spawn_blocking(move || shard.commit_index_covering(at_least))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return CopyReply::Failed(e.to_string()),
                    Err(e) => return CopyReply::Failed(e.to_string()),
                }
            }
        } else {
            let mut commits = self.index_commits[i].subscribe();
            let newer = tokio::time::timeout_at(
                deadline,
                commits.wait_for(|_| group.shard.index().committed_up_to() > request.after),
            )
            .await;
            match newer {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return CopyReply::Failed("shutting down".into()),
                Err(_) => return CopyReply::Unchanged,
            }
        }
        let shard = group.shard.clone();
        let (held, carry) = (request.held, request.carry_bytes_max);
        // A merge may take a listed file away before it is read: the next commit is listed.
        for _ in 0..3 {
            let (shard, held) = (shard.clone(), held.clone());
            let copy =
                tokio::task::spawn_blocking(move || shard.index().copy_of_commit(&held, carry))
                    .await;
            match copy {
                Ok(Ok(copy)) => {
                    Metrics::add(&self.metrics.index_copies_served, 1);
                    return CopyReply::Copy(copy);
                }
                Ok(Err(veil_shard::Error::IndexCopy { .. })) => continue,
                Ok(Err(e)) => return CopyReply::Failed(e.to_string()),
                Err(e) => return CopyReply::Failed(e.to_string()),
            }
        }
        CopyReply::Failed("the commit kept changing while it was listed".into())
    }

    /// The leader's side of [`FileRequest`].
    pub(crate) async fn index_file_here(&self, request: FileRequest) -> FileReply {
        let Some(group) = self.groups.get(request.shard as usize) else {
            return FileReply::Failed(format!("no shard {}", request.shard));
        };
        let shard = group.shard.clone();
        let len = request.len.min(self.config.index_copy_bytes_max);
        let read = tokio::task::spawn_blocking(move || {
            shard
                .index()
                .read_copied_file(&request.name, request.offset, len)
        })
        .await;
        match read {
            Ok(Ok(Some(bytes))) => FileReply::Bytes(bytes),
            Ok(Ok(None)) => FileReply::Gone,
            Ok(Err(e)) => FileReply::Failed(e.to_string()),
            Err(e) => FileReply::Failed(e.to_string()),
        }
    }

    /// Makes this replica's index cover Raft index `index` (applied here already) for a
    /// strong read: a replica that indexes commits; one that copies copies a commit that
    /// covers it from the leader, which commits for it if it must.
    pub(crate) async fn copy_covering(
        &self,
        shard: ShardId,
        index: u64,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let i = shard.0 as usize;
        let data = self.groups[i].shard.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if data.index().is_indexing() {
                let data = data.clone();
                tokio::task::spawn_blocking(move || data.commit_index_covering(index))
                    .await
                    .map_err(|e| ApiError::internal("committing the index for a strong read", e))?
                    .map_err(|e| ApiError::internal("committing the index for a strong read", e))?;
            }
            if data.index().committed_up_to() >= index {
                return Ok(());
            }
            let leader = self.groups[i]
                .raft
                .server_metrics()
                .borrow_watched()
                .current_leader;
            let result = match leader {
                Some(l) if l == self.cluster.me => {
                    // Leading, and the role task has not started indexing yet.
                    start_indexing(self, i)
                        .await
                        .map(|_| false)
                        .map_err(|e| CopyError::Local(e.to_string()))
                }
                Some(l) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(left, self.copy_round(shard, l, index)).await {
                        Ok(result) => result,
                        Err(_) => Err(CopyError::Behind),
                    }
                }
                None => Err(CopyError::Leader("no leader".into())),
            };
            if data.index().committed_up_to() >= index {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let why = match result {
                    Err(e) => e.to_string(),
                    Ok(_) => "no commit covering it arrived".into(),
                };
                return Err(ApiError::unavailable(
                    "replica_behind",
                    format!("this node's index of shard {shard} did not reach the read index in time: {why}"),
                ));
            }
            // Not there yet: the next commit (here) or copy (from the leader) is awaited.
            let pause = if result.is_err() { 50 } else { 10 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}
