//! A [`Backend`] over fjall 3, a log-structured merge tree.
//!
//! One database directory holds one keyspace, `kv`. A batch becomes one fjall
//! write batch: a single journal record, then the memtable, published to
//! readers at one sequence number, so it is all or nothing both on disk and
//! to snapshots. With `sync` the journal is flushed and fsynced before
//! `apply` returns; without, it is only handed to the OS (it survives a crash
//! of the process, not of the machine).
//!
//! fjall has no range tombstone, so a `ClearRange` reads the keys in its range
//! and removes them one by one. A write batch also carries a single sequence
//! number for all of its items, so two writes to one key in a batch would be
//! ambiguous; batches are folded into one final write per key first (see
//! [`FjallBackend::apply`]).
//!
//! Keys must be 1 to 65,535 bytes long (fjall refuses others): setting any
//! other key fails with [`KvError::Engine`]; reading or clearing one finds
//! nothing to do.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use ::fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode,
    Readable, Slice,
};
use bytes::Bytes;
use parking_lot::Mutex;

use crate::backend::{Backend, Snapshot, Write};
use crate::kv::{KeyValue, KvError};

mod priority;
mod reaper;

/// The one keyspace every key lives in.
const KEYSPACE: &str = "kv";

/// Longest key fjall stores (its key length is a `u16`).
const MAX_FJALL_KEY: usize = u16::MAX as usize;

/// Smallest journal budget fjall accepts (it panics below).
const MIN_JOURNALING_SIZE: u64 = 64 * 1024 * 1024;

/// Tuning of a [`FjallBackend`]. [`FjallOptions::default`] suits the chat
/// workload; see `docs/STORAGE.md` for the measurements behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FjallOptions {
    /// Block cache, in bytes: data and index blocks of the on-disk tables.
    /// Range reads of recent history and inboxes hit it. fjall's own default
    /// is 32 MiB, sized for a library, not a server.
    pub cache_size: u64,
    /// Size at which the active memtable is sealed and flushed to a table.
    /// Bigger means fewer, larger flushes and fewer level-0 tables for reads
    /// to merge, at the cost of memory and replay time after a crash.
    pub max_memtable_size: u64,
    /// Budget of all journal files, in bytes (at least 64 MiB). Past it,
    /// fjall flushes memtables so old journals can be dropped.
    pub max_journaling_size: u64,
    /// Nice value of the store's background threads (flushes, compactions,
    /// freeing flushed memtables), so their bursts yield the CPU to the
    /// commit path; see [`priority`]. A thread already at a higher value
    /// keeps it; `0` leaves them as the process runs.
    pub background_nice: i32,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            cache_size: 256 * 1024 * 1024,
            max_memtable_size: 64 * 1024 * 1024,
            max_journaling_size: 512 * 1024 * 1024,
            background_nice: priority::DEFAULT_NICE,
        }
    }
}

/// Reads the memory a [`FjallBackend`] holds under its two budgets: the block
/// cache ([`FjallOptions::cache_size`]) and the write buffer (the active and
/// sealed memtables, bounded by [`FjallOptions::max_memtable_size`] each and
/// by the journal budget in all). A node exports both at `/metrics`, so an
/// operator can tell a cache filling up to its cap from a leak.
#[derive(Clone)]
pub struct FjallMemory {
    db: Database,
}

impl std::fmt::Debug for FjallMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallMemory").finish_non_exhaustive()
    }
}

impl FjallMemory {
    /// Bytes of blocks in the cache now.
    pub fn cache_bytes(&self) -> u64 {
        self.db.cache_size()
    }

    /// The cache's cap, in bytes.
    pub fn cache_capacity(&self) -> u64 {
        self.db.cache_capacity()
    }

    /// Bytes held by memtables, the active one and those sealed and waiting
    /// for their flush.
    pub fn write_buffer_bytes(&self) -> u64 {
        self.db.write_buffer_size()
    }
}

/// A key fjall cannot store.
#[derive(Debug, thiserror::Error)]
enum KeyError {
    #[error("fjall cannot store an empty key")]
    Empty,
    #[error("fjall cannot store a key of {0} bytes (at most {MAX_FJALL_KEY})")]
    TooLong(usize),
}

/// Whether fjall can hold `key` at all (it panics on any other). A key it
/// cannot hold is never stored, so clearing or reading one is a no-op.
fn storable(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_FJALL_KEY
}

/// Checks that fjall accepts `key` for a set.
fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::engine(KeyError::Empty));
    }
    if key.len() > MAX_FJALL_KEY {
        return Err(KvError::engine(KeyError::TooLong(key.len())));
    }
    Ok(())
}

