//! The running node: its RocksDB, one Raft group per shard, the ingest path that proposes masked
//! batches, and the background index commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use veil_raft::{GroupId, LogStore, LogSyncer, PeerNetwork, Peers, Router};
use veil_shard::{
    EntryOutcome, Shard, ShardConfig, ShardId, ShardMap, ShardStateMachine, StoredEntry,
};

use crate::cluster::{ClusterHandle, Member, MetaRaft, MetaStore, META_GROUP};
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::ingest::{EntryLimits, PreparedEntry};
use veil_node::pii::custom::{CustomPattern, PatternError, PatternStore};
use veil_node::pii::keys::KeyRing;
use veil_node::pii::Masker;

pub use crate::proposer::ShardRaft;

/// One shard's Raft group on this node.
pub struct Group {
    /// The shard's data.
    pub shard: Arc<Shard>,
    /// The shard's Raft handle.
    pub raft: ShardRaft,
}

/// A running node.
pub struct Node {
    pub config: NodeConfig,
    pub shard_map: ShardMap,
    pub groups: Vec<Group>,
    /// The PII engine in force; replaced whole when custom patterns change.
    masker: std::sync::RwLock<Arc<Masker>>,
    /// The PII keys (hash tokens, sealed originals).
    pub keys: KeyRing,
    /// The custom PII patterns (the cluster's, `cluster/patterns.rs`).
    pub(crate) patterns: crate::cluster::patterns::Patterns,
    /// Distinct field keys per service, bounded.
    field_keys: crate::ingest::FieldKeys,
    /// Exceptions recently read from stack traces.
    traces: veil_node::parse::exception::TraceCache,
    /// Counters and histograms for `GET /metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Each shard's proposal queue, by shard id (see `proposer`).
    pub(crate) proposers: Vec<crate::proposer::Proposer>,
    /// This node's place in the cluster: identity, peers, the metadata group.
    pub cluster: ClusterHandle,
    /// The placement loop and the address book's watcher, stopped at shutdown.
    background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The proposers' tasks, stopped at shutdown.
    proposer_tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    ingest_permits: Semaphore,
    /// Bounds the shard searches running at once (`--query-parallelism`): more threads than
    /// cores only share them, with worse caches. A freed slot goes to the query that has used
    /// the least search time (see `slots.rs`).
    pub query_slots: Arc<crate::slots::QuerySlots>,
    /// Serialises the look-up-then-propose of keyed entries so two retries of one key cannot
    /// both miss the look-up and be stored twice.
    idempotency_gate: tokio::sync::Mutex<()>,
    /// Sums of every shard's whole-hour span of recent top-K windows.
    pub(crate) exception_spans: crate::exceptions::SpanSums,
    /// Drawn at random at start: with the node id, names the process whose block caches
    /// handed out an answer's versions (`leaf::Origin`).
    pub(crate) incarnation: u64,
    ready: AtomicBool,
    /// Whether the last disk check found less free space than `--disk-free-bytes-min` (only
    /// its changes are logged).
    disk_low: AtomicBool,
    db: Arc<rocksdb::DB>,
    /// The names of `db`'s column families.
    column_families: Vec<String>,
    /// The block cache the shards' column families share (None: `--block-cache-bytes 0`).
    block_cache: Option<rocksdb::Cache>,
    /// The Raft log's fsync thread, stopped at close.
    syncer: LogSyncer,
    /// The index-commit loop, stopped at shutdown.
    committer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Each shard's last index commit here (its Raft index), for followers waiting to copy it
    /// (`cluster/index_copy.rs`).
    pub(crate) index_commits: Vec<tokio::sync::watch::Sender<u64>>,
    /// One index copy of a shard at a time.
    pub(crate) index_copy_locks: Vec<tokio::sync::Mutex<()>>,
}

/// What every group a node starts needs: the node's id and addresses, its peers, and the
/// router that hands it its messages.
struct GroupContext<'a> {
    me: veil_raft::NodeId,
    member: &'a Member,
    peers: &'a Peers,
    router: &'a Router,
}

impl GroupContext<'_> {
    /// This node alone as a group's first voter.
    fn voter(&self) -> BTreeMap<veil_raft::NodeId, openraft::impls::BasicNode> {
        BTreeMap::from([(
            self.me,
            openraft::impls::BasicNode {
                addr: self.member.peer_addr.clone(),
            },
        )])
    }
}

/// What `Node::compact` did.
#[derive(Debug, serde::Serialize)]
pub struct CompactReport {
    /// The data directory's size before, in bytes.
    pub bytes_before: u64,
    /// And after.
    pub bytes_after: u64,
    /// Raft log entries removed behind the new snapshots.
    pub raft_entries_purged: u64,
    /// Index segments (over all shards) merged into one per shard.
    pub index_segments_before: usize,
    /// How long it took.
    pub seconds: f64,
}

/// The size of every file under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// What happened to one stored entry of an ingest request.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The entry's id.
    pub log_id: uuid::Uuid,
    /// True when the log_id was already stored (a retry).
    pub duplicate: bool,
    /// The personal data types found, lowercase.
    pub pii_detected: Vec<String>,
    /// True when anything was masked.
    pub pii_masked: bool,
}

impl Stored {
    /// Returns the answer's `status`: `accepted` or `duplicate`.
    pub fn status(&self) -> &'static str {
        if self.duplicate {
            "duplicate"
        } else {
            "accepted"
        }
    }
}

