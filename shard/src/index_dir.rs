//! `NrtDirectory`: the tantivy directory of a shard's index, where new segments live in memory
//! until they are persisted.
//!
//! A commit makes entries searchable (every `--index-commit-interval-ms`); with sixteen shards
//! (the default when this was written) that is thirty-two new segments a second, each eight-odd
//! files, most of them merged away within seconds. On disk that churn cost more CPU than indexing itself (file creation in the
//! kernel, fsyncs, merges reading and writing files). Here a commit writes its segment and
//! `meta.json` to memory; [`NrtDirectory::persist`] (run by the shard every
//! `--index-persist-interval-ms`, past `--index-ram-bytes-max`, and at shutdown) writes the
//! files of the last commit's segments that are still only in memory, then that commit's
//! `meta.json`, to disk. Segments merged away before a persist never reach the disk.
//!
//! Durability does not depend on tantivy: the shard's index queue keeps the RocksDB keys of
//! every applied entry above the last *persisted* commit, and a restart indexes them again. So a
//! crash loses only work, never entries (Elasticsearch's refresh and flush, with RocksDB as the
//! translog).
//!
//! Deletions: a file tantivy deletes while it is only in memory goes at once. A file already on
//! disk may still be named by the `meta.json` on disk, so it is hidden from tantivy and unlinked
//! at the next persist, once the new `meta.json` no longer names it. While a persist copies a
//! commit's files, deleting those files is deferred until it ends.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, RamDirectory,
    TerminatingWrite, WatchCallback, WatchHandle, WritePtr,
};
use tantivy::Index;

/// The name of tantivy's commit file.
const META: &str = "meta.json";
/// The name of tantivy's list of the files it manages.
const MANAGED: &str = ".managed.json";

/// See the module documentation.
#[derive(Clone)]
pub struct NrtDirectory {
    inner: Arc<Inner>,
}

struct Inner {
    ram: RamDirectory,
    disk: MmapDirectory,
    /// A file growing past this many bytes goes to disk instead (large merges).
    spill_bytes: usize,
    state: Mutex<State>,
    /// Held for the whole of a persist: one at a time.
    persisting: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The files of the commit being persisted: deleting one waits for the persist to end.
    pinned: HashSet<PathBuf>,
    /// Deletions asked for while their file was pinned.
    deferred: Vec<PathBuf>,
    /// On disk, deleted by tantivy, maybe still named by the `meta.json` on disk: hidden, and
    /// unlinked by the next persist that no longer names them.
    doomed: HashSet<PathBuf>,
    /// The `meta.json` bytes of the last persist: the same again means nothing to do.
    last_meta: Vec<u8>,
}

impl std::fmt::Debug for NrtDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NrtDirectory")
    }
}

/// What a persist wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The payload of the commit now on disk (None: nothing was committed since the last one).
    pub payload: Option<String>,
    /// Files written to disk.
    pub files: usize,
    /// Bytes written to disk.
    pub bytes: u64,
}

