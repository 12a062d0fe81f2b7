//! The data directory's identity file, `veil.toml`: cluster id, node id, shard count, routing
//! hash and on-disk format version. Written when the directory is created; checked at every
//! start, so that a different `--shards` or an unknown format is an error instead of silent
//! corruption.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The on-disk format this build reads and writes.
/// 2: entries carry `sealed_original` (issue 4).
/// 3: hourly exception rollups (`exception_hourly`), which older directories lack.
/// 4: hourly exception history rollups (`exception_history_hourly`).
/// 5: counter rows may hold RocksDB merge operands, Raft logs `AppendMinted` commands, and
///    entries with minted log_ids have no `entry_ids` row — none of which builds for format 4
///    can read; nothing to convert.
/// 6: snapshots are records without files, `entries` values leave out the log_id and
///    timestamp their key holds, and values and Raft commands are variable-width bincode
///    behind a version byte; values, commands and snapshot files written before still read,
///    so format 5 opens as it is.
/// 7: new shard indexes keep the timestamp only as a fast field and their document store in
///    zstd, which a format-6 build cannot open (it would call the index corrupt); indexes
///    created before keep their schema and settings, so format 6 opens as it is.
/// 8: indexes keep their terms in tantivy's sstable dictionary instead of an FST (the build
///    reads only one of the two): opening an older directory rebuilds every shard's index from
///    its entries, before the shard's Raft group starts ([`INDEX_SINCE`]).
/// 9: hourly exception rollups per dimensions (`exception_dims_hourly`: every exception's
///    numbers per hour and (environment, region, level); `exception_dims_history_hourly`: each
///    exception's counters the same way), column families a format-8 build cannot open
///    (RocksDB refuses a directory with a column family it is not told of); an older directory
///    gets them built from its minute rows at open ([`DIMS_HOURLY_SINCE`]).
/// 10: indexes keep each entry's hour as an indexed term (`hour`), which time windows use for
///    their whole hours; an index without the field is not opened, so an older directory's
///    indexes are rebuilt at open ([`INDEX_SINCE`]).
/// 11: new indexes keep the `hour` term without norms (a byte per entry that nothing read),
///    which a format-10 build cannot open (another schema); indexes created before keep their
///    schema, so format 10 opens as it is.
/// 12: each shard's entries live in their own column family (`entries-NNNN`) instead of one
///    `entries` family for all shards; an older directory's entries are moved at open
///    ([`ENTRIES_PER_SHARD_SINCE`]).
/// 13: each Raft group's log lives in its own column family (`raft_log-NNNN`) instead of one
///    `raft_log` family for all groups; an older directory's logs are moved at open
///    ([`RAFT_LOG_PER_GROUP_SINCE`]).
/// 14: custom PII patterns are the cluster's, in the metadata group (`cluster/state.bin`),
///    instead of each node's own `pii-patterns.json`; an older directory's file is moved there
///    before the node is ready (`cluster/patterns.rs`), and a format-13 build, which would
///    mask without them, cannot open the directory.
/// 15: the metadata (`cluster/state.bin`) records leaving and removed members, which a
///    format-14 build would ignore (it would place replicas on a decommissioned node and
///    admit a removed one again); a format-14 file opens as it is.
pub const FORMAT_VERSION: u32 = 15;

/// The first format whose Raft logs live in one column family per group (older ones get theirs
/// moved there at open).
pub const RAFT_LOG_PER_GROUP_SINCE: u32 = 13;

/// The first format whose entries live in one column family per shard (older ones get theirs
/// moved there at open).
pub const ENTRIES_PER_SHARD_SINCE: u32 = 12;

/// The first format whose hourly exception rollups per dimensions exist (older ones get them
/// built at open).
pub const DIMS_HOURLY_SINCE: u32 = 9;

/// The first format whose indexes this build can read (the sstable dictionary since 8, the
/// `hour` field since 10); older ones are rebuilt at open.
pub const INDEX_SINCE: u32 = 10;

/// The oldest format whose hourly exception rollups exist (older ones get them rebuilt).
pub const ROLLUPS_SINCE: u32 = 4;

const FILE_NAME: &str = "veil.toml";

/// Shards of a new data directory (a new cluster) when `--shards` is not given; fixed for the
/// cluster's life. 16 spreads over a dozen nodes (48 replicas, 4 a node, leaders 1–2 a node)
/// and an idle three-node cluster of 16 shards took 3.4 % of this two-core machine (32: 5.6 %,
/// past the 5 % bound). Every shard costs a Raft group, an index writer and its commits
/// whatever its traffic: one node ingested 49–52K entries/s with 16 where 4 took 57–59K
/// (BENCHMARKS.md, session 13); a store that stays on one node can be created with fewer.
pub const DEFAULT_SHARDS: u32 = 16;

