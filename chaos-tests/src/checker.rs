//! The checker: what a history and the settled cluster's answers must satisfy.
//!
//! - Lost: acknowledged, and not readable once the faults are healed and the cluster settled.
//! - Duplicated: one idempotency key stored more than once.
//! - Phantom: read, but never sent, or sent and refused by every attempt.
//! - Stale read: a strong read missing an entry acknowledged before the read began.
//! - Divergence: a shard's replicas with different digests after settling, or nodes answering
//!   the same final question differently.
//! - Privacy: a planted personal value found in plain bytes in a node's data directory or its
//!   own log, or in an answer.
//! - Top-K: exception counts other than a brute-force count of what is stored.
//! - Crash: a node that exited without being killed, other than by the designed fail-stop
//!   (a node whose WAL fsync failed stops itself; counted, not an anomaly).
//!
//! Availability during faults that leave a majority is a figure, not a check.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::history::{EntryOutcome, Fault, Op, OpKind, Outcome, Sent};

/// What the settled cluster answered, for the checker.
pub struct Final {
    /// Every stored entry, read through each node with a strong read (one list per node).
    pub reads: Vec<Vec<Value>>,
    /// Each node's top-K answer (strong) over the same range.
    pub top_k: Vec<Value>,
    /// Per shard: the digest lines of the nodes the placement names.
    pub digests: BTreeMap<u64, Vec<(usize, Value)>>,
    /// Planted personal values found in plain bytes, with where.
    pub pii_found: Vec<String>,
    /// How many of the non-personal markers the same scan found (zero would mean it cannot
    /// see plaintext at all).
    pub plain_found: usize,
    /// Nodes that exited without being killed, other than by a fail-stop.
    pub crashes: Vec<String>,
    /// Nodes that stopped themselves because their WAL could not be fsynced (a full disk):
    /// the designed fail-stop, a figure.
    pub fail_stops: usize,
}

/// The checker's verdict on a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Entries sent, acknowledged, and of unknown outcome at the end.
    pub sent: usize,
    /// See `sent`.
    pub acked: usize,
    /// Operations by kind and outcome (`ingest ok` …).
    pub ops: BTreeMap<String, usize>,
    /// Faults injected.
    pub faults: usize,
    /// Faults injected, by nemesis.
    pub faults_by: BTreeMap<&'static str, usize>,
    /// The anomalies, by check, each with examples.
    pub anomalies: BTreeMap<&'static str, Vec<String>>,
    /// Per fault kind leaving a majority: ingest attempts ok of those invoked during it.
    pub availability: BTreeMap<&'static str, (usize, usize)>,
    /// Strong reads checked for staleness.
    pub strong_reads: usize,
    /// Non-personal markers the privacy scan found (it must see plaintext).
    pub plain_markers_found: usize,
    /// Nodes that stopped themselves on a failed WAL fsync.
    pub fail_stops: usize,
}

impl Report {
    /// True when no check found anything.
    pub fn passed(&self) -> bool {
        self.anomalies.values().all(Vec::is_empty)
    }

    fn flag(&mut self, check: &'static str, example: String) {
        let list = self.anomalies.entry(check).or_default();
        if list.len() < 20 {
            list.push(example);
        } else if list.len() == 20 {
            list.push("…".into());
        }
    }

    /// The report for people: counts first, then every anomaly.
    pub fn render(&self) -> String {
        let mut out = format!(
            "entries sent {}, acknowledged {}; faults {}; strong reads checked {}; \
             plain markers found by the privacy scan {}; fail-stops {}\n",
            self.sent,
            self.acked,
            self.faults,
            self.strong_reads,
            self.plain_markers_found,
            self.fail_stops
        );
        for (k, v) in &self.ops {
            out.push_str(&format!("  {k}: {v}\n"));
        }
        for (nemesis, (ok, all)) in &self.availability {
            let pct = if *all == 0 {
                100.0
            } else {
                100.0 * *ok as f64 / *all as f64
            };
            out.push_str(&format!(
                "  availability during {nemesis} (majority left): {ok}/{all} ingest attempts ok ({pct:.0} %)\n"
            ));
        }
        if self.passed() {
            out.push_str("no anomaly\n");
        }
        for (check, examples) in &self.anomalies {
            if examples.is_empty() {
                continue;
            }
            out.push_str(&format!("ANOMALY {check}: {}\n", examples.len()));
            for e in examples {
                out.push_str(&format!("    {e}\n"));
            }
        }
        out
    }
}

