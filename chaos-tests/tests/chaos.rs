//! The Jepsen-style harness (`veil-chaos`, see CHAOS.md) on a short bounded schedule: fixed
//! seeds, every nemesis but the full disk (see below), a three-node cluster of real `veil`
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
fn a_short_schedule_of_kills_pauses_partitions_and_clock_jumps_finds_no_anomaly() {
    let long = std::env::var("VEIL_CHAOS_LONG").is_ok_and(|v| v == "1");
    let (runs, time) = if long { ("20", "60") } else { ("3", "20") };
    // Every nemesis but `disk`: a disk full to the last byte ends a node by an assertion in
    // the RocksDB Veil links (CHAOS.md, "Found, not fixed yet"), which the checker reports as a
    // crash; `veil-chaos --nemesis disk` shows it.
    let (code, text) = chaos(&[
        "--nemesis",
        "kill,pause,partition,clock",
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
