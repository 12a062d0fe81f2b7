//! Copying a shard's index commits from the replica that writes them to the ones that do not
//! (OpenSearch's segment replication, with the shard's Raft log as the translog).
//!
//! A tantivy commit is a `meta.json` naming immutable segment files: every file name holds its
//! segment's random id, so a name means the same bytes on every replica that holds it (the one
//! exception, a segment's delete file, is named by the writer's opstamp and is always copied;
//! shards never delete documents today). The leader's commit is copied by listing its files
//! ([`ShardIndex::copy_of_commit`], which carries the bytes of the files the asker lacks, up to a
//! bound, and [`ShardIndex::read_copied_file`] for the rest), writing the missing ones
//! ([`CopiedFileWrite`]), and then the `meta.json` ([`ShardIndex::install_copy`]), which makes the
//! commit this replica's and deletes the files no commit of it names any more.
//!
//! A copied commit is as good as one written here: it holds the documents of the entries applied
//! up to the Raft index in its payload, all committed entries. It is installed only once this
//! replica has applied that far itself, so every hit's entry is in its RocksDB. What the
//! replica applied above the commit stays in the shard's index queue, and indexing resumes from
//! the commit when this replica becomes the leader ([`ShardIndex::start_indexing`]).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tantivy::directory::error::OpenReadError;
use tantivy::directory::{Directory, ManagedDirectory, TerminatingWrite, WritePtr};
use tantivy::HasLen;

use super::ShardIndex;
use crate::{Error, Result};

/// tantivy's commit file.
const META: &str = "meta.json";
/// tantivy's list of the files it manages.
const MANAGED: &str = ".managed.json";

/// One commit of a shard's index, as the replica that wrote it hands it to another.
#[derive(Clone, Serialize, Deserialize)]
pub struct IndexCopy {
    /// The Raft index the commit covers (every entry applied up to it is in it).
    pub raft_index: u64,
    /// The commit's `meta.json`.
    pub meta_json: Vec<u8>,
    /// Every file of the commit's segments.
    pub files: Vec<CopiedFile>,
}

/// A file of an [`IndexCopy`].
#[derive(Clone, Serialize, Deserialize)]
pub struct CopiedFile {
    /// The file's name in the index directory.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its bytes, when the asker lacked it and they fitted the answer; otherwise the asker
    /// reads it with [`ShardIndex::read_copied_file`] (or already holds it).
    pub bytes: Option<Vec<u8>>,
}

impl std::fmt::Debug for IndexCopy {
    // Index files hold (masked) entry contents: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCopy")
            .field("raft_index", &self.raft_index)
            .field("files", &self.files)
            .finish()
    }
}

impl std::fmt::Debug for CopiedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopiedFile")
            .field("name", &self.name)
            .field("len", &self.len)
            .field("carried", &self.bytes.is_some())
            .finish()
    }
}

/// A delete file: named by the opstamp of the writer that wrote it, so the same name may
/// hold other bytes on another replica.
fn is_delete_file(name: &str) -> bool {
    name.ends_with(".del")
}

/// A file name a peer may name: a segment file's (`<uuid>.<ext>`, `<uuid>.<opstamp>.del`),
/// never a path, a hidden file or the commit itself.
fn check_name(shard_id: crate::ShardId, name: &str) -> Result<&Path> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name != META
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    if !plain {
        return Err(Error::IndexCopy {
            shard_id,
            reason: format!("{name:?} is not an index segment file name"),
        });
    }
    Ok(Path::new(name))
}

/// A copied file being written into this replica's index directory. Dropped before
/// [`CopiedFileWrite::finish`], it deletes what it wrote: no partial file stays under a name
/// that says the whole file is here.
pub struct CopiedFileWrite {
    dir: ManagedDirectory,
    path: PathBuf,
    out: Option<WritePtr>,
    written: u64,
}