fn key_of(log: &Value) -> String {
    log["fields"]["k"].as_str().unwrap_or("").to_string()
}

/// Checks a history against what the settled cluster answered.
pub fn check(sent: &[Sent], ops: &[Op], faults: &[Fault], fin: &Final) -> Report {
    let mut faults_by: BTreeMap<&'static str, usize> = BTreeMap::new();
    for f in faults {
        *faults_by.entry(f.nemesis).or_default() += 1;
    }
    let mut r = Report {
        sent: sent.len(),
        faults: faults.len(),
        faults_by,
        plain_markers_found: fin.plain_found,
        fail_stops: fin.fail_stops,
        ..Report::default()
    };
    // Per entry: when it was first acknowledged, and whether any attempt may have stored it.
    let mut acked_at: Vec<Option<f64>> = vec![None; sent.len()];
    let mut maybe = vec![false; sent.len()];
    for op in ops {
        let kind = match &op.kind {
            OpKind::Ingest { .. } => "ingest",
            OpKind::Read { strong: true, .. } => "strong read",
            OpKind::Read { .. } => "read",
            OpKind::TopK { .. } => "top-k",
        };
        let outcome = match op.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        };
        *r.ops.entry(format!("{kind} {outcome}")).or_default() += 1;
        if let OpKind::Ingest { entries, outcomes } = &op.kind {
            for (i, o) in entries.iter().zip(outcomes) {
                match o {
                    EntryOutcome::Acked => {
                        maybe[*i] = true;
                        let at = acked_at[*i].get_or_insert(op.completed);
                        *at = at.min(op.completed);
                    }
                    EntryOutcome::Unknown(_) => maybe[*i] = true,
                    EntryOutcome::Refused(_) => {}
                }
            }
        }
    }
    r.acked = acked_at.iter().filter(|a| a.is_some()).count();
    let by_key: HashMap<&str, usize> = sent
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key.as_str(), i))
        .collect();

    // The final reads: alike through every node, and each entry once.
    let Some(first) = fin.reads.first() else {
        r.flag("divergence", "no final read".into());
        return r;
    };
    let multiset = |logs: &[Value]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for l in logs {
            *m.entry(key_of(l)).or_default() += 1;
        }
        m
    };
    let stored = multiset(first);
    for (node, logs) in fin.reads.iter().enumerate().skip(1) {
        let other = multiset(logs);
        if other != stored {
            let only_first: Vec<_> = stored
                .keys()
                .filter(|k| !other.contains_key(*k))
                .take(3)
                .collect();
            let only_other: Vec<_> = other
                .keys()
                .filter(|k| !stored.contains_key(*k))
                .take(3)
                .collect();
            r.flag(
                "divergence",
                format!(
                    "node {node}'s final read differs from node 0's: {} vs {} entries; only on 0: {only_first:?}; only on {node}: {only_other:?}",
                    logs.len(),
                    first.len()
                ),
            );
        }
    }
    for (key, n) in &stored {
        if *n > 1 {
            r.flag("duplicated", format!("{key} stored {n} times"));
        }
        match by_key.get(key.as_str()) {
            None => r.flag("phantom", format!("{key:?} read but never sent")),
            Some(i) if !maybe[*i] => r.flag(
                "phantom",
                format!("{key} read but every attempt to send it was refused"),
            ),
            Some(_) => {}
        }
    }
    for (i, s) in sent.iter().enumerate() {
        if acked_at[i].is_some() && !stored.contains_key(&s.key) {
            r.flag(
                "lost",
                format!(
                    "{} acknowledged at {:.2}s and not stored",
                    s.key,
                    acked_at[i].unwrap_or(0.0)
                ),
            );
        }
    }
    // What the answers hold: the marker, never the personal value.
    for logs in &fin.reads {
        for l in logs {
            let text = l.to_string();
            if text.contains("piic") {
                r.flag(
                    "privacy",
                    format!("an answer holds a planted value: {}", key_of(l)),
                );
            }
            if let Some(i) = by_key.get(key_of(l).as_str()) {
                if !l["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&sent[*i].plain)
                {
                    r.flag(
                        "content",
                        format!("{}'s message is not what was sent", sent[*i].key),
                    );
                }
            }
        }
    }

    // Strong reads: every entry of the client acknowledged before the read began.
    let mut of_client: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, s) in sent.iter().enumerate() {
        of_client.entry(s.client).or_default().push(i);
    }
    for op in ops {
        let OpKind::Read {
            client,
            strong,
            keys,
        } = &op.kind
        else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        let seen: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        for k in &seen {
            if !by_key.contains_key(k) {
                r.flag(
                    "phantom",
                    format!("{k:?} returned by a read at {:.2}s, never sent", op.invoked),
                );
            }
        }
        if !strong {
            continue;
        }
        r.strong_reads += 1;
        for i in of_client.get(client).into_iter().flatten() {
            if acked_at[*i].is_some_and(|t| t < op.invoked) && !seen.contains(sent[*i].key.as_str())
            {
                r.flag(
                    "stale read",
                    format!(
                        "strong read through node {} at {:.2}s misses {}, acknowledged at {:.2}s",
                        op.node,
                        op.invoked,
                        sent[*i].key,
                        acked_at[*i].unwrap_or(0.0)
                    ),
                );
            }
        }
    }

    // Replicas: alike per shard.
    for (shard, lines) in &fin.digests {
        let mut distinct: Vec<&Value> = lines.iter().map(|(_, d)| d).collect();
        distinct.dedup();
        if distinct.len() > 1 {
            r.flag(
                "divergence",
                format!("shard {shard}: replicas differ: {lines:?}"),
            );
        }
    }

    // Top-K: the counts of what is stored.
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for key in stored.keys() {
        if let Some(t) = by_key
            .get(key.as_str())
            .and_then(|i| sent[*i].exception.clone())
        {
            *want.entry(t).or_default() += stored[key] as u64;
        }
    }
    for (node, top) in fin.top_k.iter().enumerate() {
        // One line per fingerprint (a type seen in several services is several lines).
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        for e in top["exceptions"].as_array().into_iter().flatten() {
            let t = e["exception_type"].as_str().unwrap_or("").to_string();
            *got.entry(t).or_default() += e["count"].as_u64().unwrap_or(0);
        }
        if got != want {
            r.flag(
                "top-k",
                format!("node {node} counts {got:?}, stored {want:?}"),
            );
        }
    }

    for p in &fin.pii_found {
        r.flag("privacy", p.clone());
    }
    for c in &fin.crashes {
        r.flag("crash", c.clone());
    }
    if fin.plain_found == 0 && !sent.is_empty() {
        r.flag(
            "privacy",
            "the scan found no plain marker: it cannot see plaintext".into(),
        );
    }

    // Availability while a majority was left.
    for f in faults.iter().filter(|f| f.majority_left) {
        let end = f.healed.unwrap_or(f64::MAX);
        let (ok, all) = r.availability.entry(f.nemesis).or_default();
        for op in ops {
            if matches!(op.kind, OpKind::Ingest { .. }) && op.invoked >= f.began && op.invoked < end
            {
                *all += 1;
                *ok += usize::from(op.outcome == Outcome::Ok);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    //! The checker on made-up histories: each anomaly it is for is found, and a clean history
    //! passes (so a run that breaks something on purpose is caught).
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn sent(key: &str, exception: Option<&str>) -> Sent {
        Sent {
            key: key.into(),
            client: 0,
            pii: format!("piic{key}@chaos.example"),
            plain: format!("nonc{key}"),
            exception: exception.map(String::from),
        }
    }

    fn log(key: &str) -> Value {
        json!({"message": format!("chaos entry {key} marker nonc{key} for <email:1>"), "fields": {"k": key}})
    }

    fn ingest(entries: Vec<usize>, outcomes: Vec<EntryOutcome>, completed: f64) -> Op {
        Op {
            client: 0,
            node: 0,
            invoked: completed - 0.1,
            completed,
            outcome: Outcome::Ok,
            status: Some(200),
            kind: OpKind::Ingest { entries, outcomes },
        }
    }

    fn read(keys: &[&str], invoked: f64) -> Op {
        Op {
            client: 1,
            node: 0,
            invoked,
            completed: invoked + 0.1,
            outcome: Outcome::Ok,
            status: Some(200),
            kind: OpKind::Read {
                client: 0,
                strong: true,
                keys: keys.iter().map(|k| k.to_string()).collect(),
            },
        }
    }

    fn fin(logs: Vec<Value>, top: Value) -> Final {
        Final {
            reads: vec![logs.clone(), logs],
            top_k: vec![top],
            digests: BTreeMap::new(),
            pii_found: Vec::new(),
            plain_found: 1,
            crashes: Vec::new(),
            fail_stops: 0,
        }
    }

    fn history() -> (Vec<Sent>, Vec<Op>) {
        let sent = vec![
            sent("a", Some("E1")),
            sent("b", None),
            sent("c", Some("E1")),
        ];
        let ops = vec![
            ingest(
                vec![0, 1],
                vec![EntryOutcome::Acked, EntryOutcome::Acked],
                1.0,
            ),
            ingest(vec![2], vec![EntryOutcome::Unknown("timeout".into())], 2.0),
            read(&["a", "b"], 1.5),
        ];
        (sent, ops)
    }

    fn top(n: u64) -> Value {
        if n == 0 {
            return json!({"exceptions": []});
        }
        json!({"exceptions": [{"exception_type": "E1", "count": n}]})
    }

    #[test]
    fn a_clean_history_passes() {
        let (sent, ops) = history();
        // The entry of unknown outcome may be stored or not.
        let r = check(&sent, &ops, &[], &fin(vec![log("a"), log("b")], top(1)));
        assert!(r.passed(), "{}", r.render());
        let r = check(
            &sent,
            &ops,
            &[],
            &fin(vec![log("a"), log("b"), log("c")], top(2)),
        );
        assert!(r.passed(), "{}", r.render());
    }

    #[test]
    fn each_anomaly_is_found() {
        let (sent, ops) = history();
        let found = |f: Final, ops: &[Op]| {
            let r = check(&sent, ops, &[], &f);
            r.anomalies
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
        };
        // An acknowledged entry missing (and so uncounted).
        assert_eq!(found(fin(vec![log("b")], top(0)), &ops), ["lost"]);
        // A retry stored twice (what a build without the idempotency check does).
        assert_eq!(
            found(fin(vec![log("a"), log("a"), log("b")], top(2)), &ops),
            ["duplicated"]
        );
        // An entry nobody sent.
        assert_eq!(
            found(fin(vec![log("a"), log("b"), log("z")], top(1)), &ops),
            ["phantom"]
        );
        // A strong read that began after "b" was acknowledged and missed it.
        let mut stale = ops.clone();
        stale.push(read(&["a"], 1.2));
        assert_eq!(
            found(fin(vec![log("a"), log("b")], top(1)), &stale),
            ["stale read"]
        );
        // Counts that are not the stored entries'.
        assert_eq!(
            found(fin(vec![log("a"), log("b")], top(3)), &ops),
            ["top-k"]
        );
        // A node answering otherwise.
        let mut f = fin(vec![log("a"), log("b")], top(1));
        f.reads[1].pop();
        assert!(found(f, &ops).contains(&"divergence"));
        // A planted value on a disk.
        let mut f = fin(vec![log("a"), log("b")], top(1));
        f.pii_found
            .push("node 0: raft/000001.log holds piica@chaos.example".into());
        assert_eq!(found(f, &ops), ["privacy"]);
        // A scan that sees nothing proves nothing.
        let mut f = fin(vec![log("a"), log("b")], top(1));
        f.plain_found = 0;
        assert_eq!(found(f, &ops), ["privacy"]);
    }
}
