//! The leaf side of a read: one question about one shard ([`LeafRequest`]) and one replica's
//! answer to it ([`LeafReply`]). The coordinator asks a replica on this node and a replica on
//! another node the same question and gets the same answer type back, so one merge serves both
//! (see `coordinator.rs`); a remote replica receives it as the `leaf` cluster call
//! ([`LeafCall`], bincode inside the peer protocol's generic call) and runs the very path a
//! local one does. [`answer_here`] is where a question meets a shard's storage.
//!
//! Plain data and one blocking function: no sockets, no Raft.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use veil_raft::NodeId;
use veil_shard::exceptions::{CounterFilter, ExceptionCounts, IdMap, Numbers};
use veil_shard::rollups::WindowNumbers;
use veil_shard::{Shard, ShardHits, ShardQuery, StoredEntry};

/// One question about one shard; each arm names the `Shard` method that answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeafRequest {
    /// `Shard::search`: the exact total, the best `top_n` hits after the cursor, and the
    /// partial aggregations. The query's deadline is set by whoever runs it.
    Search(ShardQuery),
    /// `Shard::exception_window_numbers`: an unfiltered top-K's ranking numbers, whole hours
    /// and edges apart.
    WindowNumbers { start_minute: i64, end_minute: i64 },
    /// `Shard::exception_window_numbers_of`: the same for these services' exceptions only.
    WindowNumbersOf {
        start_minute: i64,
        end_minute: i64,
        services: Vec<String>,
    },
    /// `Shard::exception_filtered_numbers`: ranking numbers of the rows that pass a filter.
    FilteredNumbers {
        start_minute: i64,
        end_minute: i64,
        filter: CounterFilter,
    },
    /// `Shard::exception_filtered_history` of each exception, added up.
    FilteredHistories {
        exception_ids: Vec<u64>,
        start_minute: i64,
        end_minute: i64,
        filter: CounterFilter,
        bucket_minutes: Option<i64>,
        first_only: bool,
    },
    /// `Shard::exception_parts_summary`: the whole counters of some exceptions.
    PartsSummary {
        in_hours: Vec<u64>,
        in_edges: Vec<u64>,
        start_minute: i64,
        end_minute: i64,
    },
    /// `Shard::exception_history`: one exception's counts per bucket and its first sighting.
    History {
        exception_id: u64,
        start_minute: i64,
        end_minute: i64,
        bucket_minutes: i64,
    },
    /// The entries with these log_ids that the shard holds (`Shard::lookup_log_id`).
    Entries { log_ids: Vec<uuid::Uuid> },
}

impl LeafRequest {
    /// True for a search: it takes a query slot, and a strong search also needs the index
    /// committed up to the read index (counters are read from what is applied).
    pub fn is_search(&self) -> bool {
        matches!(self, LeafRequest::Search(_))
    }
}

/// What a shard answers, by question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeafAnswer {
    /// To [`LeafRequest::Search`].
    Hits(ShardHits),
    /// To [`LeafRequest::WindowNumbers`] and [`LeafRequest::WindowNumbersOf`].
    WindowNumbers(WindowNumbers),
    /// To [`LeafRequest::FilteredNumbers`].
    Numbers(IdMap<Numbers>),
    /// To [`LeafRequest::FilteredHistories`] and [`LeafRequest::PartsSummary`].
    Counts(ExceptionCounts),
    /// To [`LeafRequest::History`]: the counts and the first sighting ever (µs).
    History(ExceptionCounts, Option<i64>),
    /// To [`LeafRequest::Entries`].
    Entries(Vec<StoredEntry>),
}

/// Which cache a replica's cached numbers come from: the node and its process (a restarted
/// node's block caches count their versions from zero again). The coordinator's sums of
/// exception spans are reused only for equal origins and versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The node that answered.
    pub node: NodeId,
    /// Drawn at random when its process started.
    pub incarnation: u64,
}

/// One replica's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeafReply {
    /// The answer.
    pub answer: LeafAnswer,
    /// True when the replica's group had no live leader as far as the replica could tell (its
    /// majority may be gone): the answer may miss recent entries. Never set for strong reads.
    pub stale: bool,
    /// Who answered.
    pub origin: Origin,
}

