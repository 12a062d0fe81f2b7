//! `veil admin`: the cluster admin CLI. It talks to any node's HTTP API (`--addr`, or
//! `VEIL_ADDR`) and prints aligned tables for people or `--json` for scripts.
//!
//! Exit codes say what failed: 0 done; 1 the node refused the request (a 4xx: bad input, no
//! such pattern or node); 2 wrong usage (clap's own); 3 no node answers at `--addr`; 4 the node
//! failed or cannot do it now (a 5xx, an answer that is not what Veil answers, a `--wait` that
//! ran out of time); 5 `cluster status` found the cluster degraded or unavailable; 6 the
//! cluster refused a decommission or removal that would cost a shard a replica (fewer than
//! three active members left, the last member, or a removal of a node that is up). Errors are
//! one line on stderr with what to do.

mod client;
mod membership;
mod render;

use std::process::ExitCode;

use serde_json::{json, Value};

use client::{AdminError, Client};

/// Flags of `veil admin`.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// A node's HTTP address (any member answers for the cluster).
    #[arg(
        long,
        env = "VEIL_ADDR",
        default_value = "127.0.0.1:7420",
        global = true
    )]
    addr: String,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for each answer, in milliseconds.
    #[arg(long, default_value_t = 10_000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// The cluster at a glance.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The members.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// The shards' Raft groups.
    #[command(subcommand)]
    Shards(ShardsCommand),
    /// Shard leaderships.
    #[command(subcommand)]
    Leaders(LeadersCommand),
    /// Custom PII patterns (the cluster's: a change through any node reaches every node).
    #[command(subcommand, name = "pii-patterns")]
    PiiPatterns(PatternsCommand),
    /// Snapshots and purges the Raft logs, compacts RocksDB and merges the indexes of the node
    /// at --addr, now.
    Compact,
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Members and their state, per-node replica and leader counts, data size and ingest
    /// rate, and the shards that need attention (under-replicated, without a leader, moving).
    Status {
        /// Skip the ingest rate (it samples every node's counters twice, a second apart).
        #[arg(long)]
        no_rate: bool,
    },
}

#[derive(clap::Subcommand)]
enum NodesCommand {
    /// Every member: id, addresses, state, replicas and leaders it holds.
    List,
    /// Adds the node awaiting at HTTP_ADDR (started with `veil serve --await-add` and no data
    /// directory): it joins through the member at --addr and takes its share of the replicas,
    /// each a learner that catches up, then a voter, then the replica it replaces leaves.
    Add {
        /// The new node's HTTP address (its --http-addr).
        http_addr: String,
        #[command(flatten)]
        wait: membership::WaitArgs,
    },
    /// Drains a member: its replicas move to the others, then it is removed (and its process
    /// stops). Refused when fewer than three active members would be left, unless --force.
    Decommission {
        /// The member's node id (`veil admin nodes list`).
        id: u64,
        /// Even when a shard would be left with fewer than three replicas.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: membership::WaitArgs,
    },
    /// Removes a member that is down (its process gone, its disk lost): its replicas are
    /// rebuilt from the live ones where the placement now puts them, and it is refused if it
    /// comes back. Refused while it answers (decommission it instead).
    Remove {
        /// The dead member's node id.
        id: u64,
        /// Even when a shard would be left with fewer than three replicas.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: membership::WaitArgs,
    },
    /// Replaces a dead member by a new one: start the new node with `veil serve --join` first
    /// (it joins and takes its share by itself), then this checks it is up and removes the
    /// dead one, whose replicas are rebuilt on the new node and the others.
    Replace {
        /// The dead member's node id.
        dead: u64,
        /// The new member's node id (already joined and up).
        #[arg(long)]
        by: u64,
        #[command(flatten)]
        wait: membership::WaitArgs,
    },
}

#[derive(clap::Subcommand)]
enum LeadersCommand {
    /// One look of the leader balancer now: when a node leads more than its share, one of its
    /// leaderships moves to the shard's voter leading fewest (run again until "balanced").
    Balance,
}

#[derive(clap::Subcommand)]
enum ShardsCommand {
    /// Every shard: replicas, learners, leader, term, indexes.
    List,
    /// One shard, with each replica's lag behind its leader.
    Show {
        /// The shard number.
        shard: u32,
    },
    /// Moves one replica of a shard from one member to another: the new replica enters as a
    /// learner, catches up, becomes a voter, and only then is the old one removed. The shard
    /// keeps this placement until a member it names is decommissioned or removed.
    Move {
        /// The shard number.
        shard: u32,
        /// The member holding the replica now.
        #[arg(long)]
        from: u64,
        /// The active member to move it to (holding no replica of the shard yet).
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        wait: membership::WaitArgs,
    },
}

