//! `GET /metrics`: the node's numbers in the Prometheus text format (version 0.0.4). Counters
//! and histograms are atomics updated on the hot paths; per-shard numbers are read when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket bounds, in seconds.
const BOUNDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BOUNDS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, b) in BOUNDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The node's counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Entries stored (new).
    pub entries_accepted: AtomicU64,
    /// Entries recognised as already stored (retries).
    pub entries_duplicate: AtomicU64,
    /// Entries rejected (bad input).
    pub entries_rejected: AtomicU64,
    /// Ingest requests answered 429 for back-pressure.
    pub ingest_throttled: AtomicU64,
    /// Ingest requests answered 507: the disk had less free space than the bound.
    pub ingest_disk_full: AtomicU64,
    /// Free bytes on the data directory's filesystem, as last checked.
    pub disk_free_bytes: AtomicU64,
    /// Time spent masking, in nanoseconds.
    pub mask_nanos: AtomicU64,
    /// Request to acknowledgement, per ingest request.
    pub ack_latency: Histogram,
    /// Proposal to commit and apply, per Raft entry.
    pub raft_commit_latency: Histogram,
    /// Per query.
    pub query_latency: Histogram,
    /// Per top-K or exception details request.
    pub exceptions_latency: Histogram,
    /// Questions about one shard this node's coordinators sent to a replica on another node.
    pub shard_questions_sent: AtomicU64,
    /// Questions about one shard this node answered for another node's coordinator.
    pub shard_questions_served: AtomicU64,
    /// Questions about one shard that one replica did not answer (it failed, could not be
    /// reached, or was too slow) and that the next replica was asked.
    pub shard_question_retries: AtomicU64,
    /// Index commits this node copied from a shard's leader and installed (`index_copy.rs`).
    pub index_copies_installed: AtomicU64,
    /// Bytes of index files this node copied from leaders.
    pub index_copy_bytes: AtomicU64,
    /// Copy rounds that failed (a file merged away meanwhile, a lost leader, a timeout).
    pub index_copy_failures: AtomicU64,
    /// Index commits this node handed to a follower.
    pub index_copies_served: AtomicU64,
}

/// One shard's numbers at scrape time.
pub struct ShardLine {
    /// The shard.
    pub shard: u32,
    /// Its stats.
    pub stats: veil_shard::ShardStats,
    /// The last Raft index this node knows committed (openraft's local commit; 0 before the first).
    pub committed_index: u64,
}

/// One RocksDB column family's sizes at scrape time (all shards share each family).
pub struct StoreLine {
    /// The column family.
    pub cf: String,
    /// Bytes of its SST files.
    pub sst_bytes: u64,
    /// Bytes of its memtables.
    pub memtable_bytes: u64,
}

