//! Shrinking and repairing a cluster of real `veil serve` processes (issue 24), each under keyed
//! ingest with client retries and each ending with every acknowledged entry stored once,
//! through every node with strong reads, and the replicas' digests agreeing: four nodes drained
//! to three by `veil admin nodes decommission --wait` (the drained node stops by itself and is
//! refused when it comes back with its directory); a dead node (killed, its directory deleted)
//! replaced by a new one with `veil admin nodes replace`, its old id refused; the metadata
//! group's leader killed in the middle of a move; one replica moved by hand with `veil admin
//! shards move`, and the moves it refuses; a move's snapshot sent no faster than its bound.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use veil_chaos_tests::{Ports, VeilProcess};

use crate::cluster::{
    batch_and_n, cluster_up, entries, free_base, get, ingest_until_acked, post, settled,
    sigterm_and_wait, wait_for, Cluster,
};

fn admin(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["admin", "--addr", addr])
        .args(args)
        .output()
        .expect("running veil admin")
}

/// Keyed ingest with client retries over `targets` until stopped (at least five batches);
/// answers every acknowledged entry.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Value>>,
}

impl Writer {
    fn start(tag: &'static str, targets: Vec<String>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writing = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut round = 0;
            while !writing.load(Ordering::Relaxed) || round < 5 {
                let batch = entries(&format!("{tag}{round}"), 20, true);
                ingest_until_acked(&targets, round, &batch);
                acked.extend(batch);
                round += 1;
            }
            acked
        });
        Writer { stop, thread }
    }

    fn finish(self) -> Vec<Value> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the writer")
    }
}

/// Every acknowledged entry of phase `phase` once, through every running node, with strong
/// reads; then every running node's replicas alike.
fn check_nothing_lost(c: &Cluster, phase: &str, acked: &[Value]) {
    let want: BTreeSet<(String, u64)> = acked.iter().map(batch_and_n).collect();
    for i in c.running() {
        let (status, found) = post(
            &c.http(i),
            "/api/v1/logs/query",
            &json!({"filters": {"fields": {"phase": phase}}, "limit": 10000, "consistency": "strong"}),
        )
        .unwrap();
        assert_eq!(status, 200, "{found}");
        let logs = found["logs"].as_array().unwrap();
        let ids: BTreeSet<&str> = logs.iter().map(|l| l["log_id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), logs.len(), "an entry stored twice (node {i})");
        let stored: BTreeSet<(String, u64)> = logs.iter().map(batch_and_n).collect();
        assert_eq!(stored, want, "through node {i}");
        assert_eq!(found["total"].as_u64(), Some(want.len() as u64));
    }
    let per_shard = wait_voter_digests_agree(c);
    assert_eq!(per_shard.iter().sum::<u64>(), want.len() as u64);
}

/// Waits until, shard by shard, every voter's replica holds the same entries at the same
/// applied index (a node holding no replica of a shard, as one of four does, is not asked of
/// it); returns the entries per shard.
fn wait_voter_digests_agree(c: &Cluster) -> Vec<u64> {
    wait_for("the voters' digests to agree", 60, || {
        let status = get(&c.http(c.running()[0]), "/api/v1/cluster").1;
        let http_of = |id: &Value| {
            status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == *id)
                .map(|n| n["http_addr"].as_str().unwrap().to_string())
        };
        let mut digests = std::collections::BTreeMap::new();
        let mut per_shard = Vec::new();
        for (shard, s) in status["shards"].as_array()?.iter().enumerate() {
            let mut seen = BTreeSet::new();
            let mut entries = None;
            for voter in s["replicas"].as_array()? {
                let http = http_of(voter)?;
                let lines = digests
                    .entry(http.clone())
                    .or_insert_with(|| get(&http, "/api/v1/admin/digests").1["shards"].clone());
                seen.insert(lines[shard].to_string());
                entries = lines[shard]["entries"].as_u64();
            }
            if seen.len() != 1 {
                return None;
            }
            per_shard.push(entries?);
        }
        Some(per_shard)
    })
}

/// The shards whose group names `id` (voter or learner), through `http`.
fn shards_naming(http: &str, id: u64) -> usize {
    let (_, status) = get(http, "/api/v1/cluster");
    status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["replicas"].as_array().unwrap().contains(&json!(id))
                || s["learners"].as_array().unwrap().contains(&json!(id))
        })
        .count()
}

