//! Background work yields the CPU: tantivy's merge threads and RocksDB's compaction threads
//! run at a lower priority (`--background-nice`).
//!
//! A merge or a compaction rewrites data that is already searchable and durable, so it can
//! wait; on two cores, the merges four shards start within the same second, or a compaction
//! into the zstd-compressed bottom level, took the cores for a second and the ingest
//! acknowledgements of that second waited (p50 7 → 65–105 ms, BENCHMARKS.md session 6).
//! tantivy names its merge threads `merge_thread_<n>` and creates them with each index writer;
//! RocksDB names its compaction pool `rocksdb:low` and starts it when the database opens; so
//! the node lowers them once its shards are open. Flushes (`rocksdb:high`) keep their priority:
//! a memtable that cannot flush stalls writes. On Linux `setpriority(PRIO_PROCESS, tid)` sets
//! one thread's nice value.

use std::io;
use std::time::{Duration, Instant};

use rustix::process::{setpriority_process, Pid};

/// The name prefix of tantivy's merge threads.
pub const MERGE_THREAD_PREFIX: &str = "merge_thread_";
/// The name of RocksDB's compaction (low-priority pool) threads.
pub const COMPACTION_THREAD_PREFIX: &str = "rocksdb:low";

/// How long [`lower_background`] waits for the threads to carry their names.
const NAMED_WAIT: Duration = Duration::from_secs(2);

/// Lowers the background threads to `nice`: at least `merge_threads` merge threads and one
/// compaction thread. A new thread names itself once it runs, so until then it still carries
/// its creator's name; this retries (every 5 ms, up to 2 s) until the expected threads are
/// found. Returns how many of each it lowered.
pub async fn lower_background(nice: i32, merge_threads: usize) -> io::Result<(usize, usize)> {
    let deadline = Instant::now() + NAMED_WAIT;
    loop {
        let merges = renice_threads(MERGE_THREAD_PREFIX, nice)?;
        let compactions = renice_threads(COMPACTION_THREAD_PREFIX, nice)?;
        if (merges >= merge_threads && compactions >= 1) || Instant::now() >= deadline {
            return Ok((merges, compactions));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sets the nice value of every thread of this process whose name starts with `prefix`;
/// returns how many it set.
pub fn renice_threads(prefix: &str, nice: i32) -> io::Result<usize> {
    let mut count = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        // A thread that exited since the listing has no comm any more: skip it.
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if name.trim_end().starts_with(prefix) {
            setpriority_process(Some(tid), nice)?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named thread of this process gets the nice value; the calling thread keeps its own.
    #[test]
    fn renices_the_named_threads_only() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("veil_renice_t".into())
            .spawn(move || {
                ready_tx.send(rustix::thread::gettid()).unwrap();
                done_rx.recv().unwrap();
            })
            .unwrap();
        let tid = ready_rx.recv().unwrap();
        let own = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(renice_threads("veil_renice_t", 7).unwrap(), 1);
        assert_eq!(rustix::process::getpriority_process(Some(tid)).unwrap(), 7);
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), own);
        done_tx.send(()).unwrap();
        worker.join().unwrap();
    }
}