impl NrtDirectory {
    /// Opens the directory over `dir` on disk; a file written past `spill_bytes` (the output of
    /// a large merge) is written to disk as it grows instead of held in memory.
    pub fn open(dir: &Path, spill_bytes: usize) -> tantivy::Result<NrtDirectory> {
        Ok(NrtDirectory {
            inner: Arc::new(Inner {
                ram: RamDirectory::create(),
                disk: MmapDirectory::open(dir)?,
                spill_bytes,
                state: Mutex::new(State::default()),
                persisting: Mutex::new(()),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is sets of paths, consistent after any panic between statements.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of segment files held only in memory.
    pub fn ram_bytes(&self) -> usize {
        self.inner.ram.total_mem_usage()
    }

    /// Writes the last commit of `index` (which must be opened on this directory) to disk: the
    /// files of its segments that are only in memory, then its `meta.json`; unlinks the files
    /// tantivy deleted that the new `meta.json` no longer names. After it returns, a restart
    /// opens that commit.
    pub fn persist(&self, index: &Index) -> tantivy::Result<Persisted> {
        let _one = self
            .inner
            .persisting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Ok(meta_now) = self.inner.ram.atomic_read(Path::new(META)) else {
            return Ok(Persisted::default());
        };
        // The commit and the files it names, taken together: no deletion can come between.
        let (meta, copies) = {
            let mut state = self.state();
            if state.last_meta == meta_now {
                return Ok(Persisted::default());
            }
            let meta = index.load_metas()?;
            let files = meta.list_segment_files();
            let mut copies = Vec::new();
            for path in &files {
                if let Ok(slice) = self.inner.ram.open_read(path) {
                    copies.push((path.clone(), slice));
                }
            }
            state.pinned = files;
            (meta, copies)
        };
        let result = self.write(&meta, &copies);
        let mut state = self.state();
        let pinned = std::mem::take(&mut state.pinned);
        let deferred = std::mem::take(&mut state.deferred);
        let persisted = match result {
            Ok(p) => {
                state.last_meta = meta_now;
                p
            }
            Err(e) => {
                // Nothing changed on disk that a restart reads: the deferred deletions happen
                // as they would have.
                for path in deferred {
                    if self.inner.ram.exists(&path).unwrap_or(false) {
                        let _ = self.inner.ram.delete(&path);
                    } else {
                        state.doomed.insert(path);
                    }
                }
                return Err(e);
            }
        };
        for (path, _) in &copies {
            // On disk now; later opens read it there. A path hidden before (a copied commit
            // can name a segment this directory deleted earlier) is named by the new
            // meta.json: visible again.
            let _ = self.inner.ram.delete(path);
            state.doomed.remove(path);
        }
        for path in deferred {
            // Named by the meta.json just written: unlinked by a later persist.
            state.doomed.insert(path);
        }
        let unlink: Vec<PathBuf> = state
            .doomed
            .iter()
            .filter(|p| !pinned.contains(*p))
            .cloned()
            .collect();
        for path in unlink {
            state.doomed.remove(&path);
            match self.inner.disk.delete(&path) {
                Ok(()) | Err(DeleteError::FileDoesNotExist(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "index file not removed after persist");
                }
            }
        }
        Ok(persisted)
    }

    fn write(
        &self,
        meta: &tantivy::IndexMeta,
        copies: &[(PathBuf, tantivy::directory::FileSlice)],
    ) -> tantivy::Result<Persisted> {
        let disk = &self.inner.disk;
        let mut bytes = 0u64;
        for (path, slice) in copies {
            let data = slice.read_bytes()?;
            if disk.exists(path)? {
                // Written by a persist that failed after this file, or deleted and named again
                // (a commit copied from another replica can name a segment this directory
                // deleted): a segment file's name means its bytes, so one of the same length
                // is this file, and rewriting it would open a window where the meta.json on
                // disk names a missing file.
                let here = disk.open_read(path).map(|f| tantivy::HasLen::len(&f)).ok();
                if here == Some(data.len()) && !path.to_string_lossy().ends_with(".del") {
                    continue;
                }
                disk.delete(path)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            let mut out = disk.open_write(path)?;
            out.write_all(data.as_slice())?;
            out.terminate()?;
            bytes += data.len() as u64;
        }
        disk.sync_directory()?;
        let mut meta_json = serde_json::to_vec_pretty(meta)?;
        meta_json.push(b'\n');
        disk.atomic_write(Path::new(META), &meta_json)?;
        if let Ok(managed) = self.inner.ram.atomic_read(Path::new(MANAGED)) {
            disk.atomic_write(Path::new(MANAGED), &managed)?;
        }
        disk.sync_directory()?;
        Ok(Persisted {
            payload: meta.payload.clone(),
            files: copies.len(),
            bytes,
        })
    }

    fn on_disk(&self, path: &Path) -> Result<bool, OpenReadError> {
        Ok(!self.state().doomed.contains(path) && self.inner.disk.exists(path)?)
    }
}

impl Directory for NrtDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        match self.inner.ram.get_file_handle(path) {
            Err(OpenReadError::FileDoesNotExist(_)) if !self.state().doomed.contains(path) => {
                self.inner.disk.get_file_handle(path)
            }
            other => other,
        }
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        let mut state = self.state();
        if state.pinned.contains(path) {
            state.deferred.push(path.to_path_buf());
            return Ok(());
        }
        if self.inner.ram.exists(path).unwrap_or(false) {
            return self.inner.ram.delete(path);
        }
        if !state.doomed.contains(path) && self.inner.disk.exists(path).unwrap_or(false) {
            state.doomed.insert(path.to_path_buf());
            return Ok(());
        }
        Err(DeleteError::FileDoesNotExist(path.to_path_buf()))
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        Ok(self.inner.ram.exists(path)? || self.on_disk(path)?)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        if self.on_disk(path).unwrap_or(false) {
            return Err(OpenWriteError::FileAlreadyExists(path.to_path_buf()));
        }
        // Claims the name in memory (exclusive create); written there only at the end.
        let ram = self.inner.ram.open_write(path)?;
        // A hidden file of this name is still on disk, maybe named by the meta.json there
        // (a copied commit names a segment deleted here before): written in memory only, and
        // the persist that names it keeps the bytes on disk, which are the same.
        let may_spill = !self.state().doomed.contains(path);
        Ok(std::io::BufWriter::new(Box::new(SpillWriter {
            dir: self.clone(),
            path: path.to_path_buf(),
            buf: Vec::new(),
            ram: Some(ram),
            disk: None,
            may_spill,
        })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        match self.inner.ram.atomic_read(path) {
            Err(OpenReadError::FileDoesNotExist(_)) => self.inner.disk.atomic_read(path),
            other => other,
        }
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        self.inner.ram.atomic_write(path, data)
    }

    fn sync_directory(&self) -> std::io::Result<()> {
        // Durability is `persist`'s business (see the module documentation).
        Ok(())
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.ram.watch(watch_callback)
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        // In memory only: indexes written before this directory existed keep tantivy's lock
        // files on disk (a memory-mapped directory never deletes them), which would read as
        // held. Two processes never share a shard's index: RocksDB's own lock on the data
        // directory is taken first.
        self.inner.ram.acquire_lock(lock)
    }
}

/// A file being written: buffered, then moved into memory when terminated; or, once it grows
/// past the spill bound, written to disk from then on (it is then an ordinary disk file, which
/// the next persist finds already there).
struct SpillWriter {
    dir: NrtDirectory,
    path: PathBuf,
    buf: Vec<u8>,
    /// The name claimed in memory; dropped unwritten when the file spills.
    ram: Option<WritePtr>,
    disk: Option<WritePtr>,
    /// False when a hidden file of the same name is on disk.
    may_spill: bool,
}

impl Write for SpillWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(disk) = &mut self.disk {
            return disk.write(data);
        }
        self.buf.extend_from_slice(data);
        if self.may_spill && self.buf.len() > self.dir.inner.spill_bytes {
            let mut disk = self
                .dir
                .inner
                .disk
                .open_write(&self.path)
                .map_err(std::io::Error::other)?;
            disk.write_all(&self.buf)?;
            self.buf = Vec::new();
            self.disk = Some(disk);
            self.ram = None;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TerminatingWrite for SpillWriter {
    fn terminate_ref(&mut self, _: AntiCallToken) -> std::io::Result<()> {
        if let Some(disk) = self.disk.take() {
            return disk.terminate();
        }
        let Some(mut ram) = self.ram.take() else {
            return Ok(());
        };
        ram.write_all(&std::mem::take(&mut self.buf))?;
        ram.terminate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::indexer::NoMergePolicy;
    use tantivy::schema::{Schema, STORED, TEXT};
    use tantivy::{doc, IndexWriter, TantivyDocument};

    fn schema() -> (Schema, tantivy::schema::Field) {
        let mut b = Schema::builder();
        let body = b.add_text_field("body", TEXT | STORED);
        (b.build(), body)
    }

    fn disk_files(dir: &Path) -> HashSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n != META)
            .collect()
    }

    fn commit(writer: &mut IndexWriter, body: tantivy::schema::Field, n: usize, payload: &str) {
        for i in 0..n {
            writer
                .add_document(doc!(body => format!("entry {i} of commit {payload}")))
                .unwrap();
        }
        let mut prepared = writer.prepare_commit().unwrap();
        prepared.set_payload(payload);
        prepared.commit().unwrap();
    }

    /// A new index in memory over a temporary directory, with a writer that never merges on
    /// its own.
    fn unmerged() -> (
        tempfile::TempDir,
        tantivy::schema::Field,
        NrtDirectory,
        Index,
        IndexWriter,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (schema, body) = schema();
        let dir = NrtDirectory::open(tmp.path(), 1 << 20).unwrap();
        let index = Index::create(dir.clone(), schema, Default::default()).unwrap();
        let writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        writer.set_merge_policy(Box::new(NoMergePolicy));
        (tmp, body, dir, index, writer)
    }

    /// What a restart (or a crash) sees: a fresh directory over the same path.
    fn reopen(path: &Path) -> (u64, Option<String>) {
        let index = Index::open(NrtDirectory::open(path, 1 << 20).unwrap()).unwrap();
        let docs = index.reader().unwrap().searcher().num_docs();
        (docs, index.load_metas().unwrap().payload)
    }

    #[test]
    fn commits_reach_the_disk_only_when_persisted_and_merged_away_files_go_after_the_next() {
        let (tmp, body, dir, index, mut writer) = unmerged();
        assert_eq!(dir.persist(&index).unwrap().payload, None, "empty index");
        assert!(
            tmp.path().join(META).try_exists().unwrap(),
            "the new index is on disk"
        );

        commit(&mut writer, body, 10, "1");
        commit(&mut writer, body, 20, "2");
        assert!(disk_files(tmp.path()).is_empty(), "commits stay in memory");
        assert!(dir.ram_bytes() > 0);
        assert_eq!(
            reopen(tmp.path()),
            (0, None),
            "a crash now loses both commits"
        );

        let done = dir.persist(&index).unwrap();
        assert_eq!(done.payload.as_deref(), Some("2"));
        assert!(done.files > 0 && done.bytes > 0);
        let two_segments = disk_files(tmp.path());
        assert_eq!(reopen(tmp.path()), (30, Some("2".into())));
        assert_eq!(
            dir.persist(&index).unwrap(),
            Persisted::default(),
            "nothing new: nothing written"
        );

        // Merge the two persisted segments: tantivy deletes their files, but the meta.json on
        // disk still names them, so they stay on disk (hidden) until the next persist.
        let ids = index.searchable_segment_ids().unwrap();
        writer.merge(&ids).wait().unwrap();
        commit(&mut writer, body, 5, "3");
        assert!(two_segments.is_subset(&disk_files(tmp.path())));
        assert_eq!(
            reopen(tmp.path()),
            (30, Some("2".into())),
            "crash view: commit 2"
        );
        for name in &two_segments {
            assert!(!dir.exists(Path::new(name)).unwrap(), "hidden from tantivy");
        }

        dir.persist(&index).unwrap();
        let now = disk_files(tmp.path());
        assert!(
            two_segments.is_disjoint(&now),
            "the merged-away files are unlinked once the new meta.json no longer names them"
        );
        assert_eq!(reopen(tmp.path()), (35, Some("3".into())));
        let reader = index.reader().unwrap();
        assert_eq!(reader.searcher().num_docs(), 35);
    }

    /// Indexes written by a memory-mapped directory (Veil before format 5) keep tantivy's lock
    /// files on disk; they open here with a writer, and their segments are read from disk.
    #[test]
    fn an_index_written_straight_to_disk_opens_with_a_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let (schema, body) = schema();
        {
            let disk = MmapDirectory::open(tmp.path()).unwrap();
            let index = Index::create(disk, schema, Default::default()).unwrap();
            let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
            commit(&mut writer, body, 7, "1");
            let _reader = index.reader().unwrap();
        }
        assert!(tmp
            .path()
            .join(".tantivy-writer.lock")
            .try_exists()
            .unwrap());
        let dir = NrtDirectory::open(tmp.path(), 1 << 20).unwrap();
        let index = Index::open(dir.clone()).unwrap();
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        commit(&mut writer, body, 3, "2");
        dir.persist(&index).unwrap();
        assert_eq!(reopen(tmp.path()), (10, Some("2".into())));
    }

    #[test]
    fn segments_merged_in_memory_never_reach_the_disk() {
        let (tmp, body, dir, index, mut writer) = unmerged();
        for c in 0..4 {
            commit(&mut writer, body, 10, &c.to_string());
        }
        let ids = index.searchable_segment_ids().unwrap();
        let merged = writer.merge(&ids).wait().unwrap().unwrap();
        commit(&mut writer, body, 0, "4");
        dir.persist(&index).unwrap();
        let ext = |n: &String| n.split('.').next().unwrap().to_string();
        let on_disk: HashSet<String> = disk_files(tmp.path()).iter().map(ext).collect();
        assert_eq!(
            on_disk,
            [merged.id().uuid_string()].into_iter().collect(),
            "only the merged segment was written"
        );
        assert_eq!(reopen(tmp.path()), (40, Some("4".into())));
    }

    #[test]
    fn a_file_past_the_spill_bound_is_written_to_disk_as_it_grows() {
        let tmp = tempfile::tempdir().unwrap();
        let (schema, body) = schema();
        let dir = NrtDirectory::open(tmp.path(), 4 << 10).unwrap();
        let index = Index::create(dir.clone(), schema, Default::default()).unwrap();
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for i in 0..2000 {
            let text: String = (0..20).map(|j| format!("w{}x{} ", i, j)).collect();
            writer.add_document(doc!(body => text)).unwrap();
        }
        let mut prepared = writer.prepare_commit().unwrap();
        prepared.set_payload("1");
        prepared.commit().unwrap();
        assert!(
            !disk_files(tmp.path()).is_empty(),
            "the large files went to disk without a persist"
        );
        let searcher = index.reader().unwrap().searcher();
        let query = tantivy::query::TermQuery::new(
            tantivy::Term::from_field_text(body, "w1999x19"),
            tantivy::schema::IndexRecordOption::Basic,
        );
        let hits = searcher
            .search(
                &query,
                &tantivy::collector::TopDocs::with_limit(1).order_by_score(),
            )
            .unwrap();
        let doc: TantivyDocument = searcher.doc(hits[0].1).unwrap();
        assert_eq!(hits.len(), 1);
        assert!(
            tantivy::schema::document::Document::to_json(&doc, &index.schema())
                .contains("w1999x19 ")
        );
        dir.persist(&index).unwrap();
        assert_eq!(reopen(tmp.path()), (2000, Some("1".into())));
    }

    /// A commit copied from another replica can name a segment this directory deleted while
    /// it was on disk (hidden until a persist unlinks it): written again, it must stay visible
    /// once the persist that names it has run, and on disk after a restart.
    #[test]
    fn a_deleted_segment_named_again_is_visible_after_the_persist_that_names_it() {
        let (tmp, body, dir, index, mut writer) = unmerged();
        commit(&mut writer, body, 10, "1");
        let first = dir.atomic_read(Path::new(META)).unwrap();
        let saved: Vec<(PathBuf, Vec<u8>)> = index
            .load_metas()
            .unwrap()
            .list_segment_files()
            .into_iter()
            .filter(|p| dir.exists(p).unwrap())
            .map(|p| {
                let bytes = dir.open_read(&p).unwrap().read_bytes().unwrap().to_vec();
                (p, bytes)
            })
            .collect();
        assert!(!saved.is_empty());
        commit(&mut writer, body, 5, "2");
        dir.persist(&index).unwrap();
        drop(writer);
        // The first segment goes (as after a merge), while the meta.json on disk names it.
        for (path, _) in &saved {
            dir.delete(path).unwrap();
            assert!(!dir.exists(path).unwrap(), "hidden once deleted");
        }
        // A copy names it again: its files are written again, then its meta.json.
        for (path, bytes) in &saved {
            let mut out = dir.open_write(path).unwrap();
            out.write_all(bytes).unwrap();
            out.terminate().unwrap();
        }
        dir.atomic_write(Path::new(META), &first).unwrap();
        assert_eq!(dir.persist(&index).unwrap().payload.as_deref(), Some("1"));
        for (path, bytes) in &saved {
            assert!(dir.exists(path).unwrap(), "{} hidden", path.display());
            let here = dir.open_read(path).unwrap().read_bytes().unwrap();
            assert_eq!(here.as_slice(), bytes.as_slice());
        }
        let reader = index.reader().unwrap();
        reader.reload().unwrap();
        assert_eq!(reader.searcher().num_docs(), 10);
        assert_eq!(reopen(tmp.path()), (10, Some("1".into())));
    }
}