/// The answer for one entry of an ingest request.
#[derive(Debug, Clone)]
pub enum EntryResult {
    /// Stored, or recognised as already stored.
    Stored(Stored),
    /// Rejected, with the reason.
    Rejected(ApiError),
}

/// Opens the node's RocksDB with every column family the Raft logs and the shards need;
/// returns it with the families' names.
fn open_db(
    config: &NodeConfig,
    shards: u32,
) -> anyhow::Result<(Arc<rocksdb::DB>, Vec<String>, Option<rocksdb::Cache>)> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_max_total_wal_size(config.wal_bytes_max);
    // RocksDB's LOG writer aborts the process on the line after one a full disk refused
    // (an assertion Debian's build keeps), so by default nothing is logged once open.
    opts.set_log_level(config.rocksdb_log_level.rocksdb());
    let cache = match config.block_cache_bytes {
        0 => None,
        bytes => Some(
            rocksdb::Cache::new_lru_cache(bytes as usize)
                .context("failed to create the RocksDB block cache")?,
        ),
    };
    let mut cfs = veil_raft::column_families(shards);
    cfs.push(rocksdb::ColumnFamilyDescriptor::new(
        veil_raft::log_cf_name(META_GROUP),
        rocksdb::Options::default(),
    ));
    cfs.extend(veil_shard::column_families_with(cache.as_ref(), shards));
    let names = cfs.iter().map(|cf| cf.name().to_string()).collect();
    let path = config.data_dir.join("db");
    let db = rocksdb::DB::open_cf_descriptors(&opts, &path, cfs)
        .with_context(|| format!("failed to open rocksdb at {}", path.display()))?;
    Ok((Arc::new(db), names, cache))
}

