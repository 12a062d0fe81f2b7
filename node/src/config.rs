//! The `veil serve` configuration: flags, their `VEIL_*` environment twins, an optional TOML
//! file, and defaults, resolved and validated once at start-up.
//!
//! Precedence: a flag or its environment variable, then the TOML file (`--config`), then the
//! default. Every bound has a unit in its name.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use veil_node::pii::Strategies;

/// `$XDG_CONFIG_HOME/veil/keys.toml`, else `$HOME/.config/veil/keys.toml`.
pub fn default_key_file() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("veil/keys.toml"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config/veil/keys.toml")),
        None => bail!("no --key-file, and neither XDG_CONFIG_HOME nor HOME is set to put one in"),
    }
}

/// The largest `--query-shard-answer-bytes-max`: a remote replica's answer travels as one
/// message on the peer connection, whose bound is `veil_raft::PEER_MESSAGE_BYTES_MAX`; 1 MiB of
/// it is left for the call's framing.
pub const SHARD_ANSWER_BYTES_LIMIT: usize = veil_raft::PEER_MESSAGE_BYTES_MAX - (1 << 20);

/// `--rocksdb-log-level`: RocksDB's info-log severities, least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RocksdbLogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
    Header,
}

impl RocksdbLogLevel {
    /// RocksDB's own name for it.
    pub fn rocksdb(self) -> rocksdb::LogLevel {
        match self {
            RocksdbLogLevel::Debug => rocksdb::LogLevel::Debug,
            RocksdbLogLevel::Info => rocksdb::LogLevel::Info,
            RocksdbLogLevel::Warn => rocksdb::LogLevel::Warn,
            RocksdbLogLevel::Error => rocksdb::LogLevel::Error,
            RocksdbLogLevel::Fatal => rocksdb::LogLevel::Fatal,
            RocksdbLogLevel::Header => rocksdb::LogLevel::Header,
        }
    }
}