/// An ordered map on disk, in a fjall database.
pub struct FjallBackend {
    db: Database,
    keyspace: Keyspace,
    /// Held through `apply`: a `ClearRange` reads the keys it removes, and no
    /// other batch may land between that read and the write.
    write_lock: Mutex<()>,
    /// Frees flushed memtables outside fjall's locks (see [`reaper`]).
    _reaper: reaper::Reaper,
}

impl std::fmt::Debug for FjallBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallBackend")
            .field("keyspace", &KEYSPACE)
            .finish_non_exhaustive()
    }
}

impl FjallBackend {
    /// Opens the database in directory `path`, creating the directory and the
    /// database if needed. A database left by a crash is recovered from its
    /// journal.
    ///
    /// # Errors
    ///
    /// [`KvError::Engine`] when the directory cannot be created or fjall
    /// cannot open or recover the database.
    pub fn open(path: &Path, options: FjallOptions) -> Result<Self, KvError> {
        std::fs::create_dir_all(path).map_err(KvError::engine)?;
        let db = Database::builder(path)
            .cache_size(options.cache_size)
            .max_journaling_size(options.max_journaling_size.max(MIN_JOURNALING_SIZE))
            // Journal entries here are a few hundred bytes, under fjall's
            // 4 KiB compression threshold: compressing would never pay.
            .journal_compression(CompressionType::None)
            // Every batch states its own durability (`apply`), so nothing
            // should flush the journal behind our back.
            .manual_journal_persist(true)
            .open()
            .map_err(KvError::engine)?;
        let memtable = options.max_memtable_size;
        let keyspace = db
            .keyspace(KEYSPACE, move || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable)
                    .manual_journal_persist(true)
            })
            .map_err(KvError::engine)?;
        // fjall starts its worker pool when the database opens.
        priority::lower_threads_named("fjall:worker", options.background_nice);
        let reaper = reaper::Reaper::start(keyspace.clone(), options.background_nice)
            .map_err(KvError::engine)?;
        Ok(Self {
            db,
            keyspace,
            write_lock: Mutex::new(()),
            _reaper: reaper,
        })
    }

    /// A handle that reads how much memory the database holds now; it stays
    /// valid after the backend moves into an engine.
    pub fn memory(&self) -> FjallMemory {
        FjallMemory {
            db: self.db.clone(),
        }
    }

    /// Queues `writes` in key order, keeping only the last write to each
    /// key. Returns `false`, having queued nothing, when `writes` hold a
    /// `ClearRange`: those go to [`FjallBackend::add_folded`].
    ///
    /// Key order is not needed for correctness but is a measured win: the
    /// memtable is a skip list, and inserting neighbours one after the other
    /// keeps the nodes each search walks in cache (about a third less CPU
    /// for a 512-message batch; see `docs/STORAGE.md`). The same sort puts
    /// two writes to one key side by side, which is how the later one wins.
    fn add_point_writes(
        &self,
        batch: &mut OwnedWriteBatch,
        writes: &[Write],
    ) -> Result<bool, KvError> {
        let mut order: Vec<(&Bytes, Option<&Bytes>)> = Vec::with_capacity(writes.len());
        for write in writes {
            match write {
                Write::Set(key, value) => {
                    check_key(key)?;
                    order.push((key, Some(value)));
                }
                Write::Clear(key) => order.push((key, None)),
                Write::ClearRange(..) => return Ok(false),
            }
        }
        // Stable: among writes to one key, the last stays last.
        order.sort_by(|a, b| a.0.cmp(b.0));
        let mut rest = order.as_slice();
        while let Some(((key, value), tail)) = rest.split_first() {
            rest = tail;
            if rest.first().is_some_and(|(next, _)| next == key) {
                continue;
            }
            match value {
                Some(value) => batch.insert(&self.keyspace, key.as_ref(), value.as_ref()),
                None if storable(key) => batch.remove(&self.keyspace, key.as_ref()),
                None => {}
            }
        }
        Ok(true)
    }

    /// Queues `writes` after folding them, in order, into one final state
    /// per key: a later write to a key replaces an earlier one, and a
    /// `ClearRange` removes both the stored keys in its range and the keys
    /// this batch set in it before.
    fn add_folded(&self, batch: &mut OwnedWriteBatch, writes: &[Write]) -> Result<(), KvError> {
        // Under `write_lock`, so this view is the state the batch applies to.
        let snapshot = self.db.snapshot();
        let mut last: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
        for write in writes {
            match write {
                Write::Set(key, value) => {
                    check_key(key)?;
                    last.insert(key.clone(), Some(value.clone()));
                }
                Write::Clear(key) => {
                    last.insert(key.clone(), None);
                }
                Write::ClearRange(begin, end) => {
                    if begin >= end {
                        continue;
                    }
                    let bounds = (Bound::Included(begin.clone()), Bound::Excluded(end.clone()));
                    for (_, value) in last.range_mut(bounds) {
                        *value = None;
                    }
                    let stored = snapshot.range::<&[u8], _>(
                        &self.keyspace,
                        (
                            Bound::Included(begin.as_ref()),
                            Bound::Excluded(end.as_ref()),
                        ),
                    );
                    for guard in stored {
                        let key = guard.key().map_err(KvError::engine)?;
                        last.insert(Bytes::copy_from_slice(&key), None);
                    }
                }
            }
        }
        for (key, value) in &last {
            match value {
                Some(value) => batch.insert(&self.keyspace, key.as_ref(), value.as_ref()),
                None if storable(key) => batch.remove(&self.keyspace, key.as_ref()),
                None => {}
            }
        }
        Ok(())
    }
}