impl CopiedFileWrite {
    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("written after finish");
        out.write_all(bytes)
            .map_err(|e| Error::io(format!("write copied {}", self.path.display()), e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Completes the file.
    pub fn finish(mut self) -> Result<()> {
        let out = self.out.take().expect("finished once");
        out.terminate()
            .map_err(|e| Error::io(format!("finish copied {}", self.path.display()), e))
    }
}

impl Drop for CopiedFileWrite {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            drop(out);
            let _ = self.dir.delete(&self.path);
        }
    }
}

impl ShardIndex {
    /// The last commit, listing its files; the bytes of those not in `held` (by name and
    /// length) are carried while they fit in `carry_bytes_max` in all.
    pub fn copy_of_commit(
        &self,
        held: &[(String, u64)],
        carry_bytes_max: u64,
    ) -> Result<IndexCopy> {
        let meta = self.index.load_metas()?;
        let raft_index = self.payload_index(meta.payload.as_deref())?;
        let meta_json = serde_json::to_vec(&meta).map_err(|e| Error::IndexCopy {
            shard_id: self.shard_id,
            reason: format!("encode meta.json: {e}"),
        })?;
        let held: HashMap<&str, u64> = held.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        let dir = self.index.directory();
        let mut names: Vec<PathBuf> = meta.list_segment_files().into_iter().collect();
        names.sort();
        let mut budget = carry_bytes_max;
        let mut files = Vec::with_capacity(names.len());
        for path in names {
            let name = path.to_string_lossy().into_owned();
            let slice = match dir.open_read(&path) {
                Ok(slice) => slice,
                // Candidates that exist only sometimes: a segment's delete file when it has
                // deletes, its temporary store while it is being written.
                Err(OpenReadError::FileDoesNotExist(_))
                    if is_delete_file(&name) || name.ends_with(".temp") =>
                {
                    continue
                }
                Err(OpenReadError::FileDoesNotExist(_)) => {
                    return Err(Error::IndexCopy {
                        shard_id: self.shard_id,
                        reason: format!("{name} went with a newer commit"),
                    })
                }
                Err(e) => return Err(tantivy::TantivyError::from(e).into()),
            };
            let len = slice.len() as u64;
            let lacking = is_delete_file(&name) || held.get(name.as_str()) != Some(&len);
            let bytes = match lacking && len <= budget {
                true => {
                    budget -= len;
                    let data = slice
                        .read_bytes()
                        .map_err(|e| Error::io(format!("read index file {name}"), e))?;
                    Some(data.as_slice().to_vec())
                }
                false => None,
            };
            files.push(CopiedFile { name, len, bytes });
        }
        Ok(IndexCopy {
            raft_index,
            meta_json,
            files,
        })
    }

