//! A [`Backend`] over redb 4, a copy-on-write B-tree in one file.
//!
//! The database is the file `hanmadi.redb` inside the directory given to
//! [`RedbBackend::open`], with one table, `kv`. A batch is one redb write
//! transaction, so it is all or nothing both on disk and to readers. With
//! `sync` it commits with [`Durability::Immediate`] (one `fdatasync`);
//! without, with [`Durability::None`]: readers see it at once and the next
//! durable commit makes it durable along with its own writes, but a crash
//! before then loses it. redb documents mixing the two as safe; the one cost
//! is that pages a non-durable commit frees are reused only after a durable
//! commit, so a long run of non-durable commits grows the file.
//!
//! `ClearRange` is native (`retain_in`); writes apply in batch order, as redb
//! itself orders them within a transaction.

use std::path::Path;
use std::sync::Arc;

use ::redb::{Builder, Database, Durability, ReadOnlyTable, ReadableDatabase, TableDefinition};
use bytes::Bytes;

use crate::backend::{Backend, Snapshot, Write};
use crate::kv::{KeyValue, KvError};

/// The one table every key lives in.
const TABLE: TableDefinition<'static, &'static [u8], &'static [u8]> = TableDefinition::new("kv");

/// The database file inside the backend's directory.
const FILE_NAME: &str = "hanmadi.redb";

/// Tuning of a [`RedbBackend`]. [`RedbOptions::default`] suits the chat
/// workload; see `docs/STORAGE.md` for the measurements behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedbOptions {
    /// Page cache, in bytes. redb reads and writes every page through it,
    /// and a write transaction's dirty pages live there until commit, so it
    /// bounds both read hits and how much a large batch can touch before it
    /// spills. redb's own default is 1 GiB.
    pub cache_size: usize,
    /// Save the allocator state and commit in two phases on every durable
    /// commit, so that opening after a crash is instant instead of a walk of
    /// the whole file. Costs a second fsync per commit.
    pub quick_repair: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            cache_size: 1024 * 1024 * 1024,
            quick_repair: false,
        }
    }
}

/// An ordered map on disk, in a redb database.
#[derive(Debug)]
pub struct RedbBackend {
    db: Database,
    quick_repair: bool,
}

impl RedbBackend {
    /// Opens the database in directory `path`, creating the directory, the
    /// file and the table if needed. A file left by a crash is repaired
    /// first (a walk of the whole file unless it was written with
    /// [`RedbOptions::quick_repair`]).
    ///
    /// # Errors
    ///
    /// [`KvError::Engine`] when the directory cannot be created, or redb
    /// cannot open, repair or initialize the file (for instance because
    /// another process has it open).
    pub fn open(path: &Path, options: RedbOptions) -> Result<Self, KvError> {
        std::fs::create_dir_all(path).map_err(KvError::engine)?;
        let db = Builder::new()
            .set_cache_size(options.cache_size)
            .create(path.join(FILE_NAME))
            .map_err(KvError::engine)?;
        // Snapshots open the table, which must exist by then.
        let txn = db.begin_write().map_err(KvError::engine)?;
        txn.open_table(TABLE).map_err(KvError::engine)?;
        txn.commit().map_err(KvError::engine)?;
        Ok(Self {
            db,
            quick_repair: options.quick_repair,
        })
    }
}

impl Backend for RedbBackend {
    type Snapshot = RedbSnapshot;

    /// A redb read transaction with the table open. redb can fail to start
    /// one (an I/O error); the snapshot then carries the error and returns
    /// it from every read.
    fn snapshot(&self) -> RedbSnapshot {
        let table = self
            .db
            .begin_read()
            .map_err(::redb::Error::from)
            .and_then(|txn| txn.open_table(TABLE).map_err(::redb::Error::from))
            .map_err(|e| SnapshotError(Arc::new(e)));
        RedbSnapshot { table }
    }