impl Backend for FjallBackend {
    type Snapshot = FjallSnapshot;

    fn snapshot(&self) -> FjallSnapshot {
        FjallSnapshot {
            snapshot: self.db.snapshot(),
            keyspace: self.keyspace.clone(),
        }
    }

    /// Applies `writes` as one fjall write batch.
    ///
    /// fjall stamps every item of a batch with the same sequence number, so
    /// the batch itself cannot order two writes to one key: they are folded
    /// into one write per key first, in key order.
    fn apply(&self, writes: &[Write], sync: bool) -> Result<(), KvError> {
        if writes.is_empty() {
            return Ok(());
        }
        let durability = if sync {
            // The journal is append-only, so fdatasync would write the new
            // length as well; it measured no faster than fsync here.
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        let _writer = self.write_lock.lock();
        let mut batch = OwnedWriteBatch::with_capacity(self.db.clone(), writes.len())
            .durability(Some(durability));
        if !self.add_point_writes(&mut batch, writes)? {
            self.add_folded(&mut batch, writes)?;
        }
        batch.commit().map_err(KvError::engine)
    }
}

/// A fjall snapshot: every batch committed before it was taken, none after.
/// Holding one keeps fjall from dropping the versions it can see, so keep it
/// short-lived.
#[derive(Clone)]
pub struct FjallSnapshot {
    snapshot: ::fjall::Snapshot,
    keyspace: Keyspace,
}

impl std::fmt::Debug for FjallSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallSnapshot")
            .field("seqno", &self.snapshot.seqno())
            .finish_non_exhaustive()
    }
}

fn to_bytes(slice: &Slice) -> Bytes {
    Bytes::copy_from_slice(slice)
}

impl Snapshot for FjallSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        if !storable(key) {
            return Ok(None);
        }
        let value = self
            .snapshot
            .get(&self.keyspace, key)
            .map_err(KvError::engine)?;
        Ok(value.as_ref().map(to_bytes))
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
        let iter = self.snapshot.range::<&[u8], _>(
            &self.keyspace,
            (Bound::Included(begin), Bound::Excluded(end)),
        );
        crate::backend::collect_range(iter, limit, reverse, |guard: ::fjall::Guard| {
            let (key, value) = guard.into_inner().map_err(KvError::engine)?;
            Ok(KeyValue {
                key: to_bytes(&key),
                value: to_bytes(&value),
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::conformance::{self, b, get, set};

    fn open(dir: &Path) -> FjallBackend {
        FjallBackend::open(dir, FjallOptions::default()).unwrap()
    }

    conformance::conformance_tests!(open);

    #[test]
    fn failed_batch_applies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path());
        let batch = [set("a", "1"), Write::Set(Bytes::new(), b("v"))];
        assert!(matches!(
            backend.apply(&batch, true),
            Err(KvError::Engine(_))
        ));
        assert_eq!(get(&backend, "a"), None);
        let long = Bytes::from(vec![b'k'; MAX_FJALL_KEY + 1]);
        let batch = [set("a", "1"), Write::Set(long.clone(), b("v"))];
        assert!(matches!(
            backend.apply(&batch, false),
            Err(KvError::Engine(_))
        ));
        assert_eq!(get(&backend, "a"), None);
        // Keys fjall cannot hold are never there: clearing or reading one is
        // a no-op, in either write path.
        for clear in [Bytes::new(), long.clone()] {
            backend
                .apply(&[Write::Clear(clear.clone())], false)
                .unwrap();
            let folded = [
                Write::Clear(clear.clone()),
                Write::ClearRange(b("x"), b("y")),
            ];
            backend.apply(&folded, false).unwrap();
            assert_eq!(backend.snapshot().get(&clear).unwrap(), None);
        }
    }
}
