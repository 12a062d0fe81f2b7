//! A run's history: every operation the clients invoked and how it ended, and every fault the
//! nemesis injected, in the order they completed, kept in memory for the checker and written
//! as JSON lines (one object per line) for a person or a later tool.

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it asked.
    Ok,
    /// It certainly did not (a 4xx refusal of the caller's request).
    Fail,
    /// It may or may not have (a timeout, a lost connection, a 5xx).
    Unknown,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One entry the workload sends: what identifies it and what it plants.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its idempotency key, also in its `k` field.
    pub key: String,
    /// The client that sent it (its `c` field).
    pub client: usize,
    /// A personal value (an email address) that must never reach a disk or an answer.
    pub pii: String,
    /// A non-personal marker beside it, which the privacy scan must find (so it can fail).
    pub plain: String,
    /// Its exception type, if it carries one.
    pub exception: Option<String>,
}

/// What happened to one entry in one ingest attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Stored (`accepted` or `duplicate`): acknowledged.
    Acked,
    /// Refused for a reason a retry cannot fix (the entry is invalid).
    Refused(String),
    /// Not known.
    Unknown(String),
}

/// What one operation was.
#[derive(Debug, Clone)]
pub enum OpKind {
    /// An ingest attempt of a batch (indexes into the sent entries), with each entry's outcome.
    Ingest {
        /// Positions in [`History::sent`].
        entries: Vec<usize>,
        /// One per entry, when the request was answered.
        outcomes: Vec<EntryOutcome>,
    },
    /// A query of one client's entries.
    Read {
        /// Whose entries.
        client: usize,
        /// `"consistency": "strong"`.
        strong: bool,
        /// The keys of the entries it returned (one per entry returned, duplicates kept).
        keys: Vec<String>,
    },
    /// A top-K exception question.
    TopK {
        /// `"consistency": "strong"`.
        strong: bool,
    },
}

/// One operation of one client against one node.
#[derive(Debug, Clone)]
pub struct Op {
    /// The client.
    pub client: usize,
    /// The node asked, by index.
    pub node: usize,
    /// Seconds since the run began, at invocation and completion.
    pub invoked: f64,
    /// See `invoked`.
    pub completed: f64,
    /// How it ended as a whole.
    pub outcome: Outcome,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// What it was.
    pub kind: OpKind,
}

/// A fault, from when it began to when it was healed.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Which nemesis.
    pub nemesis: &'static str,
    /// What exactly (`kill -9 node 2 (leader of shard 3)`).
    pub what: String,
    /// Seconds since the run began.
    pub began: f64,
    /// See `began`; none while it lasts.
    pub healed: Option<f64>,
    /// True when a majority of nodes could still talk to each other and run throughout.
    pub majority_left: bool,
}

/// The history of one run.
pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    sent: Vec<Sent>,
    ops: Vec<Op>,
    faults: Vec<Fault>,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl History {
    /// A new history, written to `path` as JSON lines when given.
    pub fn new(path: Option<&Path>) -> anyhow::Result<History> {
        let out = path
            .map(|p| std::fs::File::create(p).map(std::io::BufWriter::new))
            .transpose()?;
        Ok(History {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                sent: Vec::new(),
                ops: Vec::new(),
                faults: Vec::new(),
                out,
            }),
        })
    }

    /// Seconds since the run began.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A client that panicked holding the lock left a consistent history behind.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(inner: &mut Inner, line: &Value) {
        if let Some(out) = inner.out.as_mut() {
            // The in-memory history is what the checker reads; the file is for people.
            let _ = writeln!(out, "{line}");
        }
    }

    /// Records an entry about to be sent for the first time; returns its position.
    pub fn send(&self, entry: Sent) -> usize {
        let mut inner = self.lock();
        let line = json!({"type": "entry", "key": entry.key, "client": entry.client,
                          "exception": entry.exception});
        Self::write(&mut inner, &line);
        inner.sent.push(entry);
        inner.sent.len() - 1
    }

    /// Records a completed operation.
    pub fn record(&self, op: Op) {
        let mut inner = self.lock();
        let mut line = json!({"type": "op", "client": op.client, "node": op.node,
            "invoked": op.invoked, "completed": op.completed,
            "outcome": op.outcome.name(), "status": op.status});
        match &op.kind {
            OpKind::Ingest { entries, outcomes } => {
                line["op"] = json!("ingest");
                line["keys"] = entries
                    .iter()
                    .map(|i| Value::from(inner.sent[*i].key.clone()))
                    .collect();
                line["entries"] = outcomes
                    .iter()
                    .map(|o| match o {
                        EntryOutcome::Acked => json!("acked"),
                        EntryOutcome::Refused(why) => json!({"refused": why}),
                        EntryOutcome::Unknown(why) => json!({"unknown": why}),
                    })
                    .collect();
            }
            OpKind::Read {
                client,
                strong,
                keys,
            } => {
                line["op"] = json!("read");
                line["of_client"] = json!(client);
                line["strong"] = json!(strong);
                line["returned"] = json!(keys.len());
            }
            OpKind::TopK { strong } => {
                line["op"] = json!("top_k");
                line["strong"] = json!(strong);
            }
        }
        Self::write(&mut inner, &line);
        inner.ops.push(op);
    }

    /// Records a fault beginning; returns its position.
    pub fn fault(&self, nemesis: &'static str, what: String, majority_left: bool) -> usize {
        let began = self.now();
        let mut inner = self.lock();
        let line = json!({"type": "fault", "nemesis": nemesis, "what": what, "began": began,
                          "majority_left": majority_left});
        Self::write(&mut inner, &line);
        inner.faults.push(Fault {
            nemesis,
            what,
            began,
            healed: None,
            majority_left,
        });
        inner.faults.len() - 1
    }

    /// Records fault `i` healed.
    pub fn healed(&self, i: usize) {
        let at = self.now();
        let mut inner = self.lock();
        let line = json!({"type": "healed", "what": inner.faults[i].what, "at": at});
        Self::write(&mut inner, &line);
        inner.faults[i].healed = Some(at);
    }

    /// Records a free-form event (a restart, the settle phase).
    pub fn note(&self, what: &str) {
        let at = self.now();
        let mut inner = self.lock();
        Self::write(&mut inner, &json!({"type": "note", "what": what, "at": at}));
    }

    /// Everything recorded so far: entries sent, operations, faults.
    pub fn snapshot(&self) -> (Vec<Sent>, Vec<Op>, Vec<Fault>) {
        let mut inner = self.lock();
        if let Some(out) = inner.out.as_mut() {
            let _ = out.flush();
        }
        (inner.sent.clone(), inner.ops.clone(), inner.faults.clone())
    }
}