    fn apply(&self, writes: &[Write], sync: bool) -> Result<(), KvError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(KvError::engine)?;
        let durability = if sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).map_err(KvError::engine)?;
        txn.set_quick_repair(self.quick_repair);
        {
            // On an error the table and then the transaction drop, which
            // aborts it: nothing of the batch is applied.
            let mut table = txn.open_table(TABLE).map_err(KvError::engine)?;
            for write in writes {
                match write {
                    Write::Set(key, value) => {
                        table
                            .insert(key.as_ref(), value.as_ref())
                            .map_err(KvError::engine)?;
                    }
                    Write::Clear(key) => {
                        table.remove(key.as_ref()).map_err(KvError::engine)?;
                    }
                    Write::ClearRange(begin, end) => {
                        if begin < end {
                            table
                                .retain_in::<&[u8], _>(begin.as_ref()..end.as_ref(), |_, _| false)
                                .map_err(KvError::engine)?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(KvError::engine)
    }
}

/// Why a [`RedbSnapshot`] could not be taken; every read from it returns it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("could not open a redb read transaction: {0}")]
struct SnapshotError(Arc<::redb::Error>);

/// A redb read transaction with the `kv` table open: every batch committed
/// before it was taken, none after. Holding one keeps redb from reusing the
/// pages it reads, so keep it short-lived.
pub struct RedbSnapshot {
    table: Result<ReadOnlyTable<&'static [u8], &'static [u8]>, SnapshotError>,
}

impl std::fmt::Debug for RedbSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbSnapshot")
            .field("ok", &self.table.is_ok())
            .finish_non_exhaustive()
    }
}

impl RedbSnapshot {
    fn table(&self) -> Result<&ReadOnlyTable<&'static [u8], &'static [u8]>, KvError> {
        self.table.as_ref().map_err(|e| KvError::engine(e.clone()))
    }
}

impl Snapshot for RedbSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        let value = self.table()?.get(key).map_err(KvError::engine)?;
        Ok(value.map(|guard| Bytes::copy_from_slice(guard.value())))
    }

    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        let limit = if limit == 0 { usize::MAX } else { limit };
        let iter = self
            .table()?
            .range::<&[u8]>(begin..end)
            .map_err(KvError::engine)?;
        let mut out = Vec::with_capacity(limit.min(256));
        let mut push = |item: Result<_, ::redb::StorageError>| -> Result<(), KvError> {
            let (key, value): (
                ::redb::AccessGuard<'_, &[u8]>,
                ::redb::AccessGuard<'_, &[u8]>,
            ) = item.map_err(KvError::engine)?;
            out.push(KeyValue {
                key: Bytes::copy_from_slice(key.value()),
                value: Bytes::copy_from_slice(value.value()),
            });
            Ok(())
        };
        if reverse {
            for item in iter.rev().take(limit) {
                push(item)?;
            }
        } else {
            for item in iter.take(limit) {
                push(item)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    fn open(dir: &Path) -> RedbBackend {
        RedbBackend::open(dir, RedbOptions::default()).unwrap()
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn set(k: &str, v: &str) -> Write {
        Write::Set(b(k), b(v))
    }

    fn get(backend: &RedbBackend, k: &str) -> Option<Bytes> {
        backend.snapshot().get(k.as_bytes()).unwrap()
    }

    fn keys(pairs: &[KeyValue]) -> Vec<&[u8]> {
        pairs.iter().map(|kv| kv.key.as_ref()).collect()
    }

    #[test]
    fn set_get_clear() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path());
        assert_eq!(get(&backend, "a"), None);
        backend
            .apply(&[set("a", "1"), set("b", "2")], false)
            .unwrap();
        assert_eq!(get(&backend, "a"), Some(b("1")));
        assert_eq!(get(&backend, "b"), Some(b("2")));
        backend
            .apply(&[set("a", "3"), Write::Clear(b("b"))], true)
            .unwrap();
        assert_eq!(get(&backend, "a"), Some(b("3")));
        assert_eq!(get(&backend, "b"), None);
        // Clearing a missing key is fine; an empty batch is a no-op.
        backend.apply(&[Write::Clear(b("zz"))], false).unwrap();
        backend.apply(&[], true).unwrap();
        assert_eq!(get(&backend, "a"), Some(b("3")));
    }

    #[test]
    fn writes_apply_in_order_within_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path());
        backend
            .apply(&[set("k", "1"), set("k", "2")], false)
            .unwrap();
        assert_eq!(get(&backend, "k"), Some(b("2")));
        backend
            .apply(&[set("k", "3"), Write::Clear(b("k"))], false)
            .unwrap();
        assert_eq!(get(&backend, "k"), None);
        backend
            .apply(&[Write::Clear(b("k")), set("k", "4")], false)
            .unwrap();
        assert_eq!(get(&backend, "k"), Some(b("4")));
    }

    #[test]
    fn clear_range() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path());
        let fill: Vec<Write> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|k| set(k, k))
            .collect();
        backend.apply(&fill, false).unwrap();
        backend
            .apply(&[Write::ClearRange(b("b"), b("d"))], false)
            .unwrap();
        let all = backend.snapshot().range(b"", b"\xff", 0, false).unwrap();
        assert_eq!(keys(&all), [&b"a"[..], b"d", b"e"]);

        // Inside one batch: a key set before the clear goes, one set after
        // stays; an empty or inverted range clears nothing.
        let batch = [
            set("b1", "x"),
            Write::ClearRange(b("a"), b("e")),
            set("c1", "y"),
            Write::ClearRange(b("e"), b("e")),
            Write::ClearRange(b("z"), b("a")),
        ];
        backend.apply(&batch, true).unwrap();
        let all = backend.snapshot().range(b"", b"\xff", 0, false).unwrap();
        assert_eq!(keys(&all), [&b"c1"[..], b"e"]);
        assert_eq!(all[0].value, b("y"));
    }

    #[test]
    fn range_forward_reverse_limit() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path());
        let fill: Vec<Write> = (0..10)
            .map(|i| set(&format!("k{i}"), &i.to_string()))
            .collect();
        backend.apply(&fill, false).unwrap();
        let snap = backend.snapshot();
        let k = |i: u8| vec![b'k', b'0' + i];

        let forward = snap.range(b"k2", b"k7", 0, false).unwrap();
        assert_eq!(keys(&forward), (2..7).map(k).collect::<Vec<_>>());
        assert_eq!(forward[0].value, b("2"));
        let reverse = snap.range(b"k2", b"k7", 0, true).unwrap();
        assert_eq!(keys(&reverse), (2..7).rev().map(k).collect::<Vec<_>>());
        let first = snap.range(b"k2", b"k7", 3, false).unwrap();
        assert_eq!(keys(&first), (2..5).map(k).collect::<Vec<_>>());
        let last = snap.range(b"k2", b"k7", 3, true).unwrap();
        assert_eq!(keys(&last), [k(6), k(5), k(4)]);
        assert_eq!(snap.range(b"k2", b"k7", 100, false).unwrap().len(), 5);
        assert!(snap.range(b"k7", b"k2", 0, false).unwrap().is_empty());
        assert!(snap.range(b"k3", b"k3", 0, true).unwrap().is_empty());
        assert_eq!(snap.range(b"", b"\xff", 0, false).unwrap().len(), 10);
    }

    #[test]
    fn snapshot_isolation() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path());
        backend
            .apply(&[set("a", "1"), set("b", "1")], false)
            .unwrap();
        let before = backend.snapshot();
        backend
            .apply(&[set("a", "2"), Write::Clear(b("b")), set("c", "2")], true)
            .unwrap();
        assert_eq!(before.get(b"a").unwrap(), Some(b("1")));
        assert_eq!(before.get(b"b").unwrap(), Some(b("1")));
        assert_eq!(before.get(b"c").unwrap(), None);
        assert_eq!(
            keys(&before.range(b"a", b"z", 0, false).unwrap()),
            [&b"a"[..], b"b"]
        );
        let after = backend.snapshot();
        assert_eq!(after.get(b"a").unwrap(), Some(b("2")));
        assert_eq!(
            keys(&after.range(b"a", b"z", 0, true).unwrap()),
            [&b"c"[..], b"a"]
        );
    }

    #[test]
    fn empty_key_is_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path());
        backend
            .apply(&[Write::Set(Bytes::new(), b("v"))], false)
            .unwrap();
        assert_eq!(backend.snapshot().get(b"").unwrap(), Some(b("v")));
    }

    #[test]
    fn non_durable_then_durable_commit_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = open(dir.path());
            backend.apply(&[set("a", "1")], false).unwrap();
            backend.apply(&[set("b", "2")], true).unwrap();
        }
        let backend = open(dir.path());
        assert_eq!(get(&backend, "a"), Some(b("1")));
        assert_eq!(get(&backend, "b"), Some(b("2")));
    }

    #[test]
    fn snapshots_see_whole_batches() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(open(dir.path()));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (backend, done) = (Arc::clone(&backend), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut checked = 0;
                while !done.load(Ordering::Acquire) || checked == 0 {
                    let pairs = backend.snapshot().range(b"", b"\xff", 0, false).unwrap();
                    if let Some(first) = pairs.first() {
                        assert_eq!(pairs.len(), 100, "a batch was seen in part");
                        assert!(pairs.iter().all(|kv| kv.value == first.value));
                    }
                    checked += 1;
                }
            })
        };
        for round in 0..200u32 {
            let batch: Vec<Write> = (0..100u32)
                .map(|i| {
                    Write::Set(
                        Bytes::from(format!("k{i:03}")),
                        Bytes::from(round.to_string()),
                    )
                })
                .collect();
            backend.apply(&batch, false).unwrap();
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    }

    #[test]
    fn synced_batch_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("db");
        {
            let backend = open(&path);
            backend
                .apply(&[set("a", "1"), set("b", "2")], true)
                .unwrap();
            backend
                .apply(&[Write::ClearRange(b("b"), b("c"))], true)
                .unwrap();
        }
        let backend = open(&path);
        assert_eq!(get(&backend, "a"), Some(b("1")));
        assert_eq!(get(&backend, "b"), None);
    }

    /// Runs in a child process started by `synced_batch_survives_a_crash`:
    /// commits, then aborts without closing anything.
    #[test]
    #[ignore = "the child process of synced_batch_survives_a_crash"]
    fn crash_child() {
        let Some(path) = std::env::var_os("HANMADI_CRASH_DIR") else {
            return;
        };
        let backend = open(Path::new(&path));
        backend
            .apply(&[set("a", "1"), set("b", "2")], true)
            .unwrap();
        backend.apply(&[Write::Clear(b("b"))], true).unwrap();
        std::process::abort();
    }

    #[test]
    fn synced_batch_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "backend::redb::tests::crash_child", "--ignored"])
            .env("HANMADI_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child should have aborted");
        let backend = open(dir.path());
        assert_eq!(get(&backend, "a"), Some(b("1")));
        assert_eq!(get(&backend, "b"), None);
    }
}
