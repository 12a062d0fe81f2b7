//! What a question's coordinator stands on: [`Leaves`], the one interface through which it asks
//! every shard it needs, whether the replica that answers is on this node or on another (as
//! quickwit's root asks its leaves), and [`ask_shards`], which asks them all at once, one
//! replica of each at a time: the first that answers wins; one that fails is left for the
//! next, and so is a replica on another node that does not answer within
//! `--query-replica-timeout-ms` (a node that hangs or is cut off), within the question's
//! deadline. This node's own replica has the question's whole time: what it waits on is this
//! node's own work, which would take as long on another replica of the same data (its strong
//! read's wait for the leader is bounded like a remote replica, see `cluster/reads.rs`).
//!
//! The query coordinator (`query.rs`) and the exception questions (`exceptions.rs`) are written
//! against these traits only: they stand above the node's storage and its cluster, which
//! implement them (`cluster/reads.rs`), and import neither.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_raft::NodeId;
use veil_shard::{ShardId, ShardMap};

use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::leaf::{LeafError, LeafReply, LeafRequest};
use crate::slots::QueryClock;
use veil_node::pii::Masker;

/// One replica of a shard, as the coordinator asks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replica {
    /// This node's.
    Local,
    /// Another node's, over the peer connection.
    Remote(NodeId),
}

/// How one question asks its shards.
#[derive(Clone)]
pub struct Ask {
    /// The question's deadline: no replica is asked past it.
    pub deadline: Instant,
    /// Read-your-writes (see `LeafCall::strong`).
    pub strong: bool,
    /// The search time the question has used (the query slots' order).
    pub clock: QueryClock,
    /// Longest wait for a replica on another node while another replica is left to ask (and
    /// for the local replica's strong read to be confirmed).
    pub replica_timeout: Duration,
    /// Shards whose local replica is not to be asked (it could not catch up just now).
    pub skip_local: Vec<ShardId>,
}

impl Ask {
    /// A question beginning now with `timeout`, asking replicas as `config` says.
    pub fn new(config: &NodeConfig, timeout: Duration, strong: bool) -> Ask {
        Ask {
            deadline: Instant::now() + timeout,
            strong,
            clock: QueryClock::start(),
            replica_timeout: Duration::from_millis(config.query_replica_timeout_ms),
            skip_local: Vec::new(),
        }
    }
}

/// Every shard's replicas, and how to ask one of them a question.
pub trait Leaves: Send + Sync {
    /// `shard`'s replicas in the order to ask them: this node's first, then (for strong reads)
    /// the shard's leader when known, then the others.
    fn replicas(&self, shard: ShardId, strong: bool) -> Vec<Replica>;

    /// Asks one replica, which has `budget` to answer. The same question gets the same answer
    /// from every replica that holds the shard's data as of the question.
    fn ask(
        &self,
        shard: ShardId,
        replica: Replica,
        request: &Arc<LeafRequest>,
        ask: &Ask,
        budget: Duration,
    ) -> impl Future<Output = Result<LeafReply, LeafError>> + Send;

    /// Called when `replica` did not answer (`why`) and the next replica is asked.
    fn moved_on(&self, _shard: ShardId, _replica: Replica, _why: &str) {}
}

/// What a query's coordinator needs beyond its leaves: the node's settings and masking engine,
/// and the shard map.
pub trait QueryContext: Leaves {
    /// The node's configuration (query bounds and deadlines).
    fn config(&self) -> &NodeConfig;
    /// The PII engine in force (query text and filter values are masked as ingest masks).
    fn masker(&self) -> Arc<Masker>;
    /// The shard map.
    fn shard_map(&self) -> ShardMap;
    /// False while the node is starting.
    fn is_ready(&self) -> bool;
}

impl<T: Leaves + ?Sized> Leaves for Arc<T> {
    fn replicas(&self, shard: ShardId, strong: bool) -> Vec<Replica> {
        (**self).replicas(shard, strong)
    }

    fn ask(
        &self,
        shard: ShardId,
        replica: Replica,
        request: &Arc<LeafRequest>,
        ask: &Ask,
        budget: Duration,
    ) -> impl Future<Output = Result<LeafReply, LeafError>> + Send {
        (**self).ask(shard, replica, request, ask, budget)
    }

    fn moved_on(&self, shard: ShardId, replica: Replica, why: &str) {
        (**self).moved_on(shard, replica, why)
    }
}

impl<T: QueryContext + ?Sized> QueryContext for Arc<T> {
    fn config(&self) -> &NodeConfig {
        (**self).config()
    }
    fn masker(&self) -> Arc<Masker> {
        (**self).masker()
    }
    fn shard_map(&self) -> ShardMap {
        (**self).shard_map()
    }
    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }
}

/// How one shard's question ended.
#[derive(Debug)]
pub enum Outcome {
    /// A replica answered.
    Answered(LeafReply),
    /// The deadline passed first.
    TimedOut,
    /// Every replica asked failed (the last one's reason), or one failed in a way no other
    /// replica would avoid (an invalid query, an answer too large).
    Failed(LeafError),
}