/// Older formats this build upgrades in place (2 and 3 by rebuilding the hourly exception
/// rollups; up to 8 by building the hourly rollups per dimensions; all of them by rebuilding
/// the shards' indexes).
pub const UPGRADABLE: [u32; 13] = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

/// What the data directory records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDirInfo {
    /// The on-disk format version.
    pub format_version: u32,
    /// The cluster this directory belongs to.
    pub cluster_id: String,
    /// This node's id.
    pub node_id: u64,
    /// The shard count, fixed at creation.
    pub shards: u32,
    /// The routing hash, fixed at creation.
    pub routing_hash: String,
    /// True when this node joined an existing cluster (`--join`): it never initializes a Raft
    /// group itself, the cluster adds it to them. A founding node's directory says false (as
    /// every directory written before clusters did).
    #[serde(default)]
    pub joined: bool,
}

/// Opens the data directory, creating and recording it on first use, and checks that the
/// configuration agrees with what it recorded.
pub fn open_or_create(
    dir: &Path,
    shards: Option<u32>,
    node_id: Option<u64>,
) -> anyhow::Result<(DataDirInfo, bool)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create data directory {}", dir.display()))?;
    let path = dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let info: DataDirInfo = toml::from_str(&text).with_context(|| {
                format!("unreadable {} (not a Veil data directory?)", path.display())
            })?;
            // Older formats are upgraded at start: 2 and 3 get their hourly rollups rebuilt
            // from the minute rows, every one before 9 its hourly rollups per dimensions built
            // from the minute rows, every one before 10 its indexes rebuilt from the entries
            // (then the current format is recorded).
            if info.format_version != FORMAT_VERSION && !UPGRADABLE.contains(&info.format_version) {
                bail!(
                    "data directory {} has on-disk format {}, this build reads only format {FORMAT_VERSION}",
                    dir.display(),
                    info.format_version
                );
            }
            if let Some(shards) = shards.filter(|s| *s != info.shards) {
                bail!(
                    "data directory {} was created with {} shards; --shards {shards} would re-route every entry (the shard count is fixed when a cluster is created)",
                    dir.display(),
                    info.shards
                );
            }
            if info.routing_hash != veil_shard::ROUTING_HASH {
                bail!(
                    "data directory {} uses routing hash {:?}, this build uses {:?}",
                    dir.display(),
                    info.routing_hash,
                    veil_shard::ROUTING_HASH
                );
            }
            if let Some(node_id) = node_id.filter(|id| *id != info.node_id) {
                bail!(
                    "data directory {} belongs to node {}, not node {node_id}",
                    dir.display(),
                    info.node_id
                );
            }
            Ok((info, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            check_empty(dir)?;
            let info = DataDirInfo {
                format_version: FORMAT_VERSION,
                cluster_id: uuid::Uuid::new_v4().to_string(),
                node_id: node_id.unwrap_or(1),
                shards: shards.unwrap_or(DEFAULT_SHARDS),
                routing_hash: veil_shard::ROUTING_HASH.to_string(),
                joined: false,
            };
            write_info(dir, &info)?;
            Ok((info, true))
        }
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Records `info` in the data directory atomically (write, fsync, rename).
/// Refuses a directory that holds anything but has no `veil.toml`.
fn check_empty(dir: &Path) -> anyhow::Result<()> {
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "data directory {} is not empty and has no {FILE_NAME}; refusing to use it",
            dir.display()
        );
    }
    Ok(())
}

/// The identity recorded in `dir`, if it is a Veil data directory already.
pub fn read_info(dir: &Path) -> anyhow::Result<Option<DataDirInfo>> {
    let path = dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(toml::from_str(&text).with_context(|| {
            format!("unreadable {} (not a Veil data directory?)", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Creates the data directory of a node that joined a cluster, with the identity the cluster
/// gave it. Refuses a directory that is not empty.
pub fn create_joined(
    dir: &Path,
    cluster_id: String,
    node_id: u64,
    shards: u32,
) -> anyhow::Result<DataDirInfo> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create data directory {}", dir.display()))?;
    check_empty(dir)?;
    let info = DataDirInfo {
        format_version: FORMAT_VERSION,
        cluster_id,
        node_id,
        shards,
        routing_hash: veil_shard::ROUTING_HASH.to_string(),
        joined: true,
    };
    write_info(dir, &info)?;
    Ok(info)
}

pub fn write_info(dir: &Path, info: &DataDirInfo) -> anyhow::Result<()> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    std::fs::write(
        &tmp,
        toml::to_string(info).context("failed to encode data directory info")?,
    )
    .with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("failed to fsync {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