/// Why a replica did not answer.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum LeafError {
    /// The query text cannot be run (the same on every replica).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The aggregations cannot be run or passed their bounds (the same on every replica).
    #[error("invalid aggregation: {0}")]
    InvalidAggregation(String),
    /// The answer is larger than the coordinator takes (`--query-shard-answer-bytes-max`); every
    /// replica holds the same data, so no other is asked.
    #[error(
        "shard {shard}'s answer is {bytes} bytes, more than --query-shard-answer-bytes-max \
         ({bytes_max}); ask for fewer hits (limit, offset) or smaller aggregations"
    )]
    AnswerTooLarge {
        /// The shard.
        shard: u32,
        /// The answer's size, encoded.
        bytes: u64,
        /// The bound.
        bytes_max: u64,
    },
    /// The time given passed first.
    #[error("no answer in time")]
    DeadlineExceeded,
    /// This replica cannot answer now (no replica there, node starting, no leader to confirm a
    /// strong read, unreachable); another replica, or a retry, may.
    #[error("{0}")]
    Unavailable(String),
    /// The replica failed (details in its node's log).
    #[error("{0}")]
    Failed(String),
}

impl LeafError {
    /// True when another replica may answer where this one did not.
    pub fn moves_on(&self) -> bool {
        matches!(
            self,
            LeafError::DeadlineExceeded | LeafError::Unavailable(_) | LeafError::Failed(_)
        )
    }
}

impl From<veil_shard::Error> for LeafError {
    fn from(e: veil_shard::Error) -> Self {
        match e {
            veil_shard::Error::InvalidQuery(m) => LeafError::InvalidQuery(m),
            veil_shard::Error::InvalidAggregation(m) => LeafError::InvalidAggregation(m),
            veil_shard::Error::DeadlineExceeded => LeafError::DeadlineExceeded,
            other => {
                tracing::error!(error = %other, "shard question failed");
                LeafError::Failed("a replica failed to answer (details in its log)".into())
            }
        }
    }
}

/// A leaf question sent to another node (`leaf` cluster call). `R` is the request itself
/// (received) or a reference to it (sent): both encode alike.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeafCall<R> {
    /// The shard asked.
    pub shard: u32,
    /// The question.
    pub request: R,
    /// The time the asker gives this replica, in ms (the replica's deadline, by its clock).
    pub budget_ms: u64,
    /// Read-your-writes: the replica first applies (and for a search indexes) everything its
    /// shard's leader had committed when asked.
    pub strong: bool,
    /// The asker's `--query-shard-answer-bytes-max`: a larger answer is refused as
    /// [`LeafError::AnswerTooLarge`] before it is sent.
    pub answer_bytes_max: u64,
    /// Search time the question has used so far, in µs, and its age, in ms: the replica's
    /// query slots rank it among its own searches as if it had begun there.
    pub used_us: u64,
    /// See `used_us`.
    pub age_ms: u64,
}

/// What a `leaf` call answers.
pub type LeafResult = Result<LeafReply, LeafError>;