impl Metrics {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders everything, with the shards' numbers, the column families' sizes and the block
    /// cache's bytes in use and capacity.
    pub fn render(
        &self,
        shards: &[ShardLine],
        stores: &[StoreLine],
        block_cache: Option<(u64, u64)>,
    ) -> String {
        let mut out = String::with_capacity(8192);
        let counter = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP veil_ingest_entries_total Entries answered by ingest, by outcome."
        );
        let _ = writeln!(out, "# TYPE veil_ingest_entries_total counter");
        for (outcome, c) in [
            ("accepted", &self.entries_accepted),
            ("duplicate", &self.entries_duplicate),
            ("rejected", &self.entries_rejected),
        ] {
            let _ = writeln!(
                out,
                "veil_ingest_entries_total{{outcome=\"{outcome}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "veil_ingest_throttled_total",
            "Ingest requests answered 429.",
            self.ingest_throttled.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "veil_ingest_disk_full_total",
            "Ingest requests answered 507: the data directory's disk had less free space than --disk-free-bytes-min.",
            self.ingest_disk_full.load(Ordering::Relaxed) as f64,
        );
        let _ = writeln!(
            out,
            "# HELP veil_disk_free_bytes Free bytes on the data directory's filesystem.\n# TYPE veil_disk_free_bytes gauge\nveil_disk_free_bytes {}",
            self.disk_free_bytes.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "veil_mask_seconds_total",
            "CPU time spent detecting and masking personal data (thread CPU clock, sampled on one entry in 8 per thread and scaled).",
            self.mask_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
        self.ack_latency.render(
            &mut out,
            "veil_ingest_ack_seconds",
            "Ingest request to acknowledgement (entries committed and applied).",
        );
        self.raft_commit_latency.render(
            &mut out,
            "veil_raft_commit_seconds",
            "Raft proposal to commit and apply, per Raft entry.",
        );
        self.query_latency
            .render(&mut out, "veil_query_seconds", "Query latency.");
        counter(
            &mut out,
            "veil_shard_questions_sent_total",
            "Questions about one shard (a query's, a top-K's, a details') this node sent to a replica on another node.",
            self.shard_questions_sent.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "veil_shard_questions_served_total",
            "Questions about one shard this node answered from its replica for another node.",
            self.shard_questions_served.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "veil_shard_question_retries_total",
            "Questions about one shard that a replica did not answer (failed, unreachable or too slow), so the next replica was asked.",
            self.shard_question_retries.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "veil_index_copies_installed_total",
            "Index commits this node copied from a shard's leader instead of indexing the entries itself.",
            self.index_copies_installed.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "veil_index_copy_bytes_total",
            "Bytes of index segment files this node copied from shards' leaders.",
            self.index_copy_bytes.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "veil_index_copy_failures_total",
            "Index copy rounds that failed (a file merged away meanwhile, a leader lost, a timeout) and were tried again.",
            self.index_copy_failures.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "veil_index_copies_served_total",
            "Index commits this node handed to a follower of a shard it leads.",
            self.index_copies_served.load(Ordering::Relaxed) as f64,
        );
        self.exceptions_latency.render(
            &mut out,
            "veil_exceptions_query_seconds",
            "Top-K and exception details latency.",
        );
        let gauge =
            |out: &mut String, name: &str, help: &str, value: &dyn Fn(&ShardLine) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} gauge");
                for s in shards {
                    let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
                }
            };
        gauge(
            &mut out,
            "veil_shard_applied_index",
            "Last Raft index applied.",
            &|s| s.stats.applied_index,
        );
        gauge(
            &mut out,
            "veil_shard_committed_index",
            "Last Raft index committed.",
            &|s| s.committed_index,
        );
        gauge(
            &mut out,
            "veil_shard_apply_lag",
            "Raft entries committed but not yet applied.",
            &|s| s.committed_index.saturating_sub(s.stats.applied_index),
        );
        gauge(
            &mut out,
            "veil_shard_index_lag",
            "Raft entries applied but not yet searchable.",
            &|s| {
                s.stats
                    .applied_index
                    .saturating_sub(s.stats.searchable_index)
            },
        );
        gauge(
            &mut out,
            "veil_shard_searchable_docs",
            "Entries searchable.",
            &|s| s.stats.searchable_docs,
        );
        gauge(
            &mut out,
            "veil_shard_index_bytes",
            "Bytes of the shard's index on disk.",
            &|s| s.stats.index_bytes,
        );
        gauge(
            &mut out,
            "veil_shard_index_ram_bytes",
            "Bytes of the shard's index held in memory until the next persist.",
            &|s| s.stats.index_ram_bytes,
        );
        gauge(
            &mut out,
            "veil_shard_index_unpersisted_raft_entries",
            "Raft entries searchable but not yet in the index on disk (reindexed after a crash).",
            &|s| {
                s.stats
                    .searchable_index
                    .saturating_sub(s.stats.persisted_index)
            },
        );
        gauge(
            &mut out,
            "veil_shard_exception_counter_rows_pending",
            "Exception counter rows summed in memory and not yet written (written every index commit tick and before counters are read).",
            &|s| s.stats.counter_rows_pending,
        );
        if let Some((usage, capacity)) = block_cache {
            for (name, help, v) in [
                (
                    "veil_rocksdb_block_cache_bytes",
                    "Bytes in the RocksDB block cache the shards share.",
                    usage,
                ),
                (
                    "veil_rocksdb_block_cache_capacity_bytes",
                    "Capacity of the RocksDB block cache the shards share (--block-cache-bytes).",
                    capacity,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        }
        for (name, help, value) in [
            (
                "veil_rocksdb_sst_bytes",
                "Bytes of a RocksDB column family's SST files (all shards).",
                (|l: &StoreLine| l.sst_bytes) as fn(&StoreLine) -> u64,
            ),
            (
                "veil_rocksdb_memtable_bytes",
                "Bytes of a RocksDB column family's memtables (all shards).",
                |l: &StoreLine| l.memtable_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for l in stores {
                let _ = writeln!(out, "{name}{{cf=\"{}\"}} {}", l.cf, value(l));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = Metrics::default();
        m.ack_latency.observe(Duration::from_millis(3));
        m.ack_latency.observe(Duration::from_millis(30));
        Metrics::add(&m.entries_accepted, 5);
        let text = m.render(&[], &[], None);
        assert!(
            text.contains("veil_ingest_ack_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("veil_ingest_ack_seconds_bucket{le=\"0.05\"} 2"),
            "{text}"
        );
        assert!(text.contains("veil_ingest_ack_seconds_count 2"), "{text}");
        assert!(
            text.contains("veil_ingest_entries_total{outcome=\"accepted\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn shards_and_column_families_render_their_gauges() {
        let m = Metrics::default();
        let shard = |shard, applied_index, committed_index| ShardLine {
            shard,
            stats: veil_shard::ShardStats {
                applied_index,
                ..Default::default()
            },
            committed_index,
        };
        let store = StoreLine {
            cf: "entries-0003".into(),
            sst_bytes: 1234,
            memtable_bytes: 56,
        };
        let text = m.render(
            &[shard(0, 7, 10), shard(1, 9, 9)],
            &[store],
            Some((4096, 1 << 30)),
        );
        for line in [
            "veil_rocksdb_block_cache_bytes 4096",
            "veil_rocksdb_block_cache_capacity_bytes 1073741824",
            "veil_shard_exception_counter_rows_pending{shard=\"1\"} 0",
            "veil_shard_committed_index{shard=\"0\"} 10",
            "veil_shard_apply_lag{shard=\"0\"} 3",
            "veil_shard_apply_lag{shard=\"1\"} 0",
            "veil_rocksdb_sst_bytes{cf=\"entries-0003\"} 1234",
            "veil_rocksdb_memtable_bytes{cf=\"entries-0003\"} 56",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
