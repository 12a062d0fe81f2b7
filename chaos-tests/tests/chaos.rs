//! The Jepsen-style harness (`veil-chaos`, see CHAOS.md) on a short bounded schedule: fixed
//! seeds, every nemesis, a three-node cluster of real `veil`
//! processes in network namespaces of their own (on loopback, without partitions, where the
//! harness is not root), and the checker's verdict. And a run that breaks something on purpose, which the
//! checker must catch.
//!
//! `VEIL_CHAOS_LONG=1` runs more seeds for longer; any seed replays with the command a failing
//! run prints.

// Test helpers panic on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use veil_chaos_tests::veil_bin;

/// Runs `veil-chaos` with `args`; returns its exit code and what it printed.
fn chaos(args: &[&str]) -> (i32, String) {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_veil-chaos"))
        .args(args)
        .arg("--out")
        .arg(out.path())
        .env("VEIL_BIN", veil_bin())
        .output()
        .expect("veil-chaos runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn a_short_schedule_of_kills_pauses_partitions_clock_jumps_and_full_disks_finds_no_anomaly() {
    let long = std::env::var("VEIL_CHAOS_LONG").is_ok_and(|v| v == "1");
    let (runs, time) = if long { ("20", "60") } else { ("3", "20") };
    let (code, text) = chaos(&[
        "--nemesis",
        "all",
        "--seed",
        "7",
        "--runs",
        runs,
        "--time",
        time,
    ]);
    eprintln!("{text}");
    assert_eq!(
        code, 0,
        "the checker found an anomaly, or the harness failed:\n{text}"
    );
    // The runs did their work: entries were acknowledged, faults injected, strong reads
    // checked, and the privacy scan saw the plain markers.
    for line in text.lines().filter(|l| l.starts_with("entries sent")) {
        let figure = |name: &str| -> u64 {
            let at = line.find(name).unwrap() + name.len();
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .find(|s| !s.is_empty())
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(figure("acknowledged ") > 50, "{line}");
        assert!(figure("faults ") >= 2, "{line}");
        assert!(figure("strong reads checked ") > 0, "{line}");
        assert!(figure("privacy scan ") > 0, "{line}");
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("entries sent"))
            .count(),
        runs.parse::<usize>().unwrap(),
        "{text}"
    );
}

/// Entries sent without their idempotency keys, and one batch in five resent after its
/// acknowledgement (as by a client whose answer was lost): what a build that skipped the
/// idempotency check would store. The checker reports the duplicates, and only them.
#[test]
fn the_checker_catches_a_workload_broken_on_purpose() {
    let (code, text) = chaos(&[
        "--nemesis",
        "none",
        "--seed",
        "11",
        "--time",
        "6",
        "--unkeyed",
    ]);
    assert_eq!(code, 1, "the broken run was not caught:\n{text}");
    assert!(text.contains("ANOMALY duplicated"), "{text}");
    assert!(
        !text.contains("ANOMALY lost") && !text.contains("ANOMALY phantom"),
        "{text}"
    );
    assert!(
        text.contains("replay: cargo run -p veil-chaos-tests --bin veil-chaos --"),
        "{text}"
    );
}

/// Regression test for what the harness found (CHAOS.md, "Bugs found"): a disk full to the last
/// byte ended a node with SIGABRT. RocksDB's own `LOG` writer, once a line had failed with
/// ENOSPC, asserted on the next line (Debian's librocksdb keeps its assertions), and a failing
/// WAL flush logs one. Seed 31 filled node 0's disk three times in 30 s and each ended it; now
/// RocksDB logs nothing once open by default (`--rocksdb-log-level`), and the node lives through
/// it and catches up when space is back.
#[test]
fn full_disks_end_no_node() {
    let (code, text) = chaos(&["--nemesis", "disk", "--seed", "31", "--time", "20"]);
    eprintln!("{text}");
    assert_eq!(
        code, 0,
        "a full disk ended a node, or the checker found more:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("entries sent"))
        .unwrap_or_else(|| panic!("no summary line:\n{text}"));
    assert!(!line.contains("faults 0;"), "no disk was filled: {line}");
}