/// Asks `shard` through its replicas in order until one answers (see the module's doc).
pub async fn ask_shard<L: Leaves + ?Sized>(
    leaves: &L,
    shard: ShardId,
    request: &Arc<LeafRequest>,
    ask: &Ask,
) -> Outcome {
    let mut replicas = leaves.replicas(shard, ask.strong);
    if ask.skip_local.contains(&shard) {
        replicas.retain(|r| *r != Replica::Local);
    }
    let mut outcome = Outcome::Failed(LeafError::Unavailable(format!(
        "no replica of shard {shard} is known"
    )));
    for (i, replica) in replicas.iter().enumerate() {
        let left = ask.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::TimedOut;
        }
        let last = i + 1 == replicas.len();
        // The local replica gets the whole budget unless the answer must be strong: a local
        // replica that cannot catch up (its leader's messages do not reach it) would hold it
        // all, while another replica answers at once.
        let budget = if last || (*replica == Replica::Local && !ask.strong) {
            left
        } else {
            left.min(ask.replica_timeout)
        };
        let tried =
            tokio::time::timeout(budget, leaves.ask(shard, *replica, request, ask, budget)).await;
        outcome = match tried {
            Ok(Ok(reply)) => return Outcome::Answered(reply),
            Ok(Err(e)) if !e.moves_on() => return Outcome::Failed(e),
            Ok(Err(LeafError::DeadlineExceeded)) | Err(_) => Outcome::TimedOut,
            Ok(Err(e)) => Outcome::Failed(e),
        };
        if !last {
            let why = match &outcome {
                Outcome::Failed(e) => e.to_string(),
                _ => format!("no answer within {} ms", budget.as_millis()),
            };
            leaves.moved_on(shard, *replica, &why);
        }
    }
    outcome
}

/// Asks every shard of `shards` at once (see [`ask_shard`]); the outcomes in the same order.
pub async fn ask_shards<L: Leaves + ?Sized>(
    leaves: &L,
    shards: &[ShardId],
    request: impl Fn(ShardId) -> Arc<LeafRequest>,
    ask: &Ask,
) -> Vec<Outcome> {
    let asks = shards.iter().map(|shard| {
        let request = request(*shard);
        async move { ask_shard(leaves, *shard, &request, ask).await }
    });
    futures::future::join_all(asks).await
}