#[derive(clap::Subcommand)]
enum PatternsCommand {
    /// The custom patterns and the built-in types' strategies.
    List,
    /// Adds a pattern (validated by the node; applied at once).
    Add {
        /// The type reported in pii_detected (lowercase, e.g. employee_id).
        #[arg(long = "type")]
        pattern_type: String,
        /// The regex (Rust regex syntax).
        #[arg(long)]
        regex: String,
        /// REDACT (default), HASH or PARTIAL_MASK.
        #[arg(long)]
        strategy: Option<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        /// Add it switched off.
        #[arg(long)]
        inactive: bool,
    },
    /// Switches a pattern on or off.
    Change {
        /// The pattern's id.
        id: String,
        /// true or false.
        #[arg(long, action = clap::ArgAction::Set)]
        active: bool,
    },
    /// Deletes a pattern.
    Delete {
        /// The pattern's id.
        id: String,
    },
}

/// Runs `veil admin …`; the exit code says what failed.
pub async fn run(args: AdminArgs) -> ExitCode {
    let client = match Client::new(&args.addr, args.timeout_ms) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let outcome = match args.command {
        AdminCommand::Cluster(ClusterCommand::Status { no_rate }) => {
            cluster_status(&client, args.json, !no_rate).await
        }
        AdminCommand::Nodes(NodesCommand::List) => nodes_list(&client, args.json).await,
        AdminCommand::Nodes(NodesCommand::Add { http_addr, wait }) => {
            membership::add(&client, args.json, &http_addr, &wait).await
        }
        AdminCommand::Nodes(NodesCommand::Decommission { id, force, wait }) => {
            membership::decommission(&client, args.json, id, force, &wait).await
        }
        AdminCommand::Nodes(NodesCommand::Remove { id, force, wait }) => {
            membership::remove(&client, args.json, id, force, &wait).await
        }
        AdminCommand::Nodes(NodesCommand::Replace { dead, by, wait }) => {
            membership::replace(&client, args.json, dead, by, &wait).await
        }
        AdminCommand::Leaders(LeadersCommand::Balance) => {
            membership::balance(&client, args.json).await
        }
        AdminCommand::Shards(ShardsCommand::List) => shards_list(&client, args.json).await,
        AdminCommand::Shards(ShardsCommand::Show { shard }) => {
            shard_show(&client, args.json, shard).await
        }
        AdminCommand::Shards(ShardsCommand::Move {
            shard,
            from,
            to,
            wait,
        }) => membership::shard_move(&client, args.json, shard, from, to, &wait).await,
        AdminCommand::PiiPatterns(c) => patterns(&client, args.json, c).await,
        AdminCommand::Compact => {
            client
                .post("/api/v1/admin/compact", &json!({}))
                .await
                .map(|report| {
                    print_json_or(args.json, &report, || {
                        format!("compacted the node at {}", args.addr)
                    });
                    ExitCode::SUCCESS
                })
        }
    };
    outcome.unwrap_or_else(|e| fail(&e))
}

fn fail(e: &AdminError) -> ExitCode {
    eprintln!("veil admin: {e}");
    ExitCode::from(e.exit_code())
}

pub(crate) fn print_json_or(json: bool, value: &Value, text: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", text());
    }
}

/// The members with the replicas and leaders each holds, from `GET /api/v1/cluster`.
fn nodes_with_counts(cluster: &Value) -> Vec<Value> {
    let shards = cluster["shards"].as_array().cloned().unwrap_or_default();
    cluster["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut n| {
            let id = n["id"].as_u64();
            let holds = |key: &str| {
                shards
                    .iter()
                    .filter(|s| {
                        s[key]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|x| x.as_u64() == id))
                    })
                    .count()
            };
            let leaders = shards.iter().filter(|s| s["leader"].as_u64() == id).count();
            n["replicas"] = holds("replicas").into();
            n["learners"] = holds("learners").into();
            n["leaders"] = leaders.into();
            n
        })
        .collect()
}

async fn nodes_list(client: &Client, json: bool) -> Result<ExitCode, AdminError> {
    let cluster = client.get("/api/v1/cluster").await?;
    let nodes = nodes_with_counts(&cluster);
    print_json_or(json, &Value::Array(nodes.clone()), || {
        render::nodes(&nodes, false)
    });
    Ok(ExitCode::SUCCESS)
}

