//! Proposal coalescing: one task per shard turns the entries of every concurrent ingest request
//! into as few Raft entries as it can.
//!
//! A Raft entry costs the same bookkeeping whether it carries 5 entries or 500 (openraft's
//! core, a log append, an apply task, a RocksDB write batch, an index lock); with 16 shards a
//! request of 1,000 entries is only ~60 per shard. So requests do not propose their own Raft
//! entries: each hands its per-shard parts to the shard's `Proposer`, which keeps at most
//! `inflight_max` Raft entries proposed and not yet applied, and while they are out collects
//! what arrives into the next one (up to `entries_max` entries). An idle shard proposes at
//! once, so coalescing adds no wait; a busy one proposes fewer, larger entries.

use std::sync::Arc;
use std::time::Instant;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};
use veil_raft::Command;
use veil_shard::{EntryOutcome, Shard, ShardCommand, ShardId, StoredEntry};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The Raft handle of a shard group.
pub type ShardRaft = veil_raft::alias::Raft<veil_shard::ShardStateMachine>;

/// What one part gets back: an outcome per entry, in order.
type Reply = Result<Vec<EntryOutcome>, ApiError>;

/// Entries of one request for one shard, waiting to be proposed.
struct Part {
    /// True when the node minted every log_id (no idempotency key): apply skips the look-up.
    minted: bool,
    entries: Vec<StoredEntry>,
    reply: oneshot::Sender<Reply>,
}

/// The proposal queue of one shard (see the module documentation).
pub struct Proposer {
    shard: ShardId,
    queue: mpsc::Sender<Part>,
}

impl Proposer {
    /// Starts the shard's proposal task. `queue_max` bounds the parts waiting (a request past
    /// it waits to enqueue); `entries_max` bounds a Raft entry; `inflight_max` bounds the Raft
    /// entries proposed and not yet applied.
    pub fn start(
        shard: Arc<Shard>,
        raft: ShardRaft,
        metrics: Arc<Metrics>,
        queue_max: usize,
        entries_max: usize,
        inflight_max: usize,
    ) -> (Proposer, tokio::task::JoinHandle<()>) {
        let (queue, parts) = mpsc::channel(queue_max.max(1));
        let id = shard.id();
        let task = tokio::spawn(run(
            shard,
            raft,
            metrics,
            parts,
            entries_max.max(1),
            Arc::new(Semaphore::new(inflight_max.max(1))),
        ));
        (Proposer { shard: id, queue }, task)
    }

    /// Proposes `entries` (at most `entries_max` of them) and returns their outcomes once the
    /// Raft entry carrying them is committed and applied (one per entry: the Raft entry's
    /// outcomes are checked against its entries before they are handed out).
    pub async fn propose(&self, minted: bool, entries: Vec<StoredEntry>) -> Reply {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            ApiError::unavailable(
                "shard_unavailable",
                format!("shard {} is shutting down", self.shard),
            )
        };
        self.queue
            .send(Part {
                minted,
                entries,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    shard: Arc<Shard>,
    raft: ShardRaft,
    metrics: Arc<Metrics>,
    mut parts: mpsc::Receiver<Part>,
    entries_max: usize,
    inflight: Arc<Semaphore>,
) {
    // A part that did not fit the Raft entry being built starts the next one.
    let mut held: Option<Part> = None;
    loop {
        // Waiting here while `inflight_max` Raft entries are out is what lets parts gather.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(part) => part,
            None => match parts.recv().await {
                Some(part) => part,
                None => return,
            },
        };
        let minted = first.minted;
        let mut entries = Vec::with_capacity(entries_max.min(4 * first.entries.len()));
        let mut replies = Vec::new();
        take(&mut entries, &mut replies, first);
        while entries.len() < entries_max {
            match parts.try_recv() {
                Ok(part)
                    if part.minted == minted
                        && entries.len() + part.entries.len() <= entries_max =>
                {
                    take(&mut entries, &mut replies, part)
                }
                Ok(part) => {
                    held = Some(part);
                    break;
                }
                Err(_) => break,
            }
        }
        let (raft, metrics, shard) = (raft.clone(), metrics.clone(), shard.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = propose(&shard, &raft, minted, entries).await;
            metrics.raft_commit_latency.observe(started.elapsed());
            drop(permit);
            answer(replies, result);
        });
    }
}

/// Moves a part's entries to the end of `entries`, remembering how many are its.
fn take(
    entries: &mut Vec<StoredEntry>,
    replies: &mut Vec<(usize, oneshot::Sender<Reply>)>,
    mut part: Part,
) {
    replies.push((part.entries.len(), part.reply));
    entries.append(&mut part.entries);
}

/// Proposes `entries` as one Raft entry; returns their outcomes once it is applied. The
/// command stays with the shard's [`veil_shard::Proposals`] meanwhile, so that applying it here
/// does not decode what was just encoded.
async fn propose(
    proposing: &Shard,
    raft: &ShardRaft,
    minted: bool,
    entries: Vec<StoredEntry>,
) -> Reply {
    let shard = proposing.id();
    let count = entries.len();
    let command = if minted {
        ShardCommand::AppendMinted(entries)
    } else {
        ShardCommand::Append(entries)
    };
    let bytes = command.encode();
    let ticket = proposing.proposals().put(bytes.clone(), command);
    let response = raft
        .client_write(Command(bytes))
        .await
        .inspect_err(|_| proposing.proposals().withdraw(ticket))
        .map_err(|e| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ApiError::unavailable(
                "no_leader",
                format!("shard {shard} has no leader on this node right now"),
            ),
            RaftError::APIError(other) => ApiError::internal("proposing a batch", other),
            RaftError::Fatal(fatal) => {
                tracing::error!(%shard, error = %fatal, "raft group stopped");
                ApiError::unavailable("shard_unavailable", format!("shard {shard} is unavailable"))
            }
        })?;
    let outcomes = veil_shard::decode_outcomes(shard, &response.response().0)
        .map_err(|e| ApiError::internal("decoding apply outcomes", e))?;
    if outcomes.len() != count {
        return Err(ApiError::internal(
            "ingesting",
            format!(
                "shard {shard} answered {} outcomes for {count} entries",
                outcomes.len()
            ),
        ));
    }
    Ok(outcomes)
}

/// Hands each part its run of the outcomes, in the order the parts were taken, or the error.
/// A part whose request went away (the client disconnected) is skipped: its entries are
/// stored all the same.
fn answer(replies: Vec<(usize, oneshot::Sender<Reply>)>, result: Reply) {
    match result {
        Ok(outcomes) => {
            // `propose` checked there is one outcome per entry, so the runs add up exactly.
            let mut rest = outcomes.as_slice();
            for (count, reply) in replies {
                let (mine, after) = rest.split_at(count);
                rest = after;
                let _ = reply.send(Ok(mine.to_vec()));
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