/// Waits until every shard has its three placed voters and a leader, none of them `gone`, and
/// `gone` is among the removed nodes, through `http`.
fn wait_settled_without(http: &str, gone: u64) -> Value {
    wait_for(
        "every shard at its placed voters without the removed node",
        120,
        || {
            let (_, status) = get(http, "/api/v1/cluster");
            let shards = status["shards"].as_array()?;
            let done = shards.iter().all(|s| settled(s, 3))
                && shards
                    .iter()
                    .all(|s| !s["replicas"].as_array().unwrap().contains(&json!(gone)))
                && status["removed_nodes"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!(gone)));
            done.then_some(status)
        },
    )
}

/// Starts `bin serve` expecting it to refuse to start; answers its stderr.
fn refused_start(c: &Cluster, data_dir: &Path, extra: &[&str]) -> String {
    let key = c.key_file.display().to_string();
    let mut args = vec!["--shards", &c.shards, "--key-file", &key];
    args.extend(extra);
    let bin = Path::new(env!("CARGO_BIN_EXE_veil"));
    match VeilProcess::start_on(bin, data_dir, &Ports::free(), &args) {
        Ok(p) => panic!("node {} started where it must be refused", p.node_id),
        Err(e) => e.stderr,
    }
}

/// Issue 24: four nodes to three. `veil admin nodes decommission --wait` returns once the
/// node's replicas have moved to the other three (learner, caught up, voter, then it leaves
/// each shard) and it is removed; its process stops by itself; it cannot come back with its old
/// directory; with three members left, a further decommission is refused (exit code 6).
#[test]
fn a_decommissioned_node_hands_its_replicas_over_and_leaves_without_losing_anything() {
    let mut c = Cluster::start(4);
    // The metadata group's leader and voter: the hardest one to let go (another member becomes
    // a voter, the leadership is handed over, then it is dropped from the group).
    let meta_leader = get(&c.http(0), "/api/v1/cluster").1["metadata_leader"]
        .as_u64()
        .unwrap();
    let leaving = (0..4).find(|i| c.node(*i).node_id == meta_leader).unwrap();
    let (asked, other) = {
        let mut rest = (0..4).filter(|i| *i != leaving);
        (rest.next().unwrap(), rest.next().unwrap())
    };
    let id = c.node(leaving).node_id;
    let held = shards_naming(&c.http(asked), id);
    assert!(held >= 1, "node {id} holds replicas before it leaves");
    let writer = Writer::start("d", (0..4).map(|i| c.http(i)).collect());
    let out = admin(
        &c.http(asked),
        &[
            "nodes",
            "decommission",
            &id.to_string(),
            "--wait",
            "--wait-timeout-secs",
            "120",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(done["node_id"], id, "{done}");
    assert_eq!(done["membership"], "removed", "{done}");
    assert_eq!(done["replicas_moved"], held, "{done}");
    // What the command waited for is what the cluster says.
    let status = wait_settled_without(&c.http(asked), id);
    assert_ne!(status["metadata_leader"], json!(id), "{status}");
    // The metadata group keeps three voters, none of them the removed node.
    let voters = wait_for("three metadata voters without the removed node", 30, || {
        let voters = get(&c.http(asked), "/api/v1/cluster").1["metadata_voters"].clone();
        let v = voters.as_array()?;
        (v.len() == 3 && !v.contains(&json!(id))).then_some(voters)
    });
    let members: Vec<Value> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].clone())
        .collect();
    assert_eq!(voters, json!(members), "{status}");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    let exited = c.nodes[leaving]
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(60));
    let stderr = c.node(leaving).stderr();
    assert!(
        exited.is_some_and(|s| s.success()),
        "the removed node stops by itself: {exited:?}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("node {id} was removed from cluster")),
        "{stderr}"
    );
    c.nodes[leaving] = None;
    let acked = writer.finish();
    check_nothing_lost(&c, "d", &acked);

    // Three active members: another decommission would leave a shard two replicas.
    let other = c.node(other).node_id.to_string();
    let out = admin(&c.http(asked), &["nodes", "decommission", &other]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("veil admin: ") && err.contains("too_few_members"),
        "{err}"
    );
    // The HTTP answer says the same, typed: 409 too_few_members.
    let (code, refusal) = post(
        &c.http(asked),
        &format!("/api/v1/admin/nodes/{other}/decommission"),
        &json!({}),
    )
    .unwrap();
    assert_eq!(code, 409, "{refusal}");
    assert_eq!(refusal["error"]["code"], "too_few_members", "{refusal}");

    // The removed node, started again from its directory, is told and stops.
    let join = format!("127.0.0.1:{}", c.ports[asked].peer);
    let stderr = refused_start(&c, &c.data_dir(leaving), &["--join", &join]);
    assert!(
        stderr.contains(&format!("node {id} was removed from cluster")),
        "{stderr}"
    );
    // And the members did not take it back.
    let (_, status) = get(&c.http(asked), "/api/v1/cluster");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
}