/// Answers `request` from `shard` on this thread (it blocks: RocksDB reads, tantivy searches).
/// A search gives up at `deadline`. Stored entries leave without their sealed original: no
/// answer shows it, so it stays on the replicas.
pub fn answer_here(
    shard: &Shard,
    request: &LeafRequest,
    deadline: Instant,
) -> veil_shard::Result<LeafAnswer> {
    Ok(match request {
        LeafRequest::Search(query) => {
            let mut query = query.clone();
            query.deadline = Some(deadline);
            let mut hits = shard.search(&query)?;
            for (_, entry) in &mut hits.entries {
                entry.sealed_original = None;
            }
            LeafAnswer::Hits(hits)
        }
        LeafRequest::WindowNumbers {
            start_minute,
            end_minute,
        } => LeafAnswer::WindowNumbers(shard.exception_window_numbers(*start_minute, *end_minute)?),
        LeafRequest::WindowNumbersOf {
            start_minute,
            end_minute,
            services,
        } => LeafAnswer::WindowNumbers(shard.exception_window_numbers_of(
            *start_minute,
            *end_minute,
            services,
        )?),
        LeafRequest::FilteredNumbers {
            start_minute,
            end_minute,
            filter,
        } => LeafAnswer::Numbers(shard.exception_filtered_numbers(
            *start_minute,
            *end_minute,
            filter,
        )?),
        LeafRequest::FilteredHistories {
            exception_ids,
            start_minute,
            end_minute,
            filter,
            bucket_minutes,
            first_only,
        } => {
            let mut all = ExceptionCounts::default();
            for &id in exception_ids {
                all.absorb(shard.exception_filtered_history(
                    id,
                    *start_minute,
                    *end_minute,
                    filter,
                    *bucket_minutes,
                    *first_only,
                )?);
            }
            LeafAnswer::Counts(all)
        }
        LeafRequest::PartsSummary {
            in_hours,
            in_edges,
            start_minute,
            end_minute,
        } => LeafAnswer::Counts(shard.exception_parts_summary(
            in_hours,
            in_edges,
            *start_minute,
            *end_minute,
        )?),
        LeafRequest::History {
            exception_id,
            start_minute,
            end_minute,
            bucket_minutes,
        } => {
            let (counts, first) = shard.exception_history(
                *exception_id,
                *start_minute,
                *end_minute,
                Some(*bucket_minutes),
            )?;
            LeafAnswer::History(counts, first)
        }
        LeafRequest::Entries { log_ids } => {
            let mut found = Vec::new();
            for log_id in log_ids {
                let Some(ts) = shard.lookup_log_id(*log_id)? else {
                    continue;
                };
                let key = veil_shard::keys::entry_key(shard.id(), ts, *log_id);
                if let Some(mut entry) = shard.get_by_key(&key)? {
                    entry.sealed_original = None;
                    found.push(entry);
                }
            }
            LeafAnswer::Entries(found)
        }
    })
}

/// Refuses a reply larger than `bytes_max` once encoded as a `leaf` call's result (the bound a
/// remote replica applies to what it sends, applied alike to a local one so every node answers
/// a question alike).
pub fn check_size(shard: u32, reply: &LeafReply, bytes_max: u64) -> Result<(), LeafError> {
    let result: Result<&LeafReply, &LeafError> = Ok(reply);
    let bytes = bincode::serialized_size(&result)
        .map_err(|e| LeafError::Failed(format!("measuring an answer: {e}")))?;
    if bytes > bytes_max {
        return Err(LeafError::AnswerTooLarge {
            shard,
            bytes,
            bytes_max,
        });
    }
    Ok(())
}

/// Encodes a `leaf` call's result; an answer over `bytes_max` becomes
/// [`LeafError::AnswerTooLarge`].
pub fn encode_result(shard: u32, result: &LeafResult, bytes_max: u64) -> Vec<u8> {
    let encoded = bincode::serialize(result);
    match encoded {
        Ok(bytes) if bytes.len() as u64 <= bytes_max || result.is_err() => bytes,
        Ok(bytes) => encode_error(&LeafError::AnswerTooLarge {
            shard,
            bytes: bytes.len() as u64,
            bytes_max,
        }),
        Err(e) => encode_error(&LeafError::Failed(format!("encoding an answer: {e}"))),
    }
}

/// Encodes an error as a `leaf` call's result.
pub fn encode_error(e: &LeafError) -> Vec<u8> {
    let result: Result<(), &LeafError> = Err(e);
    // An error of strings and numbers always encodes.
    bincode::serialize(&result).unwrap_or_default()
}

impl LeafAnswer {
    /// The hits of a search's answer.
    pub fn into_hits(self) -> Result<ShardHits, LeafError> {
        match self {
            LeafAnswer::Hits(h) => Ok(h),
            other => Err(mismatch("hits", &other)),
        }
    }

    /// The numbers of [`LeafRequest::WindowNumbers`] and [`LeafRequest::WindowNumbersOf`].
    pub fn into_window_numbers(self) -> Result<WindowNumbers, LeafError> {
        match self {
            LeafAnswer::WindowNumbers(n) => Ok(n),
            other => Err(mismatch("window numbers", &other)),
        }
    }

