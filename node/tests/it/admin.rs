//! `veil admin` against a real node: every subcommand's table and `--json` (checked against
//! the HTTP answers), and its exit codes and one-line errors.

use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::harness::Veil;

fn admin(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["admin", "--addr", addr])
        .args(args)
        .output()
        .expect("running veil admin")
}

fn ok_json(addr: &str, args: &[&str]) -> Value {
    let out = admin(addr, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "veil admin {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn ok_table(addr: &str, args: &[&str]) -> String {
    let out = admin(addr, args);
    assert!(
        out.status.success(),
        "veil admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn get(veil: &Veil, path: &str) -> Value {
    reqwest::blocking::get(veil.url(path))
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn admin_tables_and_json_match_the_http_answers() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let addr = veil.http.clone();
    let cluster = get(&veil, "/api/v1/cluster");

    let nodes = ok_json(&addr, &["nodes", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
    let n = &nodes[0];
    assert_eq!(n["id"], cluster["nodes"][0]["id"]);
    assert_eq!(n["http_addr"], addr.as_str());
    assert_eq!(n["state"], "up");
    assert_eq!(n["membership"], "active");
    assert_eq!(n["membership"], cluster["nodes"][0]["membership"]);
    assert_eq!(n["replicas"], 4, "one node holds all 4 shards: {n}");
    assert_eq!(n["leaders"], 4, "{n}");
    let table = ok_table(&addr, &["nodes", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("ID") && lines[0].contains("REPLICAS"),
        "{table}"
    );
    assert!(
        lines.iter().any(|l| l.contains(&addr) && l.contains("up")),
        "{table}"
    );

    let shards = ok_json(&addr, &["shards", "list"]);
    let ids: Vec<u64> = shards
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    for (s, h) in shards
        .as_array()
        .unwrap()
        .iter()
        .zip(cluster["shards"].as_array().unwrap())
    {
        assert_eq!(s["replicas"], h["replicas"], "{s}");
        assert_eq!(s["leader"], h["leader"], "{s}");
    }
    assert!(ok_table(&addr, &["shards", "list"]).lines().count() >= 5);
    let one = ok_json(&addr, &["shards", "show", "2"]);
    assert_eq!(one["shard"], 2);
    assert!(ok_table(&addr, &["shards", "show", "2"]).contains("SHARD"));

    let status = ok_json(&addr, &["cluster", "status", "--no-rate"]);
    assert_eq!(status["health"], "ok", "{status}");
    assert_eq!(status["shards"], 4);
    assert_eq!(status["shards_needing_attention"], json!([]));
    assert!(status["nodes"][0]["data_bytes"].is_u64(), "{status}");
    let table = ok_table(&addr, &["cluster", "status"]);
    assert!(
        table.contains("health ok") && table.contains("ENTRIES/S"),
        "{table}"
    );
    assert!(
        table.contains("every shard has its replicas and a leader"),
        "{table}"
    );

    // PII patterns: add, list, switch off, delete; each checked against the HTTP answer.
    let added = ok_json(
        &addr,
        &[
            "pii-patterns",
            "add",
            "--type",
            "badge",
            "--regex",
            r"\bBDG[0-9]{4}\b",
            "--description",
            "door badges",
        ],
    );
    let id = added["pattern_id"].as_str().unwrap().to_string();
    let listed = ok_json(&addr, &["pii-patterns", "list"]);
    assert_eq!(listed, get(&veil, "/api/v1/admin/pii-patterns"));
    assert_eq!(listed["patterns"][0]["pattern_id"], id.as_str());
    let table = ok_table(&addr, &["pii-patterns", "list"]);
    assert!(
        table.contains(&id) && table.contains("door badges") && table.contains("email"),
        "{table}"
    );
    let changed = ok_json(&addr, &["pii-patterns", "change", &id, "--active", "false"]);
    assert_eq!(changed["is_active"], false);
    assert_eq!(
        get(&veil, "/api/v1/admin/pii-patterns")["patterns"][0]["is_active"],
        false
    );
    assert!(ok_table(&addr, &["pii-patterns", "delete", &id]).contains("deleted"));
    assert_eq!(
        get(&veil, "/api/v1/admin/pii-patterns")["patterns"],
        json!([])
    );

    assert!(ok_table(&addr, &["compact"]).contains("compacted"));

    // One look of the leader balancer: one node leads everything, which is its share.
    let balanced = ok_json(&addr, &["leaders", "balance"]);
    assert_eq!(balanced["outcome"], "balanced", "{balanced}");
    let http: Value = reqwest::blocking::Client::new()
        .post(veil.url("/api/v1/admin/leaders/balance"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(balanced, http);
    assert!(ok_table(&addr, &["leaders", "balance"]).contains("balanced"));
}

/// A membership change the cluster must refuse: a one-line error with its own exit code (6)
/// and the HTTP answer's typed code; a node that is not there is a plain refusal (1).
#[test]
fn admin_refuses_membership_changes_that_would_cost_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let id = get(&veil, "/api/v1/cluster")["node_id"].to_string();
    let refused = |args: &[&str], code: i32, needle: &str| {
        let out = admin(&veil.http, args);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    refused(&["nodes", "decommission", &id], 6, "last_member");
    refused(&["nodes", "decommission", &id, "--force"], 6, "last_member");
    refused(&["nodes", "remove", &id], 6, "node_up");
    refused(&["nodes", "decommission", "99"], 1, "node_not_found");
    refused(
        &["nodes", "replace", &id, "--by", "99"],
        1,
        "veil serve --join",
    );
    let client = reqwest::blocking::Client::new();
    let answer =
        |resp: reqwest::blocking::Response| (resp.status().as_u16(), resp.json::<Value>().unwrap());
    let (status, body) = answer(
        client
            .post(veil.url(&format!("/api/v1/admin/nodes/{id}/decommission")))
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("last_member"))
    );
    let (status, body) = answer(
        client
            .delete(veil.url(&format!("/api/v1/admin/nodes/{id}")))
            .send()
            .unwrap(),
    );
    assert_eq!((status, &body["error"]["code"]), (409, &json!("node_up")));
    let (status, body) = answer(
        client
            .post(veil.url("/api/v1/admin/nodes/x/decommission"))
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_node_id"))
    );
    // Still the cluster's only, active member.
    assert_eq!(
        get(&veil, "/api/v1/cluster")["nodes"][0]["membership"],
        "active"
    );
}

#[test]
fn admin_errors_are_one_line_with_an_exit_code_that_says_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let veil = Veil::start(dir.path(), &[]);
    let one_line = |out: &Output| {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("veil admin: "), "{err}");
        err
    };
    // Nothing listens on port 1.
    let out = admin("127.0.0.1:1", &["nodes", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(one_line(&out).contains("no Veil node answers at 127.0.0.1:1"));
    // Refused by the node: a regex that does not compile, a pattern that is not there, a shard
    // the cluster does not have.
    let out = admin(
        &veil.http,
        &["pii-patterns", "add", "--type", "x", "--regex", "BDG[0-9"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("invalid_pattern"));
    let out = admin(
        &veil.http,
        &[
            "pii-patterns",
            "delete",
            "0190a8c2-0000-7000-8000-000000000009",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("pattern_not_found"));
    let out = admin(&veil.http, &["shards", "show", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("no shard 99"));
    // `nodes add` with nothing awaiting at the address: exit 4 (retry once it is started).
    let out = admin(&veil.http, &["nodes", "add", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(one_line(&out).contains("node_unreachable"));
    // A node awaiting with other PII keys (each data directory here has its own key file): the
    // cluster refuses it (exit 1), and it goes on awaiting with its directory unwritten.
    let others = tempfile::tempdir().unwrap();
    let stranger = Veil::start(&others.path().join("keys"), &["--await-add"]);
    assert_eq!(stranger.node_id, 0, "not a member yet");
    let out = admin(&veil.http, &["nodes", "add", &stranger.http]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = one_line(&out);
    assert!(
        err.contains("join_refused") && err.contains("PII keys"),
        "{err}"
    );
    let health = reqwest::blocking::get(stranger.url("/api/v1/health")).unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().unwrap()["status"], "awaiting_add");
    assert!(!others.path().join("keys/veil.toml").try_exists().unwrap());
    // One started with another shard count is refused before it joins.
    let other_shards = Veil::start(
        &others.path().join("shards"),
        &["--await-add", "--shards", "8"],
    );
    let out = admin(&veil.http, &["nodes", "add", &other_shards.http]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(one_line(&out).contains("shards_differ"));
    // The node itself is a member: asked to join, it says so; not an address, a 400.
    let out = admin(&veil.http, &["nodes", "add", &veil.http]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(one_line(&out).contains("already_a_member"));
    let answer = reqwest::blocking::Client::new()
        .post(veil.url("/api/v1/admin/nodes"))
        .json(&json!({"http_addr": "no-port"}))
        .send()
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(
        answer.json::<Value>().unwrap()["error"]["code"],
        "invalid_http_addr"
    );
    // Usage errors are clap's (exit 2).
    assert_eq!(
        admin(&veil.http, &["nodes", "frobnicate"]).status.code(),
        Some(2)
    );
}
