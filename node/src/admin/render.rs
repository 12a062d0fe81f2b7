//! `veil admin`'s tables for people (comfy-table), from the same JSON `--json` prints.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use serde_json::Value;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

/// Right-aligns the columns at `numeric`.
fn align_right(t: &mut Table, numeric: &[usize]) {
    for i in numeric {
        if let Some(c) = t.column_mut(*i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            if a.is_empty() {
                "-".into()
            } else {
                a.iter().map(text).collect::<Vec<_>>().join(",")
            }
        }
        other => other.to_string(),
    }
}

fn bytes(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) => format!("{b} B"),
    }
}

/// The members; `figures` adds data size and ingest rate columns (`cluster status`).
pub fn nodes(nodes: &[Value], figures: bool) -> String {
    let mut header = vec![
        "ID",
        "HTTP",
        "GRPC",
        "PEER",
        "STATE",
        "MEMBERSHIP",
        "REPLICAS",
        "LEARNING",
        "LEADERS",
    ];
    if figures {
        header.extend(["DATA", "ENTRIES/S"]);
    }
    let mut t = table(&header);
    for n in nodes {
        let mut row = vec![
            text(&n["id"]),
            text(&n["http_addr"]),
            text(&n["grpc_addr"]),
            text(&n["peer_addr"]),
            text(&n["state"]),
            text(&n["membership"]),
            text(&n["replicas"]),
            text(&n["learners"]),
            text(&n["leaders"]),
        ];
        if figures {
            row.push(bytes(&n["data_bytes"]));
            row.push(text(&n["ingest_entries_per_second"]));
        }
        t.add_row(row);
    }
    align_right(&mut t, &[0, 6, 7, 8, 9, 10]);
    t.to_string()
}

/// The shards.
pub fn shards(shards: &[Value]) -> String {
    let mut t = table(&[
        "SHARD", "REPLICAS", "LEARNERS", "PLACED", "LEADER", "TERM", "COMMIT", "APPLIED",
    ]);
    for s in shards {
        t.add_row(vec![
            text(&s["shard"]),
            text(&s["replicas"]),
            text(&s["learners"]),
            text(&s["placed"]),
            text(&s["leader"]),
            text(&s["term"]),
            text(&s["commit_index"]),
            text(&s["applied_index"]),
        ]);
    }
    align_right(&mut t, &[0, 4, 5, 6, 7]);
    t.to_string()
}

/// One shard, with its replicas' lag.
pub fn shard(s: &Value) -> String {
    let mut out = shards(std::slice::from_ref(s));
    if let Some(lag) = s["lag"].as_object().filter(|l| !l.is_empty()) {
        let mut t = table(&["REPLICA", "LAG (ENTRIES)"]);
        for (id, n) in lag {
            t.add_row(vec![id.clone(), text(n)]);
        }
        align_right(&mut t, &[0, 1]);
        out.push_str("\n\n");
        out.push_str(&t.to_string());
    }
    out
}

/// What is wrong with a shard, if anything: fewer than three voters, a voter down, no leader,
/// a replica still catching up, or voters other than the placed ones (a move in progress).
pub fn shard_problem(s: &Value, nodes: &[Value]) -> Option<String> {
    let voters = s["replicas"].as_array().map_or(0, Vec::len);
    let down: Vec<String> = s["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|id| {
            nodes
                .iter()
                .any(|n| n["id"] == **id && n["state"].as_str() != Some("up"))
        })
        .map(text)
        .collect();
    let learners = s["learners"].as_array().map_or(0, Vec::len);
    let mut why = Vec::new();
    if s["leader"].is_null() {
        why.push("no leader".to_string());
    }
    if voters < 3.min(nodes.len()) {
        why.push(format!("{voters} voters"));
    }
    if !down.is_empty() {
        why.push(format!("replica on down node {}", down.join(",")));
    }
    if learners > 0 {
        why.push(format!("{learners} replica(s) catching up"));
    }
    let sorted = |v: &Value| {
        let mut ids: Vec<u64> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        ids.sort_unstable();
        ids
    };
    let placed = sorted(&s["placed"]);
    if !placed.is_empty() && placed != sorted(&s["replicas"]) {
        why.push(format!("moving to {}", text(&s["placed"])));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// `cluster status`.
pub fn status(a: &Value) -> String {
    let nodes_v = a["nodes"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "cluster {}  health {}  metadata leader {}  {} nodes  {} shards\n\n",
        text(&a["cluster_id"]),
        text(&a["health"]),
        text(&a["metadata_leader"]),
        nodes_v.len(),
        text(&a["shards"]),
    );
    out.push_str(&nodes(&nodes_v, true));
    let attention = a["shards_needing_attention"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if attention.is_empty() {
        out.push_str("\n\nevery shard has its replicas and a leader");
    } else {
        let mut t = table(&["SHARD", "REPLICAS", "LEADER", "PROBLEM"]);
        for s in &attention {
            t.add_row(vec![
                text(&s["shard"]),
                text(&s["replicas"]),
                text(&s["leader"]),
                shard_problem(s, &nodes_v).unwrap_or_default(),
            ]);
        }
        align_right(&mut t, &[0, 2]);
        out.push_str(&format!("\n\n{} shards need attention:\n", attention.len()));
        out.push_str(&t.to_string());
    }
    out
}

/// `pii-patterns list`.
pub fn patterns(list: &Value) -> String {
    let mut t = table(&["ID", "TYPE", "STRATEGY", "ACTIVE", "REGEX", "DESCRIPTION"]);
    for p in list["patterns"].as_array().into_iter().flatten() {
        t.add_row(vec![
            text(&p["pattern_id"]),
            text(&p["pattern_type"]),
            text(&p["masking_strategy"]),
            text(&p["is_active"]),
            text(&p["regex_pattern"]),
            text(&p["description"]),
        ]);
    }
    let mut b = table(&["BUILT-IN TYPE", "STRATEGY"]);
    for p in list["builtin"].as_array().into_iter().flatten() {
        b.add_row(vec![text(&p["pattern_type"]), text(&p["masking_strategy"])]);
    }
    format!("{t}\n\n{b}")
}