/// Flags of `veil serve`. Unset flags fall back to the TOML file, then to the defaults below.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment variables win).
    #[arg(long, env = "VEIL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./data].
    #[arg(long, env = "VEIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address; port 0 picks a free port [default: 127.0.0.1:7420].
    #[arg(long, env = "VEIL_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// gRPC listen address; port 0 picks a free port [default: 127.0.0.1:7421].
    #[arg(long, env = "VEIL_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Number of shards, fixed when the data directory is created [default: the directory's;
    /// 4 for a new one].
    #[arg(long, env = "VEIL_SHARDS")]
    pub shards: Option<u32>,
    /// This node's id, fixed when the data directory is created [default: the directory's; 1
    /// for a node that founds a cluster, the next free id for one that joins].
    #[arg(long, env = "VEIL_NODE_ID")]
    pub node_id: Option<u64>,
    /// Node-to-node address (Raft and cluster calls of every shard, one connection per pair of
    /// nodes); port 0 picks a free port [default: 127.0.0.1:7422].
    #[arg(long, env = "VEIL_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// Joins the cluster a member of which listens on this peer address (HOST:PORT); without
    /// it a node founds a new cluster, or reopens its own.
    #[arg(long, env = "VEIL_JOIN")]
    pub join: Option<String>,
    /// Starts a node with no data directory yet that waits, serving only its invitation, until
    /// a member adds it (`veil admin nodes add THIS_HTTP_ADDR`); it then joins through that
    /// member as `--join` does. A node with a directory starts as usual.
    #[arg(long, env = "VEIL_AWAIT_ADD", conflicts_with = "join")]
    #[serde(default)]
    pub await_add: bool,
    /// How long a write keeps retrying a shard whose leader is moving or unreachable before it
    /// answers 503 [default: 10000].
    #[arg(long, env = "VEIL_FORWARD_TIMEOUT_MS")]
    pub forward_timeout_ms: Option<u64>,
    /// How long one try of a write forwarded to a shard's leader waits for its answer before
    /// the write tries again, at the leader then known (a leader cut off or paused answers
    /// nothing; the retry is checked, so entries the first try stored are not stored twice)
    /// [default: 2500].
    #[arg(long, env = "VEIL_FORWARD_TRY_TIMEOUT_MS")]
    pub forward_try_timeout_ms: Option<u64>,
    /// How often the metadata group's leader evens out the shards' leaders over the nodes (one
    /// leadership moved per look), in ms; 0 turns leader balance off. Off by default: a
    /// transfer can hold a shard's writes for an election timeout (see `cluster/leaders.rs`)
    /// [default: 0].
    #[arg(long, env = "VEIL_LEADER_BALANCE_INTERVAL_MS")]
    pub leader_balance_interval_ms: Option<u64>,
    /// Most shards whose replicas change at once (a node joining takes its share a few shards
    /// at a time, each a snapshot and a catch-up, so ingest goes on) [default: 2].
    #[arg(long, env = "VEIL_REPLICA_MOVES_MAX")]
    pub replica_moves_max: Option<usize>,
    /// Most bytes per second of snapshots this node sends, every shard's together (a replica
    /// moving here or there, a replica rebuilt), so moves leave the network and disk to ingest;
    /// 0 is no bound. The default leaves half of a 1 Gbit/s link and most of a disk's
    /// bandwidth to the rest, and moves a 1 GiB replica in 16 s (CockroachDB bounds its
    /// rebalancing snapshots at 32 MiB/s, TiKV at 100 MB/s) [default: 64 MiB].
    #[arg(long, env = "VEIL_SNAPSHOT_SEND_BYTES_PER_SEC")]
    pub snapshot_send_bytes_per_sec: Option<u64>,
    /// Largest request body, in bytes [default: 10 MiB].
    #[arg(long, env = "VEIL_BODY_BYTES_MAX")]
    pub body_bytes_max: Option<usize>,
    /// Largest single entry, in bytes [default: 256 KiB].
    #[arg(long, env = "VEIL_ENTRY_BYTES_MAX")]
    pub entry_bytes_max: Option<usize>,
    /// Most entries in one ingest request [default: 10000].
    #[arg(long, env = "VEIL_BATCH_ENTRIES_MAX")]
    pub batch_entries_max: Option<usize>,
    /// Most entries carried by one Raft entry [default: 4096].
    #[arg(long, env = "VEIL_RAFT_ENTRY_ENTRIES_MAX")]
    pub raft_entry_entries_max: Option<usize>,
    /// Raft entries a shard has proposed and not yet applied, at most; entries that arrive
    /// meanwhile wait and go together in the next one [default: 2].
    #[arg(long, env = "VEIL_RAFT_PROPOSALS_INFLIGHT_MAX")]
    pub raft_proposals_inflight_max: Option<usize>,
    /// How far in the future a timestamp may be, in seconds [default: 3600].
    #[arg(long, env = "VEIL_TIMESTAMP_FUTURE_SECS_MAX")]
    pub timestamp_future_secs_max: Option<u64>,
    /// How far in the past a timestamp may be, in seconds; 0 means no limit [default: 0].
    #[arg(long, env = "VEIL_TIMESTAMP_PAST_SECS_MAX")]
    pub timestamp_past_secs_max: Option<u64>,
    /// Ingest requests processed at once; more are answered 429 [default: 64].
    #[arg(long, env = "VEIL_INGEST_INFLIGHT_MAX")]
    pub ingest_inflight_max: Option<usize>,
    /// How often the index is committed (new entries become searchable), in ms [default: 500].
    #[arg(long, env = "VEIL_INDEX_COMMIT_INTERVAL_MS")]
    pub index_commit_interval_ms: Option<u64>,
    /// Whether a shard's followers copy their leader's index commits (segment files) instead
    /// of indexing every entry themselves; false makes every replica index its own
    /// [default: true].
    #[arg(long, env = "VEIL_INDEX_SHIPPING")]
    pub index_shipping: Option<bool>,
    /// How long a follower's request for its leader's next index commit waits for one, in ms
    /// [default: 10000].
    #[arg(long, env = "VEIL_INDEX_COPY_WAIT_MS")]
    pub index_copy_wait_ms: Option<u64>,
    /// Most bytes of index files one answer to a copying follower carries; larger files travel
    /// in pieces of this size [default: 8 MiB].
    #[arg(long, env = "VEIL_INDEX_COPY_BYTES_MAX")]
    pub index_copy_bytes_max: Option<u64>,
    /// tantivy writer memory per shard, in bytes [default: 32 MiB].
    #[arg(long, env = "VEIL_INDEX_HEAP_BYTES")]
    pub index_heap_bytes: Option<usize>,
    /// How often committed index segments held in memory are written to disk, in ms; a crash
    /// reindexes what was applied since (from RocksDB) [default: 10000].
    #[arg(long, env = "VEIL_INDEX_PERSIST_INTERVAL_MS")]
    pub index_persist_interval_ms: Option<u64>,
    /// CPU priority (nice, 0–19) of background work — index merges and RocksDB compactions —
    /// so that it yields the cores to ingest and queries; 0 leaves it at the node's priority
    /// [default: 10].
    #[arg(long, env = "VEIL_BACKGROUND_NICE")]
    pub background_nice: Option<i32>,
    /// Index bytes held in memory per node before they are written to disk early, shared out
    /// among the shards [default: 256 MiB].
    #[arg(long, env = "VEIL_INDEX_RAM_BYTES_MAX")]
    pub index_ram_bytes_max: Option<usize>,
    /// Default query deadline, in ms [default: 10000].
    #[arg(long, env = "VEIL_QUERY_TIMEOUT_MS")]
    pub query_timeout_ms: Option<u64>,
    /// Largest `offset + limit` of a query [default: 10000].
    #[arg(long, env = "VEIL_QUERY_WINDOW_MAX")]
    pub query_window_max: Option<usize>,
    /// Memory one shard may use for a query's aggregations, in bytes [default: 128 MiB].
    #[arg(long, env = "VEIL_QUERY_AGG_MEMORY_BYTES")]
    pub query_agg_memory_bytes: Option<u64>,
    /// Per-exception numbers the top-K block cache holds across all shards [default: 4000000,
    /// about 130 MB; 0 disables it].
    #[arg(long, env = "VEIL_EXCEPTION_CACHE_ENTRIES")]
    pub exception_cache_entries: Option<usize>,
    /// Exception counter rows a shard sums in memory before writing them [default: 65536]; they
    /// are written sooner on every index commit tick and before any exception query reads them,
    /// so queries see every applied entry. 0 writes each Raft entry's rows with it.
    #[arg(long, env = "VEIL_EXCEPTION_COUNTER_ROWS_PENDING_MAX")]
    pub exception_counter_rows_pending_max: Option<usize>,
    /// Stack traces whose reading (exception type, frames, fingerprint) the node keeps, so a
    /// trace sent again is not parsed again [default: 1024; 0 parses every one].
    #[arg(long, env = "VEIL_EXCEPTION_TRACE_CACHE_ENTRIES")]
    pub exception_trace_cache_entries: Option<usize>,
    /// Shard searches run at once across all queries [default: the number of CPUs].
    #[arg(long, env = "VEIL_QUERY_PARALLELISM")]
    pub query_parallelism: Option<usize>,
    /// How much a query's age counts against the search time it has used when a freed search
    /// slot is handed out (least time used goes first) [default: 0.25: a query that used 50 ms
    /// goes ahead of new ones once it is 200 ms old; 0: time used alone; large: oldest first].
    #[arg(long, env = "VEIL_QUERY_AGE_WEIGHT")]
    pub query_age_weight: Option<f64>,
    /// Most buckets a query's aggregations may build [default: 65000].
    #[arg(long, env = "VEIL_QUERY_AGG_BUCKETS_MAX")]
    pub query_agg_buckets_max: Option<u32>,
    /// How long one replica of a shard may take to answer a question (query, top-K, details)
    /// before the next replica is asked, in ms; the question's own deadline bounds the last
    /// replica asked [default: 5000].
    #[arg(long, env = "VEIL_QUERY_REPLICA_TIMEOUT_MS")]
    pub query_replica_timeout_ms: Option<u64>,
    /// Largest answer one shard's replica may give a question's coordinator (hits with their
    /// entries, partial aggregations, exception numbers), in bytes, on this node or from
    /// another; a larger one fails the question with 400 `shard_answer_too_large` [default:
    /// 64 MiB; at most 255 MiB, the peer connection's message bound less room for framing].
    #[arg(long, env = "VEIL_QUERY_SHARD_ANSWER_BYTES_MAX")]
    pub query_shard_answer_bytes_max: Option<usize>,
    /// Raft log entries between snapshots of a shard (a snapshot syncs the WAL and records the
    /// applied state; it copies nothing) [default: 1000].
    #[arg(long, env = "VEIL_SNAPSHOT_LOGS_SINCE_LAST")]
    pub snapshot_logs_since_last: Option<u64>,
    /// Bytes of RocksDB write-ahead log kept before the column families holding the oldest of
    /// it are flushed (RocksDB's `max_total_wal_size`; its default grew past 2 GB within a
    /// minute of full-speed ingest) [default: 512 MiB].
    #[arg(long, env = "VEIL_WAL_BYTES_MAX")]
    pub wal_bytes_max: Option<u64>,
    /// Bytes of RocksDB's block cache (uncompressed blocks of entries and exception counters,
    /// one LRU cache shared by the shards' column families); 0 leaves each column family
    /// RocksDB's own small cache [default: 1 GiB].
    #[arg(long, env = "VEIL_BLOCK_CACHE_BYTES")]
    pub block_cache_bytes: Option<u64>,
    /// Least severity RocksDB writes to its own `LOG` file in the data directory: debug, info,
    /// warn, error, fatal or header (the options at open, nothing after). Below `header`, a
    /// full disk can end the node: Debian's librocksdb asserts when a log line follows one the
    /// disk refused, so the default writes nothing once the node runs; `info` is what the
    /// compaction profiles in BENCHMARKS.md read [default: header].
    #[arg(long, env = "VEIL_ROCKSDB_LOG_LEVEL", value_enum)]
    pub rocksdb_log_level: Option<RocksdbLogLevel>,
    /// Free bytes the data directory's filesystem must keep: below it, ingest answers 507
    /// (queries go on) until space is freed, instead of RocksDB failing mid-write; 0 turns the
    /// check off [default: 1 GiB].
    #[arg(long, env = "VEIL_DISK_FREE_BYTES_MIN")]
    pub disk_free_bytes_min: Option<u64>,
    /// Raft log entries a shard keeps behind its snapshot, for followers that fall behind
    /// (one further back is sent a snapshot) [default: 1000].
    #[arg(long, env = "VEIL_RAFT_LOGS_KEPT")]
    pub raft_logs_kept: Option<u64>,
    /// How long start-up waits for every shard to elect a leader, in ms [default: 60000].
    #[arg(long, env = "VEIL_STARTUP_TIMEOUT_MS")]
    pub startup_timeout_ms: Option<u64>,
    /// Most keys at the top of an entry's `fields`; more go into `_veil_overflow` [default: 256].
    #[arg(long, env = "VEIL_FIELDS_PER_ENTRY_MAX")]
    pub fields_per_entry_max: Option<usize>,
    /// Deepest nesting kept in `fields`; deeper values are kept as JSON text [default: 8].
    #[arg(long, env = "VEIL_FIELD_DEPTH_MAX")]
    pub field_depth_max: Option<usize>,
    /// Longest field key, in bytes [default: 128].
    #[arg(long, env = "VEIL_FIELD_KEY_BYTES_MAX")]
    pub field_key_bytes_max: Option<usize>,
    /// Longest field string value, in bytes [default: 16 KiB].
    #[arg(long, env = "VEIL_FIELD_VALUE_BYTES_MAX")]
    pub field_value_bytes_max: Option<usize>,
    /// Most distinct top-level field keys per service; new keys past it are kept unindexed in
    /// `_veil_overflow` [default: 1000].
    #[arg(long, env = "VEIL_FIELD_KEYS_PER_SERVICE_MAX")]
    pub field_keys_per_service_max: Option<usize>,
    /// Most lines folded into one text entry (stack traces) [default: 1000].
    #[arg(long, env = "VEIL_ENTRY_LINES_MAX")]
    pub entry_lines_max: Option<usize>,
    /// The PII key file (HMAC secret for hash tokens, AES key for kept originals); created with
    /// fresh keys and mode 0600 when missing; must be outside the data directory. Ignored when
    /// VEIL_PII_HMAC_KEY and VEIL_PII_AES_KEY are set [default: $XDG_CONFIG_HOME/veil/keys.toml,
    /// else ~/.config/veil/keys.toml].
    #[arg(long, env = "VEIL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Masking strategy per PII type, as `type=strategy,…` with strategies redact, hash,
    /// partial_mask [default: email=hash,phone=hash,ip_address=hash,credit_card=partial_mask,
    /// ssn=redact,iban=redact,secret=redact].
    #[arg(long, env = "VEIL_PII_STRATEGIES")]
    pub pii_strategies: Option<String>,
    /// Services whose unmasked originals are kept, sealed with AES-256-GCM (comma-separated;
    /// `*` for all) [default: none].
    #[arg(long, env = "VEIL_KEEP_ORIGINALS_FOR")]
    pub keep_originals_for: Option<String>,
    /// Elasticsearch bulk: document fields read as the timestamp, the first present wins
    /// (comma-separated; a dotted name is also a path through objects) [default:
    /// @timestamp,timestamp,time].
    #[arg(long, env = "VEIL_BULK_TIMESTAMP_FIELDS")]
    pub bulk_timestamp_fields: Option<String>,
    /// Elasticsearch bulk: fields read as the level [default: log.level,level,severity].
    #[arg(long, env = "VEIL_BULK_LEVEL_FIELDS")]
    pub bulk_level_fields: Option<String>,
    /// Elasticsearch bulk: fields read as the message [default: message,msg,log].
    #[arg(long, env = "VEIL_BULK_MESSAGE_FIELDS")]
    pub bulk_message_fields: Option<String>,
    /// Elasticsearch bulk: fields read as the service [default: service.name,service].
    #[arg(long, env = "VEIL_BULK_SERVICE_FIELDS")]
    pub bulk_service_fields: Option<String>,
    /// Elasticsearch bulk: fields read as the host [default:
    /// host.name,host.hostname,hostname,host].
    #[arg(long, env = "VEIL_BULK_HOST_FIELDS")]
    pub bulk_host_fields: Option<String>,
    /// Elasticsearch bulk: fields read as the environment [default:
    /// service.environment,deployment.environment,environment].
    #[arg(long, env = "VEIL_BULK_ENVIRONMENT_FIELDS")]
    pub bulk_environment_fields: Option<String>,
    /// Elasticsearch bulk: fields read as the region [default: cloud.region,region].
    #[arg(long, env = "VEIL_BULK_REGION_FIELDS")]
    pub bulk_region_fields: Option<String>,
    /// Elasticsearch bulk: the service of a document that names none: `name` (the index name),
    /// `dataset` (a data stream's dataset, `logs-DATASET-NAMESPACE`) or `none` (refused)
    /// [default: name].
    #[arg(long, env = "VEIL_BULK_INDEX_SERVICE")]
    pub bulk_index_service: Option<String>,
    /// The Elasticsearch version `GET /` reports to shippers [default: 8.17.0].
    #[arg(long, env = "VEIL_BULK_ES_VERSION")]
    pub bulk_es_version: Option<String>,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Number of shards as given (checked against the data directory); None: the directory's, or
    /// `datadir::DEFAULT_SHARDS` for a new one.
    pub shards: Option<u32>,
    /// This node's id as given (checked against the data directory); None: the directory's,
    /// or 1 for a founding node, or what the cluster assigns to a joining one.
    pub node_id: Option<u64>,
    /// Node-to-node listen address.
    pub peer_addr: SocketAddr,
    /// A member's peer address to join through.
    pub join: Option<String>,
    /// Wait for a member's invitation instead of founding a cluster.
    pub await_add: bool,
    /// Retry bound of a write across leader changes, in ms.
    pub forward_timeout_ms: u64,
    /// Bound of one forwarded try, in ms.
    pub forward_try_timeout_ms: u64,
    /// How often leaders are evened out, in ms (0: never).
    pub leader_balance_interval_ms: u64,
    /// Most shards changing replicas at once.
    pub replica_moves_max: usize,
    /// Bound on the snapshot bytes this node sends per second (0: none).
    pub snapshot_send_bytes_per_sec: u64,
    /// Largest request body, in bytes.
    pub body_bytes_max: usize,
    /// Largest entry, in bytes.
    pub entry_bytes_max: usize,
    /// Most entries per request.
    pub batch_entries_max: usize,
    /// Most entries per Raft entry.
    pub raft_entry_entries_max: usize,
    /// Raft entries in flight per shard.
    pub raft_proposals_inflight_max: usize,
    /// Future timestamp limit, in seconds.
    pub timestamp_future_secs_max: u64,
    /// Past timestamp limit, in seconds (0: none).
    pub timestamp_past_secs_max: u64,
    /// Concurrent ingest requests.
    pub ingest_inflight_max: usize,
    /// Index commit interval, in ms.
    pub index_commit_interval_ms: u64,
    /// Followers copy their leader's index commits.
    pub index_shipping: bool,
    /// A follower's wait for its leader's next index commit, in ms.
    pub index_copy_wait_ms: u64,
    /// Bytes of index files per copy answer or piece.
    pub index_copy_bytes_max: u64,
    /// tantivy writer memory per shard, in bytes.
    pub index_heap_bytes: usize,
    /// Index persist interval, in ms.
    pub index_persist_interval_ms: u64,
    /// Index bytes held in memory per node.
    pub index_ram_bytes_max: usize,
    /// Nice value of the background threads (0: unchanged).
    pub background_nice: i32,
    /// Default query deadline, in ms.
    pub query_timeout_ms: u64,
    /// Largest offset + limit.
    pub query_window_max: usize,
    /// Aggregation memory per shard and query, in bytes.
    pub query_agg_memory_bytes: u64,
    /// Most aggregation buckets per query.
    pub query_agg_buckets_max: u32,
    /// How long one replica may take before the next is asked, in ms.
    pub query_replica_timeout_ms: u64,
    /// Largest answer of one shard's replica to a coordinator, in bytes.
    pub query_shard_answer_bytes_max: usize,
    /// Shard searches at once, across all queries.
    pub query_parallelism: usize,
    /// How much a query's age counts against its search time used, for the search slots.
    pub query_age_weight: f64,
    /// Per-exception numbers the top-K block cache holds, all shards together.
    pub exception_cache_entries: usize,
    /// Exception counter rows summed in memory per shard before they are written.
    pub exception_counter_rows_pending_max: usize,
    /// Stack traces whose reading the node keeps.
    pub exception_trace_cache_entries: usize,
    /// Raft log entries between snapshots.
    pub snapshot_logs_since_last: u64,
    /// Raft log entries kept behind a snapshot.
    pub raft_logs_kept: u64,
    /// RocksDB write-ahead log bytes before old memtables are flushed.
    pub wal_bytes_max: u64,
    /// RocksDB block cache bytes (0: RocksDB's per-family default).
    pub block_cache_bytes: u64,
    /// Least severity of RocksDB's own `LOG` lines.
    pub rocksdb_log_level: RocksdbLogLevel,
    /// Free bytes below which ingest is refused (0: no check).
    pub disk_free_bytes_min: u64,
    /// Start-up leader election deadline, in ms.
    pub startup_timeout_ms: u64,
    /// Most keys at the top of `fields`.
    pub fields_per_entry_max: usize,
    /// Deepest nesting in `fields`.
    pub field_depth_max: usize,
    /// Longest field key, in bytes.
    pub field_key_bytes_max: usize,
    /// Longest field string value, in bytes.
    pub field_value_bytes_max: usize,
    /// Most distinct field keys per service.
    pub field_keys_per_service_max: usize,
    /// Most lines in one folded text entry.
    pub entry_lines_max: usize,
    /// The PII key file.
    pub key_file: PathBuf,
    /// Masking strategies per PII type.
    #[serde(skip)]
    pub pii_strategies: Strategies,
    /// Services whose sealed originals are kept (`*`: all).
    pub keep_originals_for: Vec<String>,
    /// How Elasticsearch bulk documents become entries.
    pub bulk: crate::shippers::bulk::BulkMapping,
}

