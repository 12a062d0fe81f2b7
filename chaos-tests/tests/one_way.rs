//! Regression test for what the chaos harness found (CHAOS.md, "Bugs found"): a follower that
//! no longer hears its shard's leader, while its own messages still reach the leader (a
//! one-way partition), cannot catch its replica up. A keyed entry without a timestamp sent to
//! it waited for that catch-up for the whole forward timeout before its duplicate look-up
//! (and then looked up a stale replica). The catch-up is now bounded by one try, and what the
//! replica could not catch up on is asked of the others.

// Test helpers panic on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veil_chaos_tests::nemesis::Nemesis;
use veil_chaos_tests::run::{self, Options, Place};
use veil_chaos_tests::veil_bin;

fn batch(tag: &str, timed: bool) -> Value {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    (0..20)
        .map(|i| {
            let mut e = json!({"service": format!("svc-{i}"), "level": "INFO",
                               "message": format!("{tag} {i}"),
                               "fields": {"idempotency_key": format!("{tag}-{i}")}});
            if timed {
                e["timestamp"] = json!(now);
            }
            e
        })
        .collect()
}

#[test]
fn a_follower_its_leader_cannot_reach_takes_keyed_writes_without_waiting_it_out() {
    if !veil_chaos_tests::net::test_in_own_namespace(
        "a_follower_its_leader_cannot_reach_takes_keyed_writes_without_waiting_it_out",
    ) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // A forward timeout of a minute: the old look-up waited all of it.
    let opts = Options {
        nodes: 3,
        time: Duration::ZERO,
        nemeses: vec![Nemesis::Partition],
        seed: 1,
        clients: 0,
        shards: 4,
        veil: veil_bin(),
        out: out.path().to_path_buf(),
        disk_mib: 512,
        unkeyed: false,
        node_args: vec!["--forward-timeout-ms".into(), "60000".into()],
    };
    let c = run::setup(&opts).unwrap();
    let Place::Namespaces(net) = &c.place else {
        panic!("no namespaces although root in one of its own");
    };
    let status = c.status().unwrap();
    let leader = c
        .index_of(status["shards"][0]["leader"].as_u64().unwrap())
        .unwrap();
    let follower = (leader + 1) % 3;
    net.cut_one_way(leader, follower).unwrap();
    let http = veil_chaos_tests::workload::http_client_with_timeout(Duration::from_secs(50));
    let send = |node: usize, body: &Value| -> Value {
        http.post(format!("http://{}/api/v1/logs", c.nodes[node].http))
            .json(body)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    // Writes the follower's replica of the leader's shards never receives.
    let answer = send(leader, &batch("through-leader", true));
    assert_eq!(answer["accepted"], 20, "{answer}");
    let t = Instant::now();
    let answer = send(follower, &batch("untimed", false));
    let took = t.elapsed();
    eprintln!("answered in {took:?}");
    assert_eq!(answer["accepted"], 20, "{answer}");
    assert!(
        took < Duration::from_secs(30),
        "the follower took {took:?}: it waited for a replica that cannot catch up"
    );
    net.heal().unwrap();
}
