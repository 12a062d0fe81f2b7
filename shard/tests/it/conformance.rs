//! openraft's storage conformance suite (`openraft::testing::log::Suite::test_all`) against
//! `veil_raft::LogStore` and `veil_shard::ShardStateMachine` on a real RocksDB.

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use veil_raft::{GroupId, LogStore, LogSyncer, TypeConfig};
use veil_shard::{Shard, ShardConfig, ShardId, ShardMap, ShardStateMachine};

pub(crate) fn open_db(dir: &std::path::Path) -> Arc<rocksdb::DB> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Shards and groups 0 to 7: the ids the tests use.
    let mut cfs = veil_raft::column_families(8);
    cfs.extend(veil_shard::column_families(8));
    Arc::new(rocksdb::DB::open_cf_descriptors(&opts, dir.join("db"), cfs).expect("open rocksdb"))
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, ShardStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(dir.path());
        let syncer = LogSyncer::start(db.clone(), 64).expect("start syncer");
        let store = LogStore::open(db.clone(), GroupId(7), syncer);
        let config = ShardConfig {
            data_dir: dir.path().to_path_buf(),
            index_heap_bytes: 15_000_000,
            shard_map: ShardMap::new(16),
            rollup_cache_entries: 0,
            index_persist: Default::default(),
            proposals_kept: 0,
            counter_rows_pending_max: 65_536,
        };
        let shard = Shard::open(ShardId(7), db, config).expect("open shard");
        Ok((dir, store, ShardStateMachine::new(shard)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_store_and_state_machine_pass_openraft_conformance_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage conformance suite");
}