impl ServeArgs {
    /// Resolves flags, the TOML file and defaults into a validated [`NodeConfig`].
    pub fn resolve(self) -> anyhow::Result<NodeConfig> {
        let file: ServeArgs = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                self.$field.or(file.$field).unwrap_or($default)
            };
        }
        let config = NodeConfig {
            data_dir: pick!(data_dir, PathBuf::from("./data")),
            http_addr: pick!(http_addr, SocketAddr::from(([127, 0, 0, 1], 7420))),
            grpc_addr: pick!(grpc_addr, SocketAddr::from(([127, 0, 0, 1], 7421))),
            shards: self.shards.or(file.shards),
            node_id: self.node_id.or(file.node_id),
            peer_addr: pick!(peer_addr, SocketAddr::from(([127, 0, 0, 1], 7422))),
            join: self.join.or(file.join),
            await_add: self.await_add || file.await_add,
            forward_timeout_ms: pick!(forward_timeout_ms, 10_000),
            forward_try_timeout_ms: pick!(forward_try_timeout_ms, 2_500),
            leader_balance_interval_ms: pick!(leader_balance_interval_ms, 0),
            replica_moves_max: pick!(replica_moves_max, 2),
            snapshot_send_bytes_per_sec: pick!(snapshot_send_bytes_per_sec, 64 << 20),
            body_bytes_max: pick!(body_bytes_max, 10 << 20),
            entry_bytes_max: pick!(entry_bytes_max, 256 << 10),
            batch_entries_max: pick!(batch_entries_max, 10_000),
            raft_entry_entries_max: pick!(raft_entry_entries_max, 4096),
            raft_proposals_inflight_max: pick!(raft_proposals_inflight_max, 2),
            timestamp_future_secs_max: pick!(timestamp_future_secs_max, 3600),
            timestamp_past_secs_max: pick!(timestamp_past_secs_max, 0),
            ingest_inflight_max: pick!(ingest_inflight_max, 64),
            index_commit_interval_ms: pick!(index_commit_interval_ms, 500),
            index_shipping: pick!(index_shipping, true),
            index_copy_wait_ms: pick!(index_copy_wait_ms, 10_000),
            index_copy_bytes_max: pick!(index_copy_bytes_max, 8 << 20),
            index_heap_bytes: pick!(index_heap_bytes, 32 << 20),
            index_persist_interval_ms: pick!(index_persist_interval_ms, 10_000),
            index_ram_bytes_max: pick!(index_ram_bytes_max, 256 << 20),
            background_nice: pick!(background_nice, 10),
            query_timeout_ms: pick!(query_timeout_ms, 10_000),
            query_window_max: pick!(query_window_max, 10_000),
            query_agg_memory_bytes: pick!(query_agg_memory_bytes, 128 << 20),
            query_agg_buckets_max: pick!(query_agg_buckets_max, 65_000),
            query_replica_timeout_ms: pick!(query_replica_timeout_ms, 5_000),
            query_shard_answer_bytes_max: pick!(query_shard_answer_bytes_max, 64 << 20),
            exception_cache_entries: pick!(exception_cache_entries, 4_000_000),
            exception_counter_rows_pending_max: pick!(exception_counter_rows_pending_max, 65_536),
            exception_trace_cache_entries: pick!(exception_trace_cache_entries, 1024),
            query_parallelism: pick!(
                query_parallelism,
                std::thread::available_parallelism().map_or(2, |n| n.get())
            ),
            query_age_weight: pick!(query_age_weight, 0.25),
            snapshot_logs_since_last: pick!(snapshot_logs_since_last, 1_000),
            raft_logs_kept: pick!(raft_logs_kept, 1_000),
            wal_bytes_max: pick!(wal_bytes_max, 512 << 20),
            block_cache_bytes: pick!(block_cache_bytes, 1 << 30),
            rocksdb_log_level: pick!(rocksdb_log_level, RocksdbLogLevel::Header),
            disk_free_bytes_min: pick!(disk_free_bytes_min, 1 << 30),
            startup_timeout_ms: pick!(startup_timeout_ms, 60_000),
            fields_per_entry_max: pick!(fields_per_entry_max, 256),
            field_depth_max: pick!(field_depth_max, 8),
            field_key_bytes_max: pick!(field_key_bytes_max, 128),
            field_value_bytes_max: pick!(field_value_bytes_max, 16 << 10),
            field_keys_per_service_max: pick!(field_keys_per_service_max, 1000),
            entry_lines_max: pick!(entry_lines_max, 1000),
            key_file: match self.key_file.or(file.key_file) {
                Some(p) => p,
                None => default_key_file()?,
            },
            pii_strategies: {
                let mut s = Strategies::default();
                if let Some(text) = self.pii_strategies.or(file.pii_strategies) {
                    s.apply(&text)
                        .map_err(|e| anyhow::anyhow!("--pii-strategies: {e}"))?;
                }
                s
            },
            keep_originals_for: self
                .keep_originals_for
                .or(file.keep_originals_for)
                .map(|s| {
                    s.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            bulk: {
                use crate::shippers::bulk::{BulkMapping, IndexService};
                let mut m = BulkMapping::defaults();
                for (list, given) in [
                    (
                        &mut m.timestamp,
                        self.bulk_timestamp_fields.or(file.bulk_timestamp_fields),
                    ),
                    (
                        &mut m.level,
                        self.bulk_level_fields.or(file.bulk_level_fields),
                    ),
                    (
                        &mut m.message,
                        self.bulk_message_fields.or(file.bulk_message_fields),
                    ),
                    (
                        &mut m.service,
                        self.bulk_service_fields.or(file.bulk_service_fields),
                    ),
                    (&mut m.host, self.bulk_host_fields.or(file.bulk_host_fields)),
                    (
                        &mut m.environment,
                        self.bulk_environment_fields
                            .or(file.bulk_environment_fields),
                    ),
                ] {
                    if let Some(text) = given {
                        *list = text
                            .split(',')
                            .map(|x| x.trim().to_string())
                            .filter(|x| !x.is_empty())
                            .collect();
                    }
                }
                if let Some(text) = self.bulk_index_service.or(file.bulk_index_service) {
                    m.index_service = IndexService::parse(&text).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--bulk-index-service is name, dataset or none, got {text:?}"
                        )
                    })?;
                }
                if let Some(v) = self.bulk_es_version.or(file.bulk_es_version) {
                    m.es_version = v;
                }
                m
            },
        };
        config.validate()?;
        Ok(config)
    }
}

