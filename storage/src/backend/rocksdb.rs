//! A [`Backend`] over RocksDB (the `rocksdb` crate), built only with the
//! `rocksdb` feature: its C++ library takes about 14 minutes to build on two
//! cores, which every fresh clone and every CI run would pay. It is here to
//! measure against fjall on the same workload (`docs/STORAGE.md`), through
//! the benchmarks and through a whole node (`hanmadi serve --store
//! rocksdb`).
//!
//! One database directory, the default column family. A batch is one RocksDB
//! write batch: one write-ahead-log record, applied to the memtable at
//! consecutive sequence numbers, so writes to one key apply in batch order
//! and readers see all of a batch or none of it. With `sync` the log is
//! fsynced before `apply` returns; without, it is handed to the OS (it
//! survives a crash of the process, not of the machine). `ClearRange` is
//! RocksDB's range tombstone.

use std::path::Path;
use std::sync::Arc;

use ::rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, Env, Options, ReadOptions, SnapshotWithThreadMode,
    WriteBatch, WriteOptions, DB,
};
use bytes::Bytes;

use crate::backend::{Backend, Snapshot, Write};
use crate::kv::{KeyValue, KvError};

/// Tuning of a [`RocksdbBackend`]. The defaults mirror
/// [`super::fjall::FjallOptions::default`] where both engines have the same
/// knob, so the two compare like for like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RocksdbOptions {
    /// Block cache, in bytes.
    pub cache_size: usize,
    /// Size at which a memtable is sealed and flushed to a table.
    pub max_memtable_size: usize,
    /// Bytes a table write may leave dirty before RocksDB syncs them in the
    /// background (`bytes_per_sync`): a flush reaches the disk in steps
    /// rather than in one burst that the log's next fsync must wait behind.
    /// `0` turns it off.
    pub bytes_per_sync: u64,
    /// Run the flush and compaction threads at the lowest CPU priority, as
    /// fjall's background threads run (`FjallOptions::background_nice`).
    pub background_low_priority: bool,
}

impl Default for RocksdbOptions {
    fn default() -> Self {
        Self {
            cache_size: 256 * 1024 * 1024,
            max_memtable_size: 64 * 1024 * 1024,
            bytes_per_sync: 1024 * 1024,
            background_low_priority: true,
        }
    }
}

/// An ordered map on disk, in a RocksDB database.
pub struct RocksdbBackend {
    db: Arc<DB>,
    /// Kept alive for the database's lifetime: it owns the background
    /// thread pools whose priority was lowered.
    _env: Env,
}

impl std::fmt::Debug for RocksdbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksdbBackend")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

impl RocksdbBackend {
    /// Opens the database in directory `path`, creating it if needed. A
    /// database left by a crash is recovered from its write-ahead log.
    ///
    /// # Errors
    ///
    /// [`KvError::Engine`] when RocksDB cannot open or recover the database
    /// (for instance because another process holds its lock).
    pub fn open(path: &Path, options: RocksdbOptions) -> Result<Self, KvError> {
        let mut env = Env::new().map_err(KvError::engine)?;
        if options.background_low_priority {
            env.lower_thread_pool_cpu_priority();
            env.lower_high_priority_thread_pool_cpu_priority();
        }
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(options.cache_size));
        // Point reads that miss (a new message's dedup key) are the common
        // case; without a filter each one reads a block of every level.
        table.set_bloom_filter(10.0, false);
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.set_env(&env);
        db_options.set_block_based_table_factory(&table);
        // Entries are a few hundred bytes of ids and short bodies; the
        // build carries no compression library anyway.
        db_options.set_compression_type(DBCompressionType::None);
        db_options.set_write_buffer_size(options.max_memtable_size);
        db_options.set_max_background_jobs(2);
        db_options.set_bytes_per_sync(options.bytes_per_sync);
        let db = DB::open(&db_options, path).map_err(KvError::engine)?;
        Ok(Self {
            db: Arc::new(db),
            _env: env,
        })
    }
}

impl Backend for RocksdbBackend {
    type Snapshot = RocksdbSnapshot;

    fn snapshot(&self) -> RocksdbSnapshot {
        RocksdbSnapshot(Arc::new(SnapshotCell::new(self.db.clone(), |db| {
            db.snapshot()
        })))
    }

    fn apply(&self, writes: &[Write], sync: bool) -> Result<(), KvError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for write in writes {
            match write {
                Write::Set(key, value) => batch.put(key, value),
                Write::Clear(key) => batch.delete(key),
                Write::ClearRange(begin, end) if begin < end => batch.delete_range(begin, end),
                Write::ClearRange(..) => {}
            }
        }
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        self.db
            .write_opt(batch, &write_options)
            .map_err(KvError::engine)
    }
}

type DbSnapshot<'db> = SnapshotWithThreadMode<'db, DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot together with the database it borrows.
    struct SnapshotCell {
        owner: Arc<DB>,
        #[covariant]
        dependent: DbSnapshot,
    }
);

/// A RocksDB snapshot: every batch applied before it was taken, none after.
/// Holding one keeps RocksDB from dropping the versions it can see, so keep
/// it short-lived.
#[derive(Clone)]
pub struct RocksdbSnapshot(Arc<SnapshotCell>);

impl std::fmt::Debug for RocksdbSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksdbSnapshot").finish_non_exhaustive()
    }
}

impl Snapshot for RocksdbSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        let value = self
            .0
            .borrow_dependent()
            .get_pinned_opt(key, ReadOptions::default())
            .map_err(KvError::engine)?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
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
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(begin);
        read_options.set_iterate_upper_bound(end);
        let mut iter = self.0.borrow_dependent().raw_iterator_opt(read_options);
        if reverse {
            iter.seek_to_last();
        } else {
            iter.seek_to_first();
        }
        let mut out = Vec::with_capacity(limit.min(256));
        while out.len() < limit {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            out.push(KeyValue {
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
            });
            if reverse {
                iter.prev();
            } else {
                iter.next();
            }
        }
        iter.status().map_err(KvError::engine)?;
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::conformance;

    fn open(dir: &Path) -> RocksdbBackend {
        RocksdbBackend::open(dir, RocksdbOptions::default()).unwrap()
    }

    conformance::conformance_tests!(open);
}