/// Adds a slot for one more node to `c` (fresh ports, its own data directory); answers its index.
fn add_slot(c: &mut Cluster) -> usize {
    c.ports.push(Ports::free());
    c.nodes.push(None);
    c.env.push(Vec::new());
    c.nodes.len() - 1
}

/// Issue 24: a dead node (killed, its directory deleted) replaced by a new one. The new node,
/// started with `--await-add`, is added by `veil admin nodes add` and takes its share by itself; `veil admin nodes replace DEAD --by NEW --wait` removes
/// the dead one and returns once its replicas are rebuilt from the live ones; the dead id,
/// asked for again, is refused.
#[test]
fn a_dead_node_is_replaced_its_replicas_rebuilt_and_its_id_refused_when_it_returns() {
    let mut c = Cluster::start(3);
    let dead = 1;
    let dead_id = c.node(dead).node_id;
    let writer = Writer::start("r", vec![c.http(0), c.http(2)]);
    c.nodes[dead].as_mut().unwrap().kill9();
    c.nodes[dead] = None;
    std::fs::remove_dir_all(c.data_dir(dead)).unwrap();
    // The new node awaits; `veil admin nodes add` (a sentence for people, no wait) makes it a
    // member, named as the cluster names it.
    let new = add_slot(&mut c);
    c.start_awaiting(new);
    let awaiting = c.http(new);
    let out = admin(&c.http(2), &["nodes", "add", &awaiting]);
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    c.nodes[new].as_mut().unwrap().wait_ready().unwrap();
    let new_id = c.node(new).node_id;
    assert_ne!(new_id, dead_id, "a new node gets a new id");
    let status = get(&c.http(0), "/api/v1/cluster").1;
    let listed = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == new_id)
        .cloned()
        .unwrap_or_else(|| panic!("node {new_id} is a member: {status}"));
    assert_eq!(listed["http_addr"], awaiting, "{listed}");
    assert_eq!(listed["membership"], "active", "{listed}");
    let cluster_id = status["cluster_id"].as_str().unwrap();
    assert_eq!(
        said,
        format!(
            "node {new_id} at {awaiting} joined cluster {cluster_id}: it takes its share of the \
             replicas (`veil admin cluster status` shows the moves)"
        )
    );
    // Added once: the same address again is refused, with the reason.
    let out = admin(&c.http(0), &["nodes", "add", &awaiting]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        err.lines().count() == 1 && err.contains("already_a_member"),
        "{err}"
    );
    let out = admin(
        &c.http(0),
        &[
            "nodes",
            "replace",
            &dead_id.to_string(),
            "--by",
            &new_id.to_string(),
            "--wait",
            "--wait-timeout-secs",
            "120",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(done["membership"], "removed", "{done}");
    let status = wait_settled_without(&c.http(0), dead_id);
    let ids: BTreeSet<u64> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert!(ids.contains(&new_id) && !ids.contains(&dead_id), "{status}");
    assert_eq!(
        shards_naming(&c.http(0), new_id),
        4,
        "three members: the new one holds every shard"
    );
    let acked = writer.finish();
    check_nothing_lost(&c, "r", &acked);

    // The old id again, from a new directory: refused, and told why.
    let join = format!("127.0.0.1:{}", c.ports[0].peer);
    let fresh = c.dir.path().join("comeback");
    let stderr = refused_start(
        &c,
        &fresh,
        &["--join", &join, "--node-id", &dead_id.to_string()],
    );
    assert!(
        stderr.contains(&format!("node {dead_id} was removed from this cluster")),
        "{stderr}"
    );
    let (_, status) = get(&c.http(0), "/api/v1/cluster");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
}

/// Issue 24: the metadata group's leader killed (SIGKILL) in the middle of a move: another node
/// takes the metadata group over and goes on from the memberships the proposals left; once
/// the killed node is back, every move finishes and nothing acknowledged is lost.
#[test]
fn killing_the_metadata_leader_in_the_middle_of_a_move_loses_nothing() {
    let mut c = Cluster::start(4);
    let status = get(&c.http(0), "/api/v1/cluster").1;
    let meta_leader = status["metadata_leader"].as_u64().unwrap();
    let index_of = |c: &Cluster, id: u64| {
        c.running()
            .into_iter()
            .find(|i| c.node(*i).node_id == id)
            .unwrap()
    };
    let killed = index_of(&c, meta_leader);
    let leaving = (0..4).find(|i| *i != killed).unwrap();
    let leaving_id = c.node(leaving).node_id;
    let asked = (0..4).find(|i| *i != killed && *i != leaving).unwrap();
    let writer = Writer::start("k", (0..4).map(|i| c.http(i)).collect());
    let (code, answer) = post(
        &c.http(asked),
        &format!("/api/v1/admin/nodes/{leaving_id}/decommission"),
        &json!({}),
    )
    .unwrap();
    assert_eq!(code, 202, "{answer}");
    // The move has begun (the placement no longer names the node) and is not done.
    let moving = shards_naming(&c.http(asked), leaving_id);
    assert!(moving >= 1, "the move ended before the kill");
    c.nodes[killed].as_mut().unwrap().kill9();
    c.nodes[killed] = None;
    wait_for("another metadata leader", 60, || {
        let leader = get(&c.http(asked), "/api/v1/cluster").1["metadata_leader"].as_u64()?;
        (leader != meta_leader).then_some(())
    });
    // The killed node is a placed member: the moves that put a replica on it finish once it
    // is back.
    c.start_node(killed);
    wait_settled_without(&c.http(asked), leaving_id);
    let exited = c.nodes[leaving]
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(60));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    c.nodes[leaving] = None;
    let acked = writer.finish();
    check_nothing_lost(&c, "k", &acked);
}