impl NodeConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if let Some(shards) = self.shards.filter(|s| *s == 0 || *s > 4096) {
            bail!("--shards must be between 1 and 4096, got {shards}");
        }
        if self.node_id == Some(0) {
            bail!("--node-id must be positive");
        }
        if self.forward_timeout_ms == 0 {
            bail!("--forward-timeout-ms must be positive");
        }
        if self.forward_try_timeout_ms == 0 {
            bail!("--forward-try-timeout-ms must be positive");
        }
        for (name, value) in [
            ("body-bytes-max", self.body_bytes_max),
            ("entry-bytes-max", self.entry_bytes_max),
            ("batch-entries-max", self.batch_entries_max),
            ("replica-moves-max", self.replica_moves_max),
            ("raft-entry-entries-max", self.raft_entry_entries_max),
            (
                "raft-proposals-inflight-max",
                self.raft_proposals_inflight_max,
            ),
            ("ingest-inflight-max", self.ingest_inflight_max),
            ("index-ram-bytes-max", self.index_ram_bytes_max),
            ("query-window-max", self.query_window_max),
            (
                "snapshot-logs-since-last",
                self.snapshot_logs_since_last as usize,
            ),
            ("wal-bytes-max", self.wal_bytes_max as usize),
            (
                "query-agg-memory-bytes",
                self.query_agg_memory_bytes as usize,
            ),
            ("query-agg-buckets-max", self.query_agg_buckets_max as usize),
            (
                "query-replica-timeout-ms",
                self.query_replica_timeout_ms as usize,
            ),
            (
                "query-shard-answer-bytes-max",
                self.query_shard_answer_bytes_max,
            ),
            ("query-parallelism", self.query_parallelism),
            ("fields-per-entry-max", self.fields_per_entry_max),
            ("field-depth-max", self.field_depth_max),
            ("field-key-bytes-max", self.field_key_bytes_max),
            ("field-value-bytes-max", self.field_value_bytes_max),
            ("entry-lines-max", self.entry_lines_max),
            (
                "field-keys-per-service-max",
                self.field_keys_per_service_max,
            ),
        ] {
            if value == 0 {
                bail!("--{name} must be positive");
            }
        }
        if self.query_shard_answer_bytes_max > SHARD_ANSWER_BYTES_LIMIT {
            bail!(
                "--query-shard-answer-bytes-max must be at most {SHARD_ANSWER_BYTES_LIMIT} (the \
                 peer connection's message bound less room for framing), got {}",
                self.query_shard_answer_bytes_max
            );
        }
        if !(self.query_age_weight.is_finite() && self.query_age_weight >= 0.0) {
            bail!(
                "--query-age-weight must be a number 0 or more, got {}",
                self.query_age_weight
            );
        }
        if self.await_add && self.join.is_some() {
            bail!(
                "--await-add waits for a member to add this node; --join joins one now: give one"
            );
        }
        if self.index_copy_wait_ms == 0 || self.index_copy_bytes_max == 0 {
            bail!("--index-copy-wait-ms and --index-copy-bytes-max must be positive");
        }
        if self.index_commit_interval_ms == 0 {
            bail!("--index-commit-interval-ms must be positive");
        }
        if !(0..=19).contains(&self.background_nice) {
            bail!(
                "--background-nice must be between 0 and 19 (lower priority only), got {}",
                self.background_nice
            );
        }
        // The key must not travel with the data: a leaked data directory alone must not let
        // anyone recompute hash tokens or open originals.
        let data = std::path::absolute(&self.data_dir)?;
        let data_real = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| data.clone());
        let key = std::path::absolute(&self.key_file)?;
        if key.starts_with(&data) || key.starts_with(&data_real) {
            bail!(
                "--key-file {} is inside the data directory {}; keep the PII keys outside it",
                self.key_file.display(),
                self.data_dir.display()
            );
        }
        Ok(())
    }
}

impl NodeConfig {
    /// The bounds the ingest path checks on every entry.
    pub fn entry_limits(&self) -> crate::ingest::EntryLimits {
        crate::ingest::EntryLimits {
            future_us_max: (self.timestamp_future_secs_max as i64).saturating_mul(1_000_000),
            past_us_max: match self.timestamp_past_secs_max {
                0 => None,
                s => Some((s as i64).saturating_mul(1_000_000)),
            },
            fields: crate::ingest::FieldLimits {
                keys_max: self.fields_per_entry_max,
                depth_max: self.field_depth_max,
                key_bytes_max: self.field_key_bytes_max,
                value_bytes_max: self.field_value_bytes_max,
            },
        }
    }
}
