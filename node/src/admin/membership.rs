//! `veil admin nodes add | decommission | remove | replace`, `shards move` and `leaders balance`:
//! the membership changes of `/api/v1/admin/nodes...` and `/api/v1/admin/shards/{shard}/move`,
//! and `--wait`, which follows the change through `GET /api/v1/cluster` (asking another member
//! when the one at `--addr` stops, as a decommissioned node does) with a progress bar of the
//! replicas still to move.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{AdminError, Client};
use super::print_json_or;

/// `--wait` / `--no-wait` and the bound of a wait.
#[derive(clap::Args)]
pub struct WaitArgs {
    /// Return once the change is done: every replica moved or rebuilt (and a decommissioned
    /// or removed node gone), with a progress bar on a terminal.
    #[arg(long, overrides_with = "no_wait")]
    wait: bool,
    /// Return once the change is accepted (the default); `veil admin cluster status` shows
    /// the moves under way.
    #[arg(long)]
    no_wait: bool,
    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 1800)]
    wait_timeout_secs: u64,
}

pub async fn add(
    client: &Client,
    json: bool,
    http_addr: &str,
    wait: &WaitArgs,
) -> Result<ExitCode, AdminError> {
    let answer = client
        .post("/api/v1/admin/nodes", &json!({"http_addr": http_addr}))
        .await?;
    let id = answer["node_id"]
        .as_u64()
        .ok_or_else(|| AdminError::Failed(format!("the node answered no node_id: {answer}")))?;
    if !wait.wait {
        print_json_or(json, &answer, || {
            format!(
                "node {id} at {http_addr} joined cluster {}: it takes its share of the \
                 replicas (`veil admin cluster status` shows the moves)",
                answer["cluster_id"].as_str().unwrap_or_default()
            )
        });
        return Ok(ExitCode::SUCCESS);
    }
    let mut done = wait_until_placed(client, id, json, wait).await?;
    done["http_addr"] = json!(http_addr);
    done["cluster_id"] = answer["cluster_id"].clone();
    print_json_or(json, &done, || {
        format!(
            "node {id} at {http_addr} added: {} replicas moved to it in {} s; every shard has \
             its placed replicas and a leader",
            done["replicas"], done["seconds"]
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// Follows a node that joined until it votes in every shard placed on it, every shard has
/// exactly its placed voters and a leader, and the node is up; answers what it holds then.
async fn wait_until_placed(
    client: &Client,
    id: u64,
    json: bool,
    wait: &WaitArgs,
) -> Result<Value, AdminError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(wait.wait_timeout_secs);
    let bar = progress_bar(json, 0, &format!("{BAR} replicas moved to node {id}"))?;
    loop {
        let cluster = client.get("/api/v1/cluster").await?;
        let shards = cluster["shards"].as_array().cloned().unwrap_or_default();
        let placed = shards
            .iter()
            .filter(|s| ids(s, "placed").contains(&id))
            .count();
        let voting = shards
            .iter()
            .filter(|s| ids(s, "placed").contains(&id) && ids(s, "replicas").contains(&id))
            .count();
        bar.set_length(placed as u64);
        bar.set_position(voting as u64);
        let (_, moving) = unsettled(&cluster, id);
        let up = cluster["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"].as_u64() == Some(id) && n["state"] == "up");
        // Up means the member asked knows it, so its placement counts the new node.
        if up && voting == placed && moving == 0 {
            bar.finish_and_clear();
            return Ok(json!({
                "node_id": id,
                "membership": "active",
                "replicas": voting,
                "seconds": started.elapsed().as_secs(),
            }));
        }
        if Instant::now() >= deadline {
            bar.abandon();
            return Err(AdminError::Failed(format!(
                "node {id} joined but did not take its share within {} s ({voting} of \
                 {placed} replicas); it goes on in the cluster (`veil admin cluster status` \
                 shows the moves), or wait longer with --wait-timeout-secs",
                wait.wait_timeout_secs
            )));
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn decommission(
    client: &Client,
    json: bool,
    id: u64,
    force: bool,
    wait: &WaitArgs,
) -> Result<ExitCode, AdminError> {
    let before = client.get("/api/v1/cluster").await?;
    let path = format!("/api/v1/admin/nodes/{id}/decommission?force={force}");
    let answer = client.post(&path, &json!({})).await?;
    if !wait.wait {
        print_json_or(json, &answer, || {
            format!(
                "node {id} is leaving: its replicas move to the other members, then it is \
                 removed (`veil admin cluster status` shows the moves)"
            )
        });
        return Ok(ExitCode::SUCCESS);
    }
    let done = wait_until_gone(client, &before, id, json, wait).await?;
    print_json_or(json, &done, || {
        format!(
            "node {id} decommissioned: {} replicas moved to other members in {} s; it is \
             removed from the cluster",
            done["replicas_moved"], done["seconds"]
        )
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(
    client: &Client,
    json: bool,
    id: u64,
    force: bool,
    wait: &WaitArgs,
) -> Result<ExitCode, AdminError> {
    let before = client.get("/api/v1/cluster").await?;
    let answer = client
        .delete(&format!("/api/v1/admin/nodes/{id}?force={force}"))
        .await?;
    if !wait.wait {
        print_json_or(json, &answer, || {
            format!(
                "node {id} is removed: its replicas are rebuilt from the live ones \
                 (`veil admin cluster status` shows the moves)"
            )
        });
        return Ok(ExitCode::SUCCESS);
    }
    let done = wait_until_gone(client, &before, id, json, wait).await?;
    print_json_or(json, &done, || {
        format!(
            "node {id} removed: {} replicas rebuilt on other members in {} s",
            done["replicas_moved"], done["seconds"]
        )
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn replace(
    client: &Client,
    json: bool,
    dead: u64,
    by: u64,
    wait: &WaitArgs,
) -> Result<ExitCode, AdminError> {
    let cluster = client.get("/api/v1/cluster").await?;
    let new = cluster["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"].as_u64() == Some(by));
    let ready = new.is_some_and(|n| n["state"] == "up" && n["membership"] == "active");
    if !ready {
        return Err(AdminError::Refused(format!(
            "node {by} is not an up, active member; start the new node with `veil serve --join \
             MEMBER_PEER_ADDR` (or `--await-add`, then `veil admin nodes add`) first and wait \
             for its ready line, then replace node {dead} by it"
        )));
    }
    remove(client, json, dead, false, wait).await
}

pub async fn balance(client: &Client, json: bool) -> Result<ExitCode, AdminError> {
    let answer = client
        .post("/api/v1/admin/leaders/balance", &json!({}))
        .await?;
    print_json_or(json, &answer, || match answer["outcome"].as_str() {
        Some("moved") => format!(
            "moved shard {}'s leadership from node {} to node {}",
            answer["shard"], answer["from"], answer["to"]
        ),
        Some("balanced") => "leaders are balanced: every node leads within one of the mean".into(),
        _ => "replicas are moving (or a shard has no leader); try again once they settle".into(),
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn shard_move(
    client: &Client,
    json: bool,
    shard: u32,
    from: u64,
    to: u64,
    wait: &WaitArgs,
) -> Result<ExitCode, AdminError> {
    let answer = client
        .post(
            &format!("/api/v1/admin/shards/{shard}/move"),
            &json!({"from": from, "to": to}),
        )
        .await?;
    if !wait.wait {
        print_json_or(json, &answer, || {
            format!(
                "shard {shard}'s replica is moving from node {from} to node {to} (placed on \
                 nodes {}); `veil admin shards show {shard}` shows the move",
                ids_text(&answer["placed"])
            )
        });
        return Ok(ExitCode::SUCCESS);
    }
    let done = wait_until_moved(client, shard, from, to, json, wait).await?;
    print_json_or(json, &done, || {
        format!(
            "shard {shard}'s replica moved from node {from} to node {to} in {} s; its voters \
             are nodes {}",
            done["seconds"],
            ids_text(&done["replicas"])
        )
    });
    Ok(ExitCode::SUCCESS)
}

fn ids_text(ids: &Value) -> String {
    ids.as_array()
        .into_iter()
        .flatten()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// How far a move of `shard` from `from` to `to` has come, in the cluster's answer: 0 `to`
/// not yet in the group, 1 a learner catching up, 2 a voter beside `from`, 3 done (`from` gone,
/// the voters exactly the placed ones, a leader); with the shard's voters.
fn move_step(cluster: &Value, shard: u32, from: u64, to: u64) -> (u64, Vec<u64>) {
    let Some(s) = cluster["shards"].as_array().and_then(|s| {
        s.iter()
            .find(|s| s["shard"].as_u64() == Some(u64::from(shard)))
    }) else {
        return (0, Vec::new());
    };
    let (voters, learners, placed) = (ids(s, "replicas"), ids(s, "learners"), ids(s, "placed"));
    let step = if voters.contains(&to) {
        let settled = !voters.contains(&from)
            && !learners.contains(&from)
            && voters == placed
            && learners.is_empty()
            && s["leader"].is_u64();
        if settled {
            3
        } else {
            2
        }
    } else if learners.contains(&to) {
        1
    } else {
        0
    };
    (step, voters)
}

/// Follows a move until [`move_step`] says it is done; answers the shard's voters then.
async fn wait_until_moved(
    client: &Client,
    shard: u32,
    from: u64,
    to: u64,
    json: bool,
    wait: &WaitArgs,
) -> Result<Value, AdminError> {
    const STEPS: [&str; 4] = [
        "adding the new replica",
        "the new replica catches up (a learner)",
        "the new replica votes; removing the old one",
        "done",
    ];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(wait.wait_timeout_secs);
    let bar = progress_bar(
        json,
        3,
        &format!("{BAR} shard {shard}, node {from} -> {to}: {{msg}}"),
    )?;
    loop {
        let cluster = client.get("/api/v1/cluster").await?;
        let (step, voters) = move_step(&cluster, shard, from, to);
        bar.set_position(step);
        bar.set_message(STEPS[step as usize]);
        if step == 3 {
            bar.finish_and_clear();
            return Ok(json!({
                "shard": shard,
                "from": from,
                "to": to,
                "replicas": voters,
                "seconds": started.elapsed().as_secs(),
            }));
        }
        if Instant::now() >= deadline {
            bar.abandon();
            return Err(AdminError::Failed(format!(
                "shard {shard}'s replica did not move from node {from} to node {to} within {} \
                 s; it goes on in the cluster (`veil admin shards show {shard}` shows it), or \
                 wait longer with --wait-timeout-secs",
                wait.wait_timeout_secs
            )));
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The shards whose group still names `id` (voter or learner) or does not yet have exactly its
/// placed voters.
fn unsettled(cluster: &Value, id: u64) -> (usize, usize) {
    let shards = cluster["shards"].as_array().cloned().unwrap_or_default();
    let naming = shards
        .iter()
        .filter(|s| ids(s, "replicas").contains(&id) || ids(s, "learners").contains(&id))
        .count();
    let moving = shards
        .iter()
        .filter(|s| {
            ids(s, "replicas") != ids(s, "placed")
                || !ids(s, "learners").is_empty()
                || s["leader"].is_null()
        })
        .count();
    (naming, moving)
}

/// Follows a decommission or removal of `id` until the cluster no longer names it, every shard
/// has its placed voters and a leader, and `id` is among the removed nodes; answers what moved.
async fn wait_until_gone(
    client: &Client,
    before: &Value,
    id: u64,
    json: bool,
    wait: &WaitArgs,
) -> Result<Value, AdminError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(wait.wait_timeout_secs);
    let (total, _) = unsettled(before, id);
    // The node at --addr first, then the other members (the node leaving stops at the end).
    let mut addrs = vec![client.addr().to_string()];
    for n in before["nodes"].as_array().into_iter().flatten() {
        let addr = n["http_addr"].as_str().unwrap_or_default();
        if n["id"].as_u64() != Some(id) && !addrs.iter().any(|a| a == addr) {
            addrs.push(addr.to_string());
        }
    }
    let bar = progress_bar(
        json,
        total as u64,
        &format!("{BAR} replicas moved off node {id}"),
    )?;
    let mut at = 0;
    loop {
        let asked = client
            .at(&addrs[at % addrs.len()])
            .get("/api/v1/cluster")
            .await;
        match asked {
            Ok(cluster) => {
                let (naming, moving) = unsettled(&cluster, id);
                bar.set_length(total.max(naming) as u64);
                bar.set_position(total.saturating_sub(naming) as u64);
                let removed = cluster["removed_nodes"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x.as_u64() == Some(id)));
                if removed && naming == 0 && moving == 0 {
                    bar.finish_and_clear();
                    return Ok(json!({
                        "node_id": id,
                        "membership": "removed",
                        "replicas_moved": total,
                        "seconds": started.elapsed().as_secs(),
                    }));
                }
            }
            // Another member answers for the cluster.
            Err(AdminError::Unreachable(_)) | Err(AdminError::Failed(_)) => at += 1,
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            bar.abandon();
            return Err(AdminError::Failed(format!(
                "node {id} was not drained and removed within {} s; it goes on in the \
                 cluster (`veil admin cluster status` shows the moves), or wait longer with \
                 --wait-timeout-secs",
                wait.wait_timeout_secs
            )));
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The start of every `--wait` bar's template.
const BAR: &str = "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}";

/// A `--wait` progress bar of `len` steps drawn by `template` (hidden with `--json`).
fn progress_bar(
    json: bool,
    len: u64,
    template: &str,
) -> Result<indicatif::ProgressBar, AdminError> {
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(len)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .map_err(|e| AdminError::Failed(format!("progress bar: {e}")))?,
    );
    Ok(bar)
}

/// The node ids of a shard status's `key` (`replicas`, `learners`, `placed`), sorted.
fn ids(shard: &Value, key: &str) -> Vec<u64> {
    let mut v: Vec<u64> = shard[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    v.sort_unstable();
    v
}