/// A node of `veil cluster up` that is decommissioned stops by itself; `cluster up` says so
/// and keeps the others running (any other exit of a node stops them all). Three nodes, so
/// the decommission needs `--force` and leaves two replicas per shard.
#[test]
fn cluster_up_keeps_the_other_nodes_when_one_is_decommissioned() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (mut up, _) = cluster_up(dir.path(), base);
    let http = format!("127.0.0.1:{base}");
    let out = admin(&http, &["nodes", "decommission", "3"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let out = admin(
        &http,
        &[
            "nodes",
            "decommission",
            "3",
            "--force",
            "--wait",
            "--wait-timeout-secs",
            "120",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let two = wait_for("every shard on the two nodes left", 60, || {
        let (_, status) = get(&http, "/api/v1/cluster");
        let shards = status["shards"].as_array()?;
        shards
            .iter()
            .all(|s| s["replicas"] == json!([1, 2]) && s["leader"].is_u64())
            .then_some(status)
    });
    assert_eq!(two["removed_nodes"], json!([3]), "{two}");
    let (code, answer) = crate::cluster::ingest(&http, &entries("up", 10, true)).unwrap();
    assert_eq!(code, 200, "{answer}");
    assert!(
        up.0.try_wait().unwrap().is_none(),
        "cluster up stopped with a node"
    );
    sigterm_and_wait(&mut up);
}

/// The ids in `shard[key]` of a `/api/v1/cluster` answer, sorted.
fn ids_of(shard: &Value, key: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = shard[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// Polls shard `shard`'s voters through `http` until stopped; answers the fewest seen.
fn watch_voters(
    http: String,
    shard: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut fewest = usize::MAX;
        while !stop.load(Ordering::Relaxed) {
            let (code, status) = get(&http, "/api/v1/cluster");
            if code == 200 {
                let voters = status["shards"][shard]["replicas"]
                    .as_array()
                    .unwrap()
                    .len();
                fewest = fewest.min(voters);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        fewest
    })
}

/// Runs `veil admin` expecting a refusal (exit code 1, one line naming `code`), and the same
/// request over HTTP, expecting `status` and `code`.
fn refused_move(http: &str, shard: &str, from: u64, to: u64, status: u16, code: &str) {
    let out = admin(
        http,
        &[
            "shards",
            "move",
            shard,
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "{code}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("veil admin: ") && err.contains(code),
        "{err}"
    );
    let (got, answer) = post(
        http,
        &format!("/api/v1/admin/shards/{shard}/move"),
        &json!({"from": from, "to": to}),
    )
    .unwrap();
    assert_eq!(got, status, "{answer}");
    assert_eq!(answer["error"]["code"], code, "{answer}");
}

/// Issue 24: `veil admin shards move` under keyed ingest with retries. The shard's leader's
/// replica moves to the node that held none: the new replica votes before the old one leaves
/// (the shard never has fewer than three voters), the placement keeps it there, and nothing
/// acknowledged is lost or stored twice. Unknown shards and nodes, a `--from` holding no
/// replica, a `--to` holding one or no longer active, are refused with their reasons; the
/// override is dropped when the node it names is decommissioned.
#[test]
fn a_moved_replica_votes_before_the_old_one_leaves_and_nothing_is_lost() {
    let c = Cluster::start(4);
    let http = c.http(0);
    let status = get(&http, "/api/v1/cluster").1;
    let all: Vec<u64> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    let before = ids_of(&status["shards"][0], "replicas");
    let from = status["shards"][0]["leader"].as_u64().unwrap();
    let to = *all.iter().find(|id| !before.contains(id)).unwrap();
    let mut want: Vec<u64> = before
        .iter()
        .map(|id| if *id == from { to } else { *id })
        .collect();
    want.sort_unstable();

    let writer = Writer::start("m", (0..4).map(|i| c.http(i)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_voters(c.http(1), 0, stop.clone());
    let out = admin(
        &http,
        &[
            "shards",
            "move",
            "0",
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
            "--wait",
            "--wait-timeout-secs",
            "120",
            "--json",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    let fewest = watcher.join().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(done["shard"], 0, "{done}");
    assert_eq!(
        (done["from"].as_u64(), done["to"].as_u64()),
        (Some(from), Some(to)),
        "{done}"
    );
    assert_eq!(done["replicas"], json!(want), "{done}");
    assert!(fewest >= 3, "shard 0 had {fewest} voters during the move");
    // What the command waited for is what every node says, and the placement keeps it there.
    c.wait_replicated(3);
    for i in 0..4 {
        let status = get(&c.http(i), "/api/v1/cluster").1;
        let s0 = &status["shards"][0];
        assert_eq!(ids_of(s0, "replicas"), want, "through node {i}: {s0}");
        assert_eq!(ids_of(s0, "placed"), want, "through node {i}: {s0}");
    }
    let acked = writer.finish();
    check_nothing_lost(&c, "m", &acked);

    // Refusals, each with its reason, over the CLI (exit code 1) and HTTP alike.
    refused_move(&http, "99", from, to, 404, "shard_not_found");
    refused_move(&http, "0", want[0], 42, 404, "node_not_found");
    refused_move(&http, "0", from, want[0], 409, "not_a_replica");
    let other = *want.iter().find(|id| **id != to).unwrap();
    refused_move(&http, "0", to, other, 409, "already_a_replica");
    let (code, answer) = post(&http, "/api/v1/admin/shards/0/move", &json!({"from": 1})).unwrap();
    assert_eq!(
        (code, answer["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{answer}"
    );

    // `--no-wait --json` prints the HTTP answer: the shard's placement after the move.
    let s1 = get(&http, "/api/v1/cluster").1["shards"][1].clone();
    let s1_voters = ids_of(&s1, "replicas");
    let s1_to = *all.iter().find(|id| !s1_voters.contains(id)).unwrap();
    let s1_from = s1_voters[0];
    let out = admin(
        &http,
        &[
            "shards",
            "move",
            "1",
            "--from",
            &s1_from.to_string(),
            "--to",
            &s1_to.to_string(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(accepted["shard"], 1, "{accepted}");
    let placed = accepted["placed"].as_array().unwrap();
    assert!(
        placed.contains(&json!(s1_to)) && !placed.contains(&json!(s1_from)),
        "{accepted}"
    );
    let settled_s1 = wait_for("shard 1 at its new placement", 120, || {
        let s = get(&http, "/api/v1/cluster").1["shards"][1].clone();
        (settled(&s, 3) && s["placed"] == accepted["placed"]).then_some(s)
    });
    assert!(
        ids_of(&settled_s1, "replicas").contains(&s1_to),
        "{settled_s1}"
    );
    // For people, the same acceptance is a sentence naming the placement the cluster then has.
    let s2_voters = ids_of(&get(&http, "/api/v1/cluster").1["shards"][2], "replicas");
    let s2_to = *all.iter().find(|id| !s2_voters.contains(id)).unwrap();
    let s2_from = s2_voters[0];
    let out = admin(
        &http,
        &[
            "shards",
            "move",
            "2",
            "--from",
            &s2_from.to_string(),
            "--to",
            &s2_to.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let settled_s2 = wait_for("shard 2 at its new placement", 120, || {
        let s = get(&http, "/api/v1/cluster").1["shards"][2].clone();
        (settled(&s, 3) && ids_of(&s, "placed").contains(&s2_to)).then_some(s)
    });
    let placed: Vec<String> = settled_s2["placed"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    assert_eq!(
        said,
        format!(
            "shard 2's replica is moving from node {s2_from} to node {s2_to} (placed on nodes \
             {}); `veil admin shards show 2` shows the move",
            placed.join(",")
        )
    );

    // The node shard 0 moved to is decommissioned: the override is dropped, every shard falls
    // back to the ring over the three members left (each holds every shard), and a move to the
    // removed node is refused.
    let out = admin(
        &http,
        &[
            "nodes",
            "decommission",
            &to.to_string(),
            "--wait",
            "--wait-timeout-secs",
            "120",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = wait_settled_without(&http, to);
    let left: Vec<u64> = all.iter().copied().filter(|id| *id != to).collect();
    for s in status["shards"].as_array().unwrap() {
        assert_eq!(ids_of(s, "replicas"), left, "{s}");
    }
    refused_move(&http, "0", left[0], to, 409, "node_not_active");
}

/// The snapshot bytes the node at `http` has sent, from its `/metrics`.
fn snapshot_bytes_sent(http: &str) -> u64 {
    crate::cluster::metric(http, "veil_raft_snapshot_bytes_sent_total")
}

/// `n` entries whose messages are `bytes` lowercase letters from a xorshift (zstd cannot
/// shrink them much, and no PII pattern matches letters alone).
fn bulky_entries(tag: &str, n: usize, bytes: usize, seed: u64) -> Vec<Value> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            let message: String = (0..bytes)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            json!({"service": "bulk", "level": "INFO", "message": message,
                "fields": {"batch": tag, "phase": "bulk", "n": i, "idempotency_key": format!("{tag}-{i}")}})
        })
        .collect()
}

/// Issue 24: a move's snapshot streams no faster than `--snapshot-send-bytes-per-sec` (here
/// through its `VEIL_` twin): one shard with a few MiB, its Raft logs purged so the new
/// replica must get a snapshot, moved at 128 KiB/s, takes at least the bytes sent over the rate
/// less the bucket's burst (one 1 MiB chunk). Unbounded, the same move takes well under a
/// second on loopback. The replica moved is the leader's, and writes sent to the leader while
/// its successor catches up are all acknowledged: the leader takes them until it hands over
/// (it once sent them to the other replicas, which named it, until the forward deadline).
#[test]
fn a_moves_snapshot_is_sent_no_faster_than_the_bound() {
    const RATE: u64 = 128 << 10;
    const BURST: u64 = 1 << 20;
    let rate = [(
        "VEIL_SNAPSHOT_SEND_BYTES_PER_SEC".to_string(),
        RATE.to_string(),
    )];
    let c = Cluster::start_with_shards(4, "1", |_| rate.to_vec());
    let http = c.http(0);
    for round in 0..10 {
        let batch = bulky_entries(&format!("bulk{round}"), 250, 2000, round as u64 + 7);
        ingest_until_acked(std::slice::from_ref(&http), round, &batch);
    }
    // Every node snapshots and purges its log: the new replica cannot catch up from the log.
    for i in 0..4 {
        let (code, answer) = post(&c.http(i), "/api/v1/admin/compact", &json!({})).unwrap();
        assert_eq!(code, 200, "{answer}");
    }
    let status = get(&http, "/api/v1/cluster").1;
    let voters = ids_of(&status["shards"][0], "replicas");
    let from = status["shards"][0]["leader"].as_u64().unwrap();
    let leader_http = c.http((0..4).find(|i| c.node(*i).node_id == from).unwrap());
    let to = (1..=4).find(|id| !voters.contains(id)).unwrap();
    let sent_before: Vec<u64> = (0..4).map(|i| snapshot_bytes_sent(&c.http(i))).collect();
    let started = std::time::Instant::now();
    let mover = std::thread::spawn({
        let (http, from, to) = (http.clone(), from.to_string(), to.to_string());
        move || {
            admin(
                &http,
                &[
                    "shards",
                    "move",
                    "0",
                    "--from",
                    &from,
                    "--to",
                    &to,
                    "--wait",
                    "--wait-timeout-secs",
                    "300",
                    "--json",
                ],
            )
        }
    });
    // Writes through the leader whose replica moves, while its successor takes the snapshot.
    let mut during = 0;
    while !mover.is_finished() {
        let tag = format!("during{during}");
        let batch = bulky_entries(&tag, 5, 100, during as u64 + 101);
        let (code, answer) = crate::cluster::ingest(&leader_http, &batch).unwrap();
        assert!(
            code == 200 && answer["rejected"] == 0,
            "a write to the moving shard's leader during the move: {code} {answer}"
        );
        during += 1;
    }
    let out = mover.join().unwrap();
    let took = started.elapsed();
    assert!(during >= 3, "only {during} writes during the move");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = (0..4)
        .map(|i| snapshot_bytes_sent(&c.http(i)) - sent_before[i])
        .max()
        .unwrap();
    assert!(
        sent >= BURST + (512 << 10),
        "only {sent} snapshot bytes sent: a test of nothing"
    );
    let floor = Duration::from_secs_f64((sent - BURST) as f64 / RATE as f64);
    assert!(
        took >= floor,
        "{sent} bytes at {RATE} B/s moved in {took:?}, under {floor:?}"
    );
    c.wait_replicated(3);
    let (_, found) = post(
        &http,
        "/api/v1/logs/query",
        &json!({"filters": {"fields": {"phase": "bulk"}}, "limit": 0, "consistency": "strong"}),
    )
    .unwrap();
    assert_eq!(found["total"], 2500 + 5 * during, "{found}");
    wait_voter_digests_agree(&c);
}