async fn shards_list(client: &Client, json: bool) -> Result<ExitCode, AdminError> {
    let cluster = client.get("/api/v1/cluster").await?;
    let shards = cluster["shards"].clone();
    print_json_or(json, &shards, || {
        render::shards(shards.as_array().map_or(&[], |v| v))
    });
    Ok(ExitCode::SUCCESS)
}

async fn shard_show(client: &Client, json: bool, shard: u32) -> Result<ExitCode, AdminError> {
    let cluster = client.get("/api/v1/cluster").await?;
    let found = cluster["shards"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["shard"].as_u64() == Some(u64::from(shard)))
        })
        .cloned()
        .ok_or_else(|| {
            AdminError::Refused(format!(
                "the cluster has no shard {shard} (it has {}; `veil admin shards list` lists them)",
                cluster["shards"].as_array().map_or(0, Vec::len)
            ))
        })?;
    print_json_or(json, &found, || render::shard(&found));
    Ok(ExitCode::SUCCESS)
}

async fn cluster_status(client: &Client, json: bool, rate: bool) -> Result<ExitCode, AdminError> {
    let cluster = client.get("/api/v1/cluster").await?;
    let health = client.get_any_status("/api/v1/health").await?;
    let mut nodes = nodes_with_counts(&cluster);
    // Data size and ingest rate from every member that answers (a down one has none).
    let sample = |nodes: Vec<Value>| async move {
        let mut out = Vec::new();
        for n in &nodes {
            let addr = n["http_addr"].as_str().unwrap_or_default();
            out.push(client.metrics_of(addr).await.ok());
        }
        out
    };
    let first = sample(nodes.clone()).await;
    let second = if rate {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        Some(sample(nodes.clone()).await)
    } else {
        None
    };
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Some(m) = &first[i] {
            n["data_bytes"] = m.data_bytes.into();
            n["entries_ingested"] = m.entries.into();
        }
        if let (Some(Some(a)), Some(b)) = (second.as_ref().map(|s| &s[i]), &first[i]) {
            n["ingest_entries_per_second"] = a.entries.saturating_sub(b.entries).into();
        }
    }
    let shards = cluster["shards"].as_array().cloned().unwrap_or_default();
    let attention: Vec<Value> = shards
        .iter()
        .filter(|s| render::shard_problem(s, &nodes).is_some())
        .cloned()
        .collect();
    let status = health["status"].as_str().unwrap_or("unknown").to_string();
    let answer = json!({
        "cluster_id": cluster["cluster_id"],
        "metadata_leader": cluster["metadata_leader"],
        "health": status,
        "nodes": nodes,
        "shards": shards.len(),
        "shards_needing_attention": attention,
    });
    print_json_or(json, &answer, || render::status(&answer));
    Ok(if status == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(5)
    })
}

async fn patterns(
    client: &Client,
    json: bool,
    command: PatternsCommand,
) -> Result<ExitCode, AdminError> {
    const PATH: &str = "/api/v1/admin/pii-patterns";
    match command {
        PatternsCommand::List => {
            let list = client.get(PATH).await?;
            print_json_or(json, &list, || render::patterns(&list));
        }
        PatternsCommand::Add {
            pattern_type,
            regex,
            strategy,
            description,
            inactive,
        } => {
            let mut body = json!({"pattern_type": pattern_type, "regex_pattern": regex,
                "is_active": !inactive});
            if let Some(s) = strategy {
                body["masking_strategy"] = s.into();
            }
            if let Some(d) = description {
                body["description"] = d.into();
            }
            let added = client.post(PATH, &body).await?;
            print_json_or(json, &added, || {
                format!(
                    "added pattern {} ({}), in force on every node as it applies the change",
                    added["pattern_id"].as_str().unwrap_or("?"),
                    added["pattern_type"].as_str().unwrap_or("?")
                )
            });
        }
        PatternsCommand::Change { id, active } => {
            let changed = client
                .patch(&format!("{PATH}/{id}"), &json!({"is_active": active}))
                .await?;
            print_json_or(json, &changed, || {
                format!(
                    "pattern {id} is now {}",
                    if active { "active" } else { "inactive" }
                )
            });
        }
        PatternsCommand::Delete { id } => {
            client.delete(&format!("{PATH}/{id}")).await?;
            print_json_or(json, &json!({"deleted": id}), || {
                format!("deleted pattern {id}")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