    /// The numbers of [`LeafRequest::FilteredNumbers`].
    pub fn into_numbers(self) -> Result<IdMap<Numbers>, LeafError> {
        match self {
            LeafAnswer::Numbers(n) => Ok(n),
            other => Err(mismatch("numbers", &other)),
        }
    }

    /// The counts of [`LeafRequest::FilteredHistories`] and [`LeafRequest::PartsSummary`].
    pub fn into_counts(self) -> Result<ExceptionCounts, LeafError> {
        match self {
            LeafAnswer::Counts(c) => Ok(c),
            other => Err(mismatch("counts", &other)),
        }
    }

    /// The history of [`LeafRequest::History`].
    pub fn into_history(self) -> Result<(ExceptionCounts, Option<i64>), LeafError> {
        match self {
            LeafAnswer::History(c, first) => Ok((c, first)),
            other => Err(mismatch("history", &other)),
        }
    }

    /// The entries of [`LeafRequest::Entries`].
    pub fn into_entries(self) -> Result<Vec<StoredEntry>, LeafError> {
        match self {
            LeafAnswer::Entries(e) => Ok(e),
            other => Err(mismatch("entries", &other)),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            LeafAnswer::Hits(_) => "hits",
            LeafAnswer::WindowNumbers(_) => "window numbers",
            LeafAnswer::Numbers(_) => "numbers",
            LeafAnswer::Counts(_) => "counts",
            LeafAnswer::History(..) => "history",
            LeafAnswer::Entries(_) => "entries",
        }
    }
}

/// A replica answered another kind of question than it was asked: both ends are the same
/// build, so this is a bug, reported as a failed replica.
fn mismatch(wanted: &str, got: &LeafAnswer) -> LeafError {
    tracing::error!(
        wanted,
        got = got.kind(),
        "a replica answered another question"
    );
    LeafError::Failed(format!("expected {wanted}, got {}", got.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_of(entries: usize) -> LeafReply {
        let entry = StoredEntry {
            log_id: uuid::Uuid::from_u128(7),
            timestamp_us: 1,
            received_at_us: 1,
            service: "svc".into(),
            level: veil_shard::Level::Info,
            message: "x".repeat(100),
            fields_json: "{}".into(),
            exception_type: None,
            exception_message: None,
            stack_trace: None,
            fingerprint: None,
            host: None,
            environment: None,
            region: None,
            sealed_original: None,
        };
        let key = veil_shard::SortKey::new(Some(1), 7, veil_shard::SortOrder::Desc);
        LeafReply {
            answer: LeafAnswer::Hits(ShardHits {
                total: entries as u64,
                entries: vec![(key, entry); entries],
                aggs: None,
            }),
            stale: false,
            origin: Origin {
                node: 2,
                incarnation: 9,
            },
        }
    }

    #[test]
    fn an_answer_over_the_bound_is_refused_alike_on_both_arms() {
        let reply = reply_of(20);
        let bytes = bincode::serialize(&Ok::<_, LeafError>(reply.clone()))
            .unwrap()
            .len() as u64;
        // At the bound: both arms pass it, and the remote arm's bytes decode to the reply.
        check_size(3, &reply, bytes).unwrap();
        let sent = encode_result(3, &Ok(reply.clone()), bytes);
        let got: LeafResult = bincode::deserialize(&sent).unwrap();
        assert_eq!(got.unwrap().answer.into_hits().unwrap().entries.len(), 20);
        // One byte less: both refuse, naming the size and the bound.
        let local = check_size(3, &reply, bytes - 1).unwrap_err();
        let sent = encode_result(3, &Ok(reply), bytes - 1);
        let remote = bincode::deserialize::<LeafResult>(&sent)
            .unwrap()
            .unwrap_err();
        for e in [local, remote] {
            match e {
                LeafError::AnswerTooLarge {
                    shard,
                    bytes: b,
                    bytes_max,
                } => assert_eq!((shard, b, bytes_max), (3, bytes, bytes - 1)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_error_encodes_as_a_failed_call_result() {
        let sent = encode_error(&LeafError::Unavailable("node 4 is starting".into()));
        match bincode::deserialize::<LeafResult>(&sent).unwrap() {
            Err(LeafError::Unavailable(m)) => assert_eq!(m, "node 4 is starting"),
            other => panic!("{other:?}"),
        }
    }
}
