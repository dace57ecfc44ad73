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
        let iter = self
            .table()?
            .range::<&[u8]>(begin..end)
            .map_err(KvError::engine)?;
        crate::backend::collect_range(
            iter,
            limit,
            reverse,
            |item: Result<_, ::redb::StorageError>| {
                let (key, value): (
                    ::redb::AccessGuard<'_, &[u8]>,
                    ::redb::AccessGuard<'_, &[u8]>,
                ) = item.map_err(KvError::engine)?;
                Ok(KeyValue {
                    key: Bytes::copy_from_slice(key.value()),
                    value: Bytes::copy_from_slice(value.value()),
                })
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::conformance::{self, b, get, set};

    fn open(dir: &Path) -> RedbBackend {
        RedbBackend::open(dir, RedbOptions::default()).unwrap()
    }

    conformance::conformance_tests!(open);

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
}