impl Node {
    /// Opens the node's storage and starts the metadata group and one Raft group per shard;
    /// `member` is this node's addresses as the others reach it.
    pub async fn start(config: NodeConfig, member: Member) -> anyhow::Result<Arc<Node>> {
        let (info, created) =
            crate::datadir::open_or_create(&config.data_dir, config.shards, config.node_id)?;
        tracing::info!(cluster_id = %info.cluster_id, node_id = info.node_id, shards = info.shards, created, "data directory open");
        let keys = match KeyRing::from_env()? {
            Some(k) => k,
            None => KeyRing::load_or_create(&config.key_file)?,
        };
        tracing::info!(key_id = keys.active().id(), "PII keys loaded");
        let keys_fingerprint = keys.fingerprint();
        let patterns =
            PatternStore::open(PatternStore::path_in(&config.data_dir)).context("PII patterns")?;
        let masker = Masker::new(config.pii_strategies, &keys, patterns.patterns())
            .context("PII patterns")?;
        let incarnation = incarnation()?;
        let (db, column_families, block_cache) = open_db(&config, info.shards)?;
        let syncer = LogSyncer::start(db.clone(), 4096)?;
        let shard_map = ShardMap::new(info.shards);
        // One bucket for every group's snapshot sends, a chunk's worth of burst.
        let peers = Peers::new(veil_raft::RateLimit::new(
            config.snapshot_send_bytes_per_sec,
            veil_raft::SNAPSHOT_CHUNK_BYTES as u64,
        ));
        let router = Router::new(config.data_dir.join("snapshots-received"));
        let raft_config = Arc::new(
            openraft::Config {
                cluster_name: info.cluster_id.clone(),
                heartbeat_interval: 500,
                election_timeout_min: 1500,
                election_timeout_max: 3000,
                // A node cut off and back does not disrupt a healthy leader with a higher term.
                enable_pre_vote: Some(true),
                // A replica whose directory was wiped rejoins with an empty log; without this a
                // leader's replication to it panics the leader's Raft core. The cost: a wiped
                // voter has also forgotten its vote (see ARCHITECTURE.md, "The cluster").
                allow_log_reversion: Some(true),
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                    config.snapshot_logs_since_last,
                ),
                max_in_snapshot_log_to_keep: config.raft_logs_kept,
                ..Default::default()
            }
            .validate()
            .context("invalid raft config")?,
        );
        let mut groups = Vec::with_capacity(info.shards as usize);
        let context = GroupContext {
            me: info.node_id,
            member: &member,
            peers: &peers,
            router: &router,
        };
        let opened = Self::open_groups(
            &config,
            &info,
            &db,
            &syncer,
            shard_map,
            raft_config.clone(),
            &context,
            &mut groups,
        )
        .await;
        let opened = match opened {
            Ok(rows) => Self::open_meta(&config, &info, &db, &syncer, raft_config, &context)
                .await
                .map(|meta| (rows, meta)),
            Err(e) => Err(e),
        };
        let (rollup_rows, (meta_raft, meta_store)) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                // Close what was opened before failing: RocksDB must not be left open (its
                // background threads crash the process at exit).
                for group in &groups {
                    let _ = group.raft.shutdown().await;
                }
                drop(groups);
                stop_syncer(syncer).await;
                close_db(db).await;
                return Err(e);
            }
        };
        if config.background_nice > 0 {
            // Every shard's index writer (and with it its merge threads) exists now, and so
            // does RocksDB's compaction pool.
            let nice = config.background_nice;
            let expected = groups.len() * veil_shard::MERGE_THREADS;
            match crate::priority::lower_background(nice, expected).await {
                Ok((merges, compactions)) if merges >= expected && compactions >= 1 => {
                    tracing::info!(merges, compactions, nice, "background threads lowered")
                }
                Ok((merges, compactions)) => tracing::warn!(
                    merges,
                    expected,
                    compactions,
                    nice,
                    "not every background thread was found to lower"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, nice, "could not lower the background threads' priority")
                }
            }
        }
        if info.format_version != crate::datadir::FORMAT_VERSION {
            let mut upgraded = info.clone();
            upgraded.format_version = crate::datadir::FORMAT_VERSION;
            crate::datadir::write_info(&config.data_dir, &upgraded)?;
            tracing::info!(
                rollup_rows,
                from = info.format_version,
                to = crate::datadir::FORMAT_VERSION,
                "data directory upgraded (what the older format lacked was built or moved at shard open)"
            );
        }
        let metrics: Arc<crate::metrics::Metrics> = Default::default();
        let (proposers, proposer_tasks): (Vec<_>, Vec<_>) = groups
            .iter()
            .map(|g| {
                crate::proposer::Proposer::start(
                    g.shard.clone(),
                    g.raft.clone(),
                    metrics.clone(),
                    config.ingest_inflight_max,
                    config.raft_entry_entries_max,
                    config.raft_proposals_inflight_max,
                )
            })
            .unzip();
        let node = Arc::new(Node {
            ingest_permits: Semaphore::new(config.ingest_inflight_max),
            query_slots: crate::slots::QuerySlots::new(
                config.query_parallelism,
                config.query_age_weight,
            ),
            idempotency_gate: tokio::sync::Mutex::new(()),
            exception_spans: Default::default(),
            incarnation,
            masker: std::sync::RwLock::new(Arc::new(masker)),
            keys,
            patterns: crate::cluster::patterns::Patterns::new(patterns),
            field_keys: crate::ingest::FieldKeys::new(config.field_keys_per_service_max),
            traces: veil_node::parse::exception::TraceCache::new(
                config.exception_trace_cache_entries,
            ),
            metrics,
            proposers,
            proposer_tasks: std::sync::Mutex::new(proposer_tasks),
            cluster: ClusterHandle::new(
                info.node_id,
                info.cluster_id.clone(),
                member,
                keys_fingerprint,
                peers,
                router,
                meta_raft,
                meta_store,
                Duration::from_millis(config.forward_timeout_ms),
            ),
            background: std::sync::Mutex::new(Vec::new()),
            index_commits: groups
                .iter()
                .map(|g| tokio::sync::watch::Sender::new(g.shard.index().committed_up_to()))
                .collect(),
            index_copy_locks: groups.iter().map(|_| Default::default()).collect(),
            ready: AtomicBool::new(false),
            disk_low: AtomicBool::new(false),
            config,
            shard_map,
            groups,
            db,
            column_families,
            block_cache,
            syncer,
            committer: std::sync::Mutex::new(None),
        });
        node.clone().spawn_index_committer();
        node.spawn_catalog_reader();
        let watcher = node.spawn_address_book();
        let placement = crate::cluster::reconcile::spawn(node.clone());
        // The cluster's patterns, as this node has applied them, in force from here on.
        node.refresh_masker();
        let patterns = node.spawn_pattern_follower();
        let balance = crate::cluster::leaders::spawn(node.clone());
        let removal = crate::cluster::membership::spawn_removal_watch(node.clone());
        let index_roles = crate::cluster::index_copy::spawn(&node);
        node.background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(
                [watcher, placement, patterns, removal]
                    .into_iter()
                    .chain(balance)
                    .chain(index_roles),
            );
        Ok(node)
    }

    /// Keeps the peers' address book equal to the metadata's member list.
    fn spawn_address_book(&self) -> tokio::task::JoinHandle<()> {
        let store = self.cluster.meta_store.clone();
        let peers = self.cluster.peers.clone();
        tokio::spawn(async move {
            let mut changes = store.subscribe();
            loop {
                let book = store
                    .state()
                    .members
                    .into_iter()
                    .map(|(id, m)| (id, m.peer_addr))
                    .collect();
                peers.set_addresses(book);
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// Opens the metadata group (its log in its own column family, its state in `cluster/`)
    /// and, on a founding node the first time, initializes it with this node as its voter.
    async fn open_meta(
        config: &NodeConfig,
        info: &crate::datadir::DataDirInfo,
        db: &Arc<rocksdb::DB>,
        syncer: &LogSyncer,
        raft_config: Arc<openraft::Config>,
        context: &GroupContext<'_>,
    ) -> anyhow::Result<(MetaRaft, Arc<MetaStore>)> {
        let store = MetaStore::open(&config.data_dir.join("cluster"))?;
        let log = LogStore::open(db.clone(), META_GROUP, syncer.clone());
        let raft = MetaRaft::new(
            context.me,
            raft_config,
            PeerNetwork::new(META_GROUP, context.peers.clone()),
            log,
            crate::cluster::meta_store::MetaStateMachine::new(store.clone()),
        )
        .await
        .context("failed to start the metadata group")?;
        context.router.add(META_GROUP, Arc::new(raft.clone()));
        if !info.joined
            && !raft
                .is_initialized()
                .await
                .context("metadata group stopped")?
        {
            raft.initialize(context.voter())
                .await
                .context("failed to initialize the metadata group")?;
        }
        Ok((raft, store))
    }

    /// Reads each shard's exception catalog (exception id → service, one seek per exception)
    /// in the background, one shard after another, so the first top-K filtered by service
    /// after a start does not pay for it (0.8 s over 16 shards on issue 7's 10 M entries).
    fn spawn_catalog_reader(&self) {
        let shards: Vec<_> = self.groups.iter().map(|g| g.shard.clone()).collect();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut exceptions = 0;
            for shard in shards {
                let id = shard.id();
                match tokio::task::spawn_blocking(move || shard.read_catalog()).await {
                    Ok(Ok(n)) => exceptions += n,
                    Ok(Err(e)) => {
                        tracing::warn!(shard_id = %id, error = %e, "exception catalog not read")
                    }
                    Err(e) => tracing::warn!(shard_id = %id, error = %e, "catalog task failed"),
                }
            }
            tracing::info!(
                exceptions,
                seconds = started.elapsed().as_secs_f64(),
                "exception catalogs read"
            );
        });
    }

    /// Opens every shard and starts its Raft group, pushing each onto `groups` as it comes up
    /// (so a caller can close them when a later one fails). Returns the rollup rows rebuilt.
    #[allow(clippy::too_many_arguments)]
    async fn open_groups(
        config: &NodeConfig,
        info: &crate::datadir::DataDirInfo,
        db: &Arc<rocksdb::DB>,
        syncer: &LogSyncer,
        shard_map: ShardMap,
        raft_config: Arc<openraft::Config>,
        context: &GroupContext<'_>,
        groups: &mut Vec<Group>,
    ) -> anyhow::Result<usize> {
        let mut rollup_rows = 0usize;
        for shard_id in shard_map.shards() {
            let shard_config = ShardConfig {
                data_dir: config.data_dir.clone(),
                index_heap_bytes: config.index_heap_bytes,
                index_persist: veil_shard::PersistPolicy {
                    interval: Duration::from_millis(config.index_persist_interval_ms),
                    ram_bytes_max: config.index_ram_bytes_max / info.shards.max(1) as usize,
                },
                shard_map,
                rollup_cache_entries: config.exception_cache_entries / info.shards.max(1) as usize,
                proposals_kept: config.raft_proposals_inflight_max,
                counter_rows_pending_max: config.exception_counter_rows_pending_max,
            };
            // An index in an older file format cannot even be opened: it goes, and is rebuilt
            // from the shard's entries below. The directory records the new format only once
            // every shard is open, so a crash meanwhile starts the rebuild again.
            let rebuild = info.format_version < crate::datadir::INDEX_SINCE;
            if rebuild {
                let dir = veil_shard::index_dir(&config.data_dir, shard_id);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("failed to remove the old index {}", dir.display())
                        })
                    }
                }
            }
            if info.format_version < crate::datadir::ENTRIES_PER_SHARD_SINCE {
                // Before the shard opens: opening reads its entries to catch its index up.
                let started = std::time::Instant::now();
                let db2 = db.clone();
                let moved = tokio::task::spawn_blocking(move || {
                    veil_shard::move_shared_entries(&db2, shard_id)
                })
                .await?
                .with_context(|| format!("failed to move the entries of shard {shard_id}"))?;
                tracing::info!(
                    shard = shard_id.0,
                    entries = moved,
                    seconds = started.elapsed().as_secs_f64(),
                    "entries moved to the shard's own column family"
                );
            }
            if info.format_version < crate::datadir::RAFT_LOG_PER_GROUP_SINCE {
                // Before the group's log store opens.
                let db2 = db.clone();
                let moved = tokio::task::spawn_blocking(move || {
                    veil_raft::move_shared_log(&db2, GroupId(shard_id.0))
                })
                .await?
                .with_context(|| format!("failed to move the Raft log of shard {shard_id}"))?;
                tracing::info!(
                    shard = shard_id.0,
                    logs = moved,
                    "Raft log moved to the group's own column family"
                );
            }
            let db2 = db.clone();
            let shard =
                tokio::task::spawn_blocking(move || Shard::open(shard_id, db2, shard_config))
                    .await?
                    .with_context(|| format!("failed to open shard {shard_id}"))?;
            if rebuild {
                let started = std::time::Instant::now();
                let shard = shard.clone();
                let entries = tokio::task::spawn_blocking(move || shard.rebuild_index())
                    .await?
                    .with_context(|| format!("failed to rebuild the index of shard {shard_id}"))?;
                tracing::info!(
                    shard = shard_id.0,
                    entries,
                    seconds = started.elapsed().as_secs_f64(),
                    "index rebuilt in the new format"
                );
            }
            if info.format_version < crate::datadir::ROLLUPS_SINCE {
                // Before its Raft group starts, so no apply races the rebuild.
                let shard = shard.clone();
                rollup_rows += tokio::task::spawn_blocking(move || shard.rebuild_hourly_rollups())
                    .await?
                    .context("failed to build the hourly exception rollups")?;
            } else if info.format_version < crate::datadir::DIMS_HOURLY_SINCE {
                let started = std::time::Instant::now();
                let shard = shard.clone();
                let rows = tokio::task::spawn_blocking(move || shard.rebuild_dims_rollups())
                    .await?
                    .context("failed to build the hourly exception rollups per dimensions")?;
                tracing::info!(
                    shard = shard_id.0,
                    rows,
                    seconds = started.elapsed().as_secs_f64(),
                    "hourly exception rollups per dimensions built"
                );
                rollup_rows += rows;
            }
            let store = LogStore::open(db.clone(), GroupId(shard_id.0), syncer.clone());
            let raft = ShardRaft::new(
                context.me,
                raft_config.clone(),
                PeerNetwork::new(GroupId(shard_id.0), context.peers.clone()),
                store,
                ShardStateMachine::new(shard.clone()),
            )
            .await
            .with_context(|| format!("failed to start raft group of shard {shard_id}"))?;
            context
                .router
                .add(GroupId(shard_id.0), Arc::new(raft.clone()));
            // A joining node's groups are started empty: the cluster adds it to them.
            if !info.joined && !raft.is_initialized().await.context("raft group stopped")? {
                raft.initialize(context.voter())
                    .await
                    .with_context(|| format!("failed to initialize shard {shard_id}"))?;
            }
            groups.push(Group { shard, raft });
        }
        Ok(rollup_rows)
    }

    /// The PII engine in force.
    pub fn masker(&self) -> Arc<Masker> {
        self.masker_current();
        // A panic while swapping leaves the old engine, which is still a whole engine.
        self.masker
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn build_masker(&self, patterns: &[CustomPattern]) -> Result<Masker, PatternError> {
        Masker::new(self.config.pii_strategies, &self.keys, patterns).map_err(|e| {
            PatternError::Invalid {
                field: "regex_pattern",
                reason: e.to_string(),
            }
        })
    }

    pub(crate) fn swap_masker(&self, masker: Masker) {
        *self.masker.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(masker);
    }

    /// The masking stage's context, over an engine taken from [`Node::masker`].
    pub fn masking<'a>(&'a self, masker: &'a Masker) -> crate::ingest::MaskingContext<'a> {
        crate::ingest::MaskingContext {
            masker,
            keys: &self.keys,
            keep_originals_for: &self.config.keep_originals_for,
            field_keys: Some(&self.field_keys),
            mask_nanos: Some(&self.metrics.mask_nanos),
            traces: Some(&self.traces),
        }
    }

    /// Waits until the metadata group and every shard's group have a leader this node knows
    /// (on a joining node: until the cluster has added it to them), then marks the node ready.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Duration::from_millis(self.config.startup_timeout_ms);
        self.cluster
            .meta_raft
            .wait(Some(deadline))
            .metrics(|m| m.current_leader.is_some(), "metadata leader known")
            .await
            .context("the metadata group elected no leader in time")?;
        // A founding node puts itself on record before it says ready (joins already are).
        let started = std::time::Instant::now();
        while !self
            .cluster
            .meta_store
            .state()
            .members
            .contains_key(&self.cluster.me)
        {
            let command = crate::cluster::MetaCommand::AddNode {
                id: Some(self.cluster.me),
                member: self.cluster.member.clone(),
            };
            match self.propose_meta(command).await {
                Ok(crate::cluster::MetaReply::Refused(why)) => {
                    anyhow::bail!("the cluster refused this node's record: {why}")
                }
                Ok(_) => {}
                Err(e) if started.elapsed() < deadline => {
                    tracing::debug!(error = %e, "recording this node; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.context("could not record this node in the cluster")),
            }
        }
        // An older directory's own PII patterns become the cluster's before it takes writes.
        loop {
            match self.seed_legacy_patterns().await {
                Ok(()) => break,
                Err(PatternError::Unavailable(why)) if started.elapsed() < deadline => {
                    tracing::debug!(%why, "moving this directory's PII patterns; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context("could not move this directory's PII patterns into the cluster"))
                }
            }
        }
        // The shards placed on this node: it is ready once it votes in each of them.
        self.wait_placed_replicas(deadline).await?;
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Returns true once the node can take writes.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Commits each shard's index once per `--index-commit-interval-ms`, the shards spread
    /// evenly over the interval: committing all at the same instant made every commit's segment
    /// finalization (and the merges the new segments trigger) land on the cores together.
    fn spawn_index_committer(self: Arc<Self>) {
        let shards = self.groups.len().max(1) as u32;
        let interval = Duration::from_millis(self.config.index_commit_interval_ms) / shards;
        let slot = self.clone();
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for next in (0..self.groups.len()).cycle() {
                ticker.tick().await;
                let node = self.clone();
                let result = tokio::task::spawn_blocking(move || node.commit_index_of(next)).await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "index commit task failed");
                }
            }
        });
        *slot.committer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// Commits one shard's index (the `i`-th group's), persisting it if its policy says so.
    fn commit_index_of(&self, i: usize) {
        let shard = &self.groups[i].shard;
        if let Err(e) = shard.commit_index() {
            tracing::error!(shard_id = %shard.id(), error = %e, "index commit failed");
        }
        let committed = shard.index().committed_up_to();
        self.index_commits[i].send_if_modified(|last| {
            let newer = *last != committed;
            *last = committed;
            newer
        });
    }

    /// The shared block cache's bytes in use and capacity, for `GET /metrics`.
    pub fn block_cache_bytes(&self) -> Option<(u64, u64)> {
        let cache = self.block_cache.as_ref()?;
        Some((cache.get_usage() as u64, self.config.block_cache_bytes))
    }

    /// Each RocksDB column family's SST and memtable bytes, for `GET /metrics` (RocksDB's
    /// `total-sst-files-size` and `cur-size-all-mem-tables`; a family whose numbers cannot be
    /// read is left out).
    pub fn store_sizes(&self) -> Vec<crate::metrics::StoreLine> {
        self.column_families
            .iter()
            .filter_map(|name| {
                let handle = self.db.cf_handle(name)?;
                let int = |property: &str| {
                    self.db
                        .property_int_value_cf(&handle, property)
                        .ok()
                        .flatten()
                };
                Some(crate::metrics::StoreLine {
                    cf: name.clone(),
                    sst_bytes: int("rocksdb.total-sst-files-size")?,
                    memtable_bytes: int("rocksdb.cur-size-all-mem-tables")?,
                })
            })
            .collect()
    }

    /// Free bytes on the data directory's filesystem (what an unprivileged writer may use);
    /// also recorded for `/metrics`.
    pub fn disk_free_bytes(&self) -> std::io::Result<u64> {
        let s = rustix::fs::statvfs(&self.config.data_dir)?;
        let free = s.f_bavail.saturating_mul(s.f_frsize);
        self.metrics.disk_free_bytes.store(free, Ordering::Relaxed);
        Ok(free)
    }

    /// Refuses ingest with 507 while the data directory's disk has less free space than
    /// `--disk-free-bytes-min`: RocksDB that runs out of space mid-write stops every Raft
    /// group, so the node stops taking writes first and keeps answering queries. One
    /// `statvfs` per request (a few µs against a request's milliseconds).
    fn check_disk(&self) -> Result<(), ApiError> {
        let min = self.config.disk_free_bytes_min;
        if min == 0 {
            return Ok(());
        }
        let free = match self.disk_free_bytes() {
            Ok(free) => free,
            Err(e) => {
                // Cannot tell: let the write try; RocksDB reports a real failure.
                tracing::warn!(error = %e, "could not read the data directory's free space");
                return Ok(());
            }
        };
        let low = free < min;
        if self.disk_low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!(
                    free,
                    min,
                    "disk nearly full: refusing ingest until space is freed"
                );
            } else {
                tracing::info!(
                    free,
                    min,
                    "disk space back above the bound: taking ingest again"
                );
            }
        }
        if !low {
            return Ok(());
        }
        crate::metrics::Metrics::add(&self.metrics.ingest_disk_full, 1);
        Err(ApiError::new(
            axum::http::StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!(
                "the data directory's disk has {free} bytes free, less than --disk-free-bytes-min ({min}); \
                 ingest resumes once space is freed (retention, a larger disk) or the bound is lowered"
            ),
        ))
    }

    /// Returns the entry limits of the ingest path.
    pub fn entry_limits(&self) -> EntryLimits {
        self.config.entry_limits()
    }

    /// Stores the prepared entries; rejected ones pass through. Returns once every stored entry
    /// is committed and applied, one result per input in order.
    pub async fn ingest(
        &self,
        items: Vec<Result<PreparedEntry, ApiError>>,
    ) -> Result<Vec<EntryResult>, ApiError> {
        if !self.is_ready() {
            return Err(ApiError::unavailable("not_ready", "the node is starting"));
        }
        self.check_disk()?;
        let _permit = self.ingest_permits.try_acquire().map_err(|_| {
            crate::metrics::Metrics::add(&self.metrics.ingest_throttled, 1);
            let mut e = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "too many ingest requests in flight; retry later",
            );
            e.retry_after_secs = Some(1);
            e
        })?;
        let any_keyed = items.iter().any(|i| matches!(i, Ok(p) if p.keyed));
        let _gate = if any_keyed {
            Some(self.idempotency_gate.lock().await)
        } else {
            None
        };
        // A keyed entry timed by its arrival routes by the hour it arrives in; a retry of it
        // (here or on another node, maybe in another hour) finds the first copy only if this
        // node's replicas hold everything acknowledged (catch them up first), and, for the
        // shards it holds no replica of, by asking theirs (a strong read).
        let arrival_keyed: Vec<uuid::Uuid> = items
            .iter()
            .filter_map(|i| match i {
                Ok(p) if p.keyed && p.received_time => Some(p.entry.log_id),
                _ => None,
            })
            .collect();
        let mut found_elsewhere = HashMap::new();
        if !arrival_keyed.is_empty() {
            let behind = self.catch_up_replicas().await;
            found_elsewhere = self.locate_elsewhere(arrival_keyed, &behind).await?;
        }
        let mut results: Vec<Option<EntryResult>> = vec![None; items.len()];
        // Per shard, and apart by whether the node minted the log_ids (only keyed entries need
        // the shard's duplicate check).
        let mut by_shard: HashMap<(ShardId, bool), Vec<(usize, StoredEntry)>> = HashMap::new();
        let mut findings = Vec::with_capacity(items.len());
        for (pos, item) in items.into_iter().enumerate() {
            match item {
                Err(e) => {
                    crate::metrics::Metrics::add(&self.metrics.entries_rejected, 1);
                    results[pos] = Some(EntryResult::Rejected(e));
                    findings.push(None);
                }
                Ok(mut p) => {
                    if p.keyed {
                        let here = self.lookup_timestamp(p.entry.log_id).await?;
                        if let Some(ts) = here.or(found_elsewhere.get(&p.entry.log_id).copied()) {
                            // A retry: route it where the first copy went, so apply sees the
                            // duplicate whatever hour the retry arrived in.
                            p.entry.timestamp_us = ts;
                        }
                    }
                    let shard = self.shard_map.shard_for(&p.entry.service, p.entry.hour());
                    by_shard
                        .entry((shard, !p.keyed))
                        .or_default()
                        .push((pos, p.entry));
                    findings.push(Some(p.findings));
                }
            }
        }
        let mut proposals = Vec::new();
        for ((shard, minted), entries) in by_shard {
            let mut rest = entries;
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(self.config.raft_entry_entries_max));
                let (positions, entries): (Vec<usize>, Vec<StoredEntry>) =
                    std::mem::replace(&mut rest, tail).into_iter().unzip();
                let ids: Vec<uuid::Uuid> = entries.iter().map(|e| e.log_id).collect();
                proposals.push(async move {
                    let result = self.commit_part(shard, minted, entries).await;
                    (positions, ids, result)
                });
            }
        }
        // A shard part that could not be stored in time (its group has no leader, or lost its
        // majority) answers a retryable error for its own entries; the others are stored.
        // When nothing at all was stored the whole request is that error (503, Retry-After).
        let mut retryable: Option<ApiError> = None;
        let mut stored_any = false;
        for (positions, ids, result) in futures::future::join_all(proposals).await {
            let outcomes = match result {
                Ok(outcomes) => outcomes,
                Err(e) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                    for pos in positions {
                        results[pos] = Some(EntryResult::Rejected(e.clone().with_line(pos + 1)));
                    }
                    retryable.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            stored_any = true;
            for ((pos, log_id), outcome) in positions.into_iter().zip(ids).zip(outcomes) {
                let f = findings[pos].take().unwrap_or_default();
                crate::metrics::Metrics::add(
                    if outcome == EntryOutcome::Duplicate {
                        &self.metrics.entries_duplicate
                    } else {
                        &self.metrics.entries_accepted
                    },
                    1,
                );
                results[pos] = Some(EntryResult::Stored(Stored {
                    log_id,
                    duplicate: outcome == EntryOutcome::Duplicate,
                    pii_detected: f.names(),
                    pii_masked: f.any(),
                }));
            }
        }
        if let (false, Some(e)) = (stored_any, retryable) {
            return Err(e);
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| ApiError::internal("ingesting", "an entry got no result")))
            .collect()
    }

    /// Finds the timestamp under which `log_id` is stored, asking every shard.
    /// The shard holding `log_id` and the entry's timestamp, if any shard holds it.
    fn locate(&self, log_id: uuid::Uuid) -> Result<Option<(&Arc<Shard>, i64)>, ApiError> {
        for group in &self.groups {
            if let Some(ts) = group
                .shard
                .lookup_log_id(log_id)
                .map_err(|e| ApiError::internal("looking up a log_id", e))?
            {
                return Ok(Some((&group.shard, ts)));
            }
        }
        Ok(None)
    }

    /// The timestamps under which the shards this node holds no replica of, and those in
    /// `behind` (whose replica here did not catch up), store any of `log_ids`, asked with a
    /// strong read (so every acknowledged entry counts). A shard that cannot answer makes the
    /// request retryable: storing the entry without knowing could store a retry twice.
    async fn locate_elsewhere(
        &self,
        log_ids: Vec<uuid::Uuid>,
        behind: &[ShardId],
    ) -> Result<HashMap<uuid::Uuid, i64>, ApiError> {
        let shards: Vec<ShardId> = self
            .groups
            .iter()
            .map(|g| g.shard.id())
            .filter(|s| !self.holds_placed_replica(*s) || behind.contains(s))
            .collect();
        let mut found = HashMap::new();
        if shards.is_empty() {
            return Ok(found);
        }
        let mut ask = crate::coordinator::Ask::new(
            &self.config,
            Duration::from_millis(self.config.forward_timeout_ms),
            true,
        );
        // The local replica of a shard that did not catch up would only wait again.
        ask.skip_local = behind.to_vec();
        let request = Arc::new(crate::leaf::LeafRequest::Entries { log_ids });
        let outcomes =
            crate::coordinator::ask_shards(self, &shards, |_| request.clone(), &ask).await;
        for (shard, outcome) in shards.iter().zip(outcomes) {
            match outcome {
                crate::coordinator::Outcome::Answered(reply) => {
                    if let crate::leaf::LeafAnswer::Entries(entries) = reply.answer {
                        for e in entries {
                            found.insert(e.log_id, e.timestamp_us);
                        }
                    }
                }
                _ => {
                    // The same code as a part that cannot be stored: the shard has no
                    // reachable leader or replica now.
                    let mut e = ApiError::unavailable(
                        "shard_unavailable",
                        format!(
                            "shard {shard} could not be asked whether it already holds a keyed \
                             entry of this request; retry with the same keys"
                        ),
                    );
                    e.retry_after_secs = Some(1);
                    return Err(e);
                }
            }
        }
        Ok(found)
    }

    async fn lookup_timestamp(&self, log_id: uuid::Uuid) -> Result<Option<i64>, ApiError> {
        Ok(self.locate(log_id)?.map(|(_, ts)| ts))
    }

    /// Compacts the node's storage now: each Raft group snapshots its applied state and purges
    /// its log behind the snapshot, RocksDB compacts every column family (the shards' entries
    /// down to and including their bottommost level, see below), and every shard's index is
    /// merged into one segment. Queries keep working; ingest into a shard waits while its index
    /// merges.
    pub async fn compact(&self) -> anyhow::Result<CompactReport> {
        let started = std::time::Instant::now();
        let bytes_before = dir_bytes(&self.config.data_dir);
        let timeout = Some(Duration::from_secs(600));
        let mut purged_entries = 0u64;
        for group in &self.groups {
            // The metrics as they are now (the condition holds at once).
            let m = group
                .raft
                .wait(timeout)
                .metrics(|_| true, "metrics")
                .await?;
            let (applied, purged) = (
                m.last_applied.as_ref().map(|l| l.index()),
                m.purged.as_ref().map(|l| l.index()),
            );
            let Some(applied) = applied else { continue };
            group.raft.trigger().snapshot().await?;
            group
                .raft
                .wait(timeout)
                .metrics(
                    |m| m.snapshot.as_ref().is_some_and(|s| s.index() >= applied),
                    "snapshot of the applied state",
                )
                .await?;
            group.raft.trigger().purge_log(applied).await?;
            group
                .raft
                .wait(timeout)
                .metrics(
                    |m| m.purged.as_ref().is_some_and(|p| p.index() >= applied),
                    "raft log purged behind the snapshot",
                )
                .await?;
            purged_entries += applied - purged.unwrap_or(0);
        }
        let db = self.db.clone();
        let names = self.column_families.clone();
        let shards: Vec<Arc<Shard>> = self.groups.iter().map(|g| g.shard.clone()).collect();
        let segments_merged = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            for name in names {
                let handle = db
                    .cf_handle(&name)
                    .with_context(|| format!("column family {name} is missing"))?;
                // A shard's first flushed file reaches the bottommost level by a trivial move
                // (RocksDB counts level 0 as bottommost while the levels below are empty), so
                // it keeps the flush's Snappy; its keys are the shard's oldest, which no later
                // compaction overlaps. Rewriting the bottommost level gives it zstd too.
                let mut opts = rocksdb::CompactOptions::default();
                if name.starts_with(veil_shard::CF_ENTRIES) {
                    opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
                }
                db.compact_range_cf_opt(handle, None::<&[u8]>, None::<&[u8]>, &opts);
            }
            let mut merged = 0;
            for shard in shards {
                merged += shard.merge_index()?;
            }
            Ok(merged)
        })
        .await??;
        Ok(CompactReport {
            bytes_before,
            bytes_after: dir_bytes(&self.config.data_dir),
            raft_entries_purged: purged_entries,
            index_segments_before: segments_merged,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Stops the node and closes its storage: stops the index-commit loop and every Raft group,
    /// commits the indexes, syncs and stops the Raft log's fsync thread, then drops the last
    /// handles so RocksDB closes (its background work joined) before the process exits.
    pub async fn close(self: Arc<Self>) {
        self.shutdown().await;
        let db = self.db.clone();
        drop(self);
        if close_db(db).await {
            tracing::info!("storage closed");
        }
    }

    /// Stops every Raft group, commits the indexes and flushes RocksDB.
    async fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let committer = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(committer) = committer {
            committer.abort();
            let _ = committer.await;
        }
        // Parts still queued are answered "shutting down"; Raft entries already proposed end
        // with the groups below.
        let proposers = std::mem::take(
            &mut *self
                .proposer_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for task in proposers {
            task.abort();
            let _ = task.await;
        }
        self.hand_over_leadership().await;
        let background =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|p| p.into_inner()));
        for task in background {
            task.abort();
            let _ = task.await;
        }
        for group in &self.groups {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(shard_id = %group.shard.id(), error = %e, "raft group did not stop cleanly");
            }
        }
        if let Err(e) = self.cluster.meta_raft.shutdown().await {
            tracing::warn!(error = %e, "metadata group did not stop cleanly");
        }
        for group in &self.groups {
            if let Err(e) = group.shard.flush_index() {
                tracing::error!(shard_id = %group.shard.id(), error = %e, "index flush failed");
            }
        }
        if let Err(e) = veil_raft::sync_wal(&self.db) {
            tracing::warn!(error = %e, "final wal sync failed");
        }
        stop_syncer(self.syncer.clone()).await;
    }
}

/// A random number naming this process (see `Node::incarnation`).
fn incarnation() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Stops the Raft log's fsync thread (it joins the thread: on a blocking thread).
async fn stop_syncer(syncer: LogSyncer) {
    if let Err(e) = tokio::task::spawn_blocking(move || syncer.stop()).await {
        tracing::warn!(error = %e, "stopping the raft log sync thread failed");
    }
}

/// Waits (up to 10 s) for every other handle on RocksDB to go — openraft's tasks and in-flight
/// blocking work release theirs as they finish — then drops the last, so RocksDB closes with its
/// background work joined (left open, it can crash the process at exit). False when handles
/// remained: RocksDB then closes at exit.
async fn close_db(db: Arc<rocksdb::DB>) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&db) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let holders = Arc::strong_count(&db) - 1;
    if holders > 0 {
        tracing::warn!(
            holders,
            "rocksdb still referenced at close; it closes at exit"
        );
        return false;
    }
    drop(db);
    true
}