impl LeafError {
    /// The error a client sees when this is why a shard did not answer.
    pub fn into_api(self) -> ApiError {
        match self {
            LeafError::InvalidQuery(m) => {
                ApiError::bad_request("invalid_query", m).with_field("query")
            }
            LeafError::InvalidAggregation(m) => {
                ApiError::bad_request("invalid_aggregation", m).with_field("aggs")
            }
            e @ LeafError::AnswerTooLarge { .. } => {
                ApiError::bad_request("shard_answer_too_large", e.to_string())
            }
            LeafError::DeadlineExceeded => ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "query_timeout",
                "a shard did not answer in time",
            ),
            LeafError::Unavailable(m) => ApiError::unavailable("shard_unavailable", m),
            LeafError::Failed(m) => ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "shard_failed",
                m,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::leaf::{LeafAnswer, Origin};

    /// How a fake replica behaves.
    #[derive(Clone, Copy)]
    enum Act {
        Answer,
        Fail,
        Unavailable,
        Hang,
        Invalid,
    }

    /// Replicas that act as told, recording who was asked with what budget.
    struct Fake {
        replicas: Vec<(Replica, Act)>,
        asked: Mutex<Vec<(Replica, Duration)>>,
    }

    impl Fake {
        fn new(replicas: &[(Replica, Act)]) -> Fake {
            Fake {
                replicas: replicas.to_vec(),
                asked: Mutex::default(),
            }
        }
        fn asked(&self) -> Vec<Replica> {
            self.asked.lock().unwrap().iter().map(|(r, _)| *r).collect()
        }
    }

    impl Leaves for Fake {
        fn replicas(&self, _: ShardId, _: bool) -> Vec<Replica> {
            self.replicas.iter().map(|(r, _)| *r).collect()
        }

        async fn ask(
            &self,
            _: ShardId,
            replica: Replica,
            _: &Arc<LeafRequest>,
            _: &Ask,
            budget: Duration,
        ) -> Result<LeafReply, LeafError> {
            self.asked.lock().unwrap().push((replica, budget));
            let acts: HashMap<Replica, Act> = self.replicas.iter().copied().collect();
            match acts[&replica] {
                Act::Answer => Ok(LeafReply {
                    answer: LeafAnswer::Entries(Vec::new()),
                    stale: false,
                    origin: Origin {
                        node: match replica {
                            Replica::Local => 1,
                            Replica::Remote(id) => id,
                        },
                        incarnation: 0,
                    },
                }),
                Act::Fail => Err(LeafError::Failed("replica failed".into())),
                Act::Unavailable => Err(LeafError::Unavailable("no leader".into())),
                Act::Invalid => Err(LeafError::InvalidQuery("bad".into())),
                Act::Hang => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            }
        }
    }

    fn ask(timeout_ms: u64, replica_timeout_ms: u64) -> Ask {
        Ask {
            deadline: Instant::now() + Duration::from_millis(timeout_ms),
            strong: false,
            clock: QueryClock::start(),
            replica_timeout: Duration::from_millis(replica_timeout_ms),
            skip_local: Vec::new(),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn check(replicas: &[(Replica, Act)], asked: &[Replica], want: &str) {
        let fake = Fake::new(replicas);
        let request = Arc::new(LeafRequest::Entries { log_ids: vec![] });
        let outcome = runtime().block_on(ask_shard(&fake, ShardId(0), &request, &ask(5_000, 200)));
        let got = match outcome {
            Outcome::Answered(r) => format!("answered by {}", r.origin.node),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Failed(e) => format!("failed: {e}"),
        };
        assert_eq!(got, want);
        assert_eq!(fake.asked(), asked);
    }

    use Act::*;
    use Replica::{Local, Remote};

    #[test]
    fn the_first_replica_that_answers_wins_and_failures_move_on() {
        check(
            &[(Local, Answer), (Remote(2), Answer)],
            &[Local],
            "answered by 1",
        );
        check(
            &[(Local, Fail), (Remote(2), Unavailable), (Remote(3), Answer)],
            &[Local, Remote(2), Remote(3)],
            "answered by 3",
        );
        check(
            &[(Remote(2), Unavailable), (Remote(3), Fail)],
            &[Remote(2), Remote(3)],
            "failed: replica failed",
        );
        // An invalid query is invalid everywhere: no other replica is asked.
        check(
            &[(Local, Invalid), (Remote(2), Answer)],
            &[Local],
            "failed: invalid query: bad",
        );
        check(&[], &[], "failed: no replica of shard 0 is known");
    }

    #[test]
    fn a_remote_replica_that_hangs_is_left_after_its_timeout_and_the_last_gets_the_rest() {
        check(
            &[(Remote(2), Hang), (Remote(3), Answer)],
            &[Remote(2), Remote(3)],
            "answered by 3",
        );
        // Three hanging replicas under a 1.2 s deadline and a 200 ms bound: 200 ms, 200 ms,
        // then what is left (about 800 ms); then the shard counts as timed out.
        let budgets = budgets(&[(Remote(2), Hang), (Remote(3), Hang), (Remote(4), Hang)]);
        assert_eq!(budgets[..2], [200, 200]);
        assert!((400..=800).contains(&budgets[2]), "{budgets:?}");
    }

    #[test]
    fn the_local_replica_has_the_whole_time() {
        // Its work would take as long elsewhere: it is not cut short for another replica.
        let budgets = budgets(&[(Local, Hang), (Remote(2), Answer)]);
        assert_eq!(budgets.len(), 1);
        assert!((1_000..=1_200).contains(&budgets[0]), "{budgets:?}");
        // A local failure moves on at once.
        check(
            &[(Local, Unavailable), (Remote(2), Answer)],
            &[Local, Remote(2)],
            "answered by 2",
        );
    }

    /// The budget each replica was given, in ms, when `replicas` are asked under a 1.2 s
    /// deadline and a 200 ms replica bound; the shard must time out.
    #[test]
    fn a_local_replica_to_skip_is_not_asked_and_a_strong_local_one_is_bounded() {
        let fake = Fake::new(&[(Local, Hang), (Remote(2), Answer)]);
        let request = Arc::new(LeafRequest::Entries { log_ids: vec![] });
        let mut a = ask(5_000, 200);
        a.skip_local = vec![ShardId(0)];
        let outcome = runtime().block_on(ask_shard(&fake, ShardId(0), &request, &a));
        assert!(matches!(outcome, Outcome::Answered(_)), "{outcome:?}");
        assert_eq!(fake.asked(), [Remote(2)]);
        // Strong: a local replica that cannot catch up is left after one replica timeout.
        let fake = Fake::new(&[(Local, Hang), (Remote(2), Answer)]);
        let mut a = ask(5_000, 200);
        a.strong = true;
        let outcome = runtime().block_on(ask_shard(&fake, ShardId(0), &request, &a));
        assert!(matches!(outcome, Outcome::Answered(_)), "{outcome:?}");
        assert_eq!(fake.asked(), [Local, Remote(2)]);
        let local_budget = fake.asked.lock().unwrap()[0].1.as_millis();
        assert_eq!(local_budget, 200);
    }

    fn budgets(replicas: &[(Replica, Act)]) -> Vec<u128> {
        let fake = Fake::new(replicas);
        let request = Arc::new(LeafRequest::Entries { log_ids: vec![] });
        let outcome = runtime().block_on(ask_shard(&fake, ShardId(0), &request, &ask(1_200, 200)));
        assert!(matches!(outcome, Outcome::TimedOut), "{outcome:?}");
        let budgets = fake
            .asked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.as_millis())
            .collect();
        budgets
    }
}