    /// Up to `len` bytes of the index file `name` from `offset`, or None when the file is gone
    /// (merged away since it was listed).
    pub fn read_copied_file(&self, name: &str, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let path = check_name(self.shard_id, name)?;
        let slice = match self.index.directory().open_read(path) {
            Ok(slice) => slice,
            Err(OpenReadError::FileDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(tantivy::TantivyError::from(e).into()),
        };
        let start = (offset as usize).min(slice.len());
        let end = start.saturating_add(len as usize).min(slice.len());
        let data = slice
            .read_bytes_slice(start..end)
            .map_err(|e| Error::io(format!("read index file {name}"), e))?;
        Ok(Some(data.as_slice().to_vec()))
    }

    /// The segment files this replica holds, by name and length: what a copy need not carry.
    pub fn held_files(&self) -> Vec<(String, u64)> {
        let dir = self.index.directory();
        let mut held: Vec<(String, u64)> = dir
            .list_managed_files()
            .into_iter()
            .filter_map(|path| {
                let name = path.to_str()?.to_string();
                check_name(self.shard_id, &name).ok()?;
                let len = dir.open_read(&path).ok()?.len() as u64;
                Some((name, len))
            })
            .collect();
        held.sort();
        held
    }

    /// True when this replica holds `file` whole (its name with its length).
    pub fn holds_file(&self, file: &CopiedFile) -> bool {
        !is_delete_file(&file.name)
            && check_name(self.shard_id, &file.name)
                .ok()
                .and_then(|path| self.index.directory().open_read(path).ok())
                .is_some_and(|slice| slice.len() as u64 == file.len)
    }

    /// Starts writing the copied file `name`, replacing a file of that name this replica
    /// holds (a leftover of another length, or a delete file).
    pub fn write_copied_file(&self, name: &str) -> Result<CopiedFileWrite> {
        let path = check_name(self.shard_id, name)?;
        let dir = self.index.directory().clone();
        if dir.exists(path).unwrap_or(false) {
            dir.delete(path)
                .map_err(|e| Error::io(format!("replace {name}"), std::io::Error::other(e)))?;
        }
        let out = dir.open_write(path).map_err(|e| {
            Error::io(
                format!("create copied index file {name}"),
                std::io::Error::other(e),
            )
        })?;
        Ok(CopiedFileWrite {
            dir,
            path: path.to_path_buf(),
            out: Some(out),
            written: 0,
        })
    }

    /// Makes `copy` this replica's commit: every file it lists must be here whole (carried,
    /// written with [`Self::write_copied_file`], or held already). The caller has applied up to
    /// `copy.raft_index`. Returns false, changing nothing, when this replica indexes itself or
    /// already has a commit that far.
    pub fn install_copy(&self, copy: &IndexCopy) -> Result<bool> {
        let mut state = self.lock();
        if state.writer.is_some() || copy.raft_index <= state.committed_up_to {
            return Ok(false);
        }
        let payload = serde_json::from_slice::<serde_json::Value>(&copy.meta_json)
            .ok()
            .and_then(|m| m.get("payload")?.as_str().map(str::to_string));
        if self.payload_index(payload.as_deref())? != copy.raft_index {
            return Err(Error::IndexCopy {
                shard_id: self.shard_id,
                reason: "the copied meta.json covers another Raft index than its copy says".into(),
            });
        }
        let mut living: HashSet<PathBuf> = HashSet::with_capacity(copy.files.len() + 2);
        for file in &copy.files {
            let path = check_name(self.shard_id, &file.name)?;
            let here = self
                .index
                .directory()
                .open_read(path)
                .map(|s| s.len() as u64)
                .ok();
            if here != Some(file.len) {
                return Err(Error::IndexCopy {
                    shard_id: self.shard_id,
                    reason: format!(
                        "{} is not here whole ({here:?} of {} bytes)",
                        file.name, file.len
                    ),
                });
            }
            living.insert(path.to_path_buf());
        }
        self.index
            .directory()
            .atomic_write(Path::new(META), &copy.meta_json)
            .map_err(|e| Error::io("write copied meta.json", e))?;
        self.reader.reload()?;
        state.committed_up_to = copy.raft_index;
        state.added_up_to = copy.raft_index;
        drop(state);
        self.columns.keep_only(&self.reader.searcher());
        living.insert(PathBuf::from(META));
        living.insert(PathBuf::from(MANAGED));
        let mut dir = self.index.directory().clone();
        dir.garbage_collect(|| living)?;
        Ok(true)
    }

    /// The Raft index a commit's payload records (0 for an index never committed to).
    pub(super) fn payload_index(&self, payload: Option<&str>) -> Result<u64> {
        match payload {
            None => Ok(0),
            Some(p) => p.parse::<u64>().map_err(|_| Error::Corrupt {
                shard_id: self.shard_id,
                reason: "index commit payload is not a Raft index".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{entry, total};
    use super::*;
    use crate::entry::StoredEntry;
    use crate::{PersistPolicy, ShardId};

    fn open(dir: &Path) -> ShardIndex {
        ShardIndex::open(ShardId(3), dir, 15 << 20, PersistPolicy::default()).unwrap()
    }

    /// Indexes entries `from..to` as applied at Raft index `to` and commits.
    fn index_and_commit(index: &ShardIndex, from: u64, to: u64) {
        let entries: Vec<StoredEntry> = (from..to).map(entry).collect();
        index.add(to, &entries.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(index.commit().unwrap(), Some(to));
    }

    /// Copies `from`'s last commit into `to` as the node does: the files `to` lacks, carried
    /// up to `carry` bytes and read in `chunk`-byte pieces beyond. Returns the bytes moved.
    fn copy(from: &ShardIndex, to: &ShardIndex, carry: u64, chunk: u64) -> (bool, u64) {
        let copy = from.copy_of_commit(&to.held_files(), carry).unwrap();
        let mut moved = 0;
        for file in &copy.files {
            if let Some(bytes) = &file.bytes {
                let mut w = to.write_copied_file(&file.name).unwrap();
                w.write(bytes).unwrap();
                w.finish().unwrap();
                moved += file.len;
            } else if !to.holds_file(file) {
                let mut w = to.write_copied_file(&file.name).unwrap();
                while w.written() < file.len {
                    let piece = from
                        .read_copied_file(&file.name, w.written(), chunk)
                        .unwrap()
                        .expect("not merged away");
                    assert!(!piece.is_empty());
                    w.write(&piece).unwrap();
                }
                w.finish().unwrap();
                moved += file.len;
            }
        }
        (to.install_copy(&copy).unwrap(), moved)
    }

    #[test]
    fn a_copied_commit_answers_as_the_original_and_later_copies_move_only_new_files() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, follower) = (open(a_dir.path()), open(b_dir.path()));
        follower.set_indexing(false);
        follower.close_writer();
        index_and_commit(&leader, 0, 300);
        assert!(
            !leader
                .install_copy(&leader.copy_of_commit(&[], 0).unwrap())
                .unwrap(),
            "an indexing replica does not take copies"
        );

        let (installed, first) = copy(&leader, &follower, u64::MAX, 1 << 20);
        assert!(installed);
        assert_eq!(follower.committed_up_to(), 300);
        for text in ["payment", "42", "payment AND 7", "nothing"] {
            assert_eq!(total(&follower, text), total(&leader, text), "{text}");
        }
        assert_eq!(total(&follower, "payment"), 300);

        // The next commit adds a segment: only its files travel, here in 100-byte chunks.
        index_and_commit(&leader, 300, 450);
        let (installed, second) = copy(&leader, &follower, 0, 100);
        assert!(installed);
        assert!(
            second > 0 && second < first + second / 2,
            "{first} then {second}"
        );
        assert_eq!(total(&follower, "payment"), 450);
        // The same commit again changes nothing.
        assert!(!copy(&leader, &follower, u64::MAX, 1 << 20).0);

        // A merge replaces both segments; the follower takes the merged one and lets the
        // others go.
        assert_eq!(leader.merge_segments().unwrap(), 2);
        index_and_commit(&leader, 450, 451);
        let before = follower.held_files();
        assert!(copy(&leader, &follower, u64::MAX, 1 << 20).0);
        let after = follower.held_files();
        assert!(
            after.iter().all(|f| leader.held_files().contains(f)),
            "the follower holds only files of the leader's commit: {after:?}"
        );
        assert!(
            before.iter().any(|f| !after.contains(f)),
            "old segments went"
        );
        assert_eq!(total(&follower, "449"), total(&leader, "449"));
        assert_eq!(total(&follower, "449"), 1);
        assert_eq!(
            follower.persist().unwrap(),
            Some(451),
            "a copy persists as its own"
        );

        // The follower becomes the leader: it indexes from the copied commit on.
        follower.open_writer().unwrap();
        follower.set_indexing(true);
        index_and_commit(&follower, 451, 500);
        assert_eq!(total(&follower, "payment"), 500);
        drop(follower);
        let reopened = open(b_dir.path());
        assert_eq!(
            reopened.committed_up_to(),
            451,
            "restart finds the persisted copy"
        );
        assert_eq!(total(&reopened, "payment"), 451);
    }

    #[test]
    fn peers_cannot_name_paths_outside_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        for name in ["../x.idx", "meta.json", ".managed.json", "a/b", ""] {
            assert!(index.read_copied_file(name, 0, 10).is_err(), "{name}");
            assert!(index.write_copied_file(name).is_err(), "{name}");
        }
    }
}
