//! Index commits copied between a shard's replicas: a replica that copies answers like the one
//! that indexes, and whichever becomes the leader indexes from its last commit without losing
//! or repeating an entry.

use openraft::storage::RaftStateMachine;
use veil_shard::{query_lang, Shard, ShardId, ShardQuery, ShardStateMachine};

use crate::apply::{apply, entry_for, holding, open, searchable, snapshot_of};
use crate::conformance::open_db;

/// Copies `from`'s last commit into `to`, reading every file the copy does not carry in
/// 512-byte pieces. Returns whether it was installed.
fn copy(from: &Shard, to: &Shard, carry: u64) -> bool {
    let copy = from
        .index()
        .copy_of_commit(&to.index().held_files(), carry)
        .unwrap();
    for file in &copy.files {
        if file.bytes.is_none() && to.index().holds_file(file) {
            continue;
        }
        let mut w = to.index().write_copied_file(&file.name).unwrap();
        match &file.bytes {
            Some(bytes) => w.write(bytes).unwrap(),
            None => {
                while w.written() < file.len {
                    let piece = from
                        .index()
                        .read_copied_file(&file.name, w.written(), 512)
                        .unwrap()
                        .unwrap();
                    w.write(&piece).unwrap();
                }
            }
        }
        w.finish().unwrap();
    }
    to.index().install_copy(&copy).unwrap()
}

fn matching(shard: &Shard, text: &str) -> u64 {
    shard
        .search(&ShardQuery {
            text: query_lang::parse(text).unwrap(),
            top_n: 5,
            ..Default::default()
        })
        .unwrap()
        .total
}

fn batch(from: u64, to: u64) -> Vec<veil_shard::StoredEntry> {
    (from..to).map(|n| entry_for(ShardId(1), n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_copy_the_leaders_index_answer_alike_and_take_over_indexing() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, mut sm_a) = holding(dir_a.path(), open_db(dir_a.path()), 40).await;
    let (b, mut sm_b) = holding(dir_b.path(), open_db(dir_b.path()), 40).await;
    // B follows: it stops indexing, and what it indexed but did not commit goes.
    b.stop_indexing();
    assert!(!b.index().is_indexing());
    assert_eq!(searchable(&b), 0);
    for (i, range) in [(2, (40, 70)), (3, (70, 75))] {
        apply(&mut sm_a, i, batch(range.0, range.1)).await;
        apply(&mut sm_b, i, batch(range.0, range.1)).await;
    }
    assert_eq!(a.commit_index().unwrap(), Some(3));
    assert_eq!(
        b.commit_index().unwrap(),
        None,
        "a copying replica commits nothing itself"
    );
    assert!(copy(&a, &b, 1 << 20));
    assert_eq!(searchable(&b), 75);
    for text in ["attempt", "attempt AND 7", "Fault1Exception", "user_44"] {
        assert_eq!(matching(&b, text), matching(&a, text), "{text}");
    }

    // B applies two more batches without indexing them, then leads: it indexes them from the
    // queue, once each.
    apply(&mut sm_a, 4, batch(75, 90)).await;
    apply(&mut sm_b, 4, batch(75, 90)).await;
    apply(&mut sm_b, 5, batch(90, 100)).await;
    assert_eq!(b.start_indexing().unwrap(), 25);
    assert_eq!(b.start_indexing().unwrap(), 0, "already indexing");
    apply(&mut sm_b, 6, batch(100, 103)).await;
    b.commit_index().unwrap();
    assert_eq!(searchable(&b), 103);

    // A follows B now: it catches up on the log, then copies B's commit, files carried in
    // none of the answer (all read in pieces).
    a.stop_indexing();
    apply(&mut sm_a, 5, batch(90, 100)).await;
    apply(&mut sm_a, 6, batch(100, 103)).await;
    assert!(copy(&b, &a, 0));
    assert_eq!(searchable(&a), 103);
    assert_eq!(matching(&a, "attempt"), 103);
    assert!(!copy(&b, &a, 0), "the same commit twice installs nothing");

    // A snapshot installed on a copying replica indexes what it installs, and the replica
    // goes on copying after.
    let dir_c = tempfile::tempdir().unwrap();
    let (_c, snapshot) = snapshot_of(dir_c.path(), 120).await;
    a.stop_indexing();
    let mut sm_a = ShardStateMachine::new(a.clone());
    sm_a.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(searchable(&a), 120);
    assert!(
        !a.index().is_indexing(),
        "the install's writer is closed after"
    );
}

/// Reopening a shard with an index copied to it finds the copy once persisted; the entries
/// applied above it are indexed again at open, as after any restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_copy_is_what_a_restart_reopens() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, _sm_a) = holding(dir_a.path(), open_db(dir_a.path()), 30).await;
    let db_b = open_db(dir_b.path());
    {
        let (b, mut sm_b) = holding(dir_b.path(), db_b.clone(), 30).await;
        b.stop_indexing();
        a.commit_index().unwrap();
        assert!(copy(&a, &b, 1 << 20));
        b.flush_index().unwrap();
        apply(&mut sm_b, 2, batch(30, 36)).await;
    }
    let b = open(dir_b.path(), db_b);
    assert_eq!(b.index().committed_up_to(), 2);
    assert_eq!(searchable(&b), 36);
}

/// A strong read's commit covers its read index also when the last entries added no
/// documents (duplicates of stored entries, or no command at all), so a replica copying the
/// commit knows it covers the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_covers_a_read_index_past_the_last_document() {
    let dir = tempfile::tempdir().unwrap();
    let (shard, mut sm) = holding(dir.path(), open_db(dir.path()), 10).await;
    assert_eq!(shard.commit_index().unwrap(), Some(1));
    // Raft entry 2 only repeats stored entries: applied, nothing to index.
    apply(&mut sm, 2, batch(0, 10)).await;
    assert_eq!(shard.commit_index_covering(2).unwrap(), Some(2));
    assert_eq!(shard.index().committed_up_to(), 2);
    // A read index past the last apply with documents (a blank entry, say).
    assert_eq!(shard.commit_index_covering(3).unwrap(), Some(3));
    assert_eq!(
        shard.commit_index_covering(3).unwrap(),
        None,
        "covered already"
    );
    assert_eq!(searchable(&shard), 10);
    // A replica that does not index records nothing it did not add.
    shard.stop_indexing();
    assert_eq!(shard.commit_index_covering(9).unwrap(), None);
    assert_eq!(shard.index().committed_up_to(), 3);
}
