//! The storage under the optimistic engines (embedded and simulated): a plain
//! ordered map with atomic, optionally durable batch writes and consistent
//! snapshots. Conflict detection, versionstamps and atomic operations live
//! above it, in [`crate::occ`], so every backend behaves the same.

use bytes::Bytes;

use crate::kv::{KeyValue, KvError};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod conformance;
pub mod fjall;
pub mod redb;
#[cfg(feature = "rocksdb")]
pub mod rocksdb;

/// One resolved mutation: atomic operations and versionstamps are already
/// applied by the time a backend sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Set a key.
    Set(Bytes, Bytes),
    /// Remove a key.
    Clear(Bytes),
    /// Remove every key in `[begin, end)`.
    ClearRange(Bytes, Bytes),
}

/// A consistent, read-only view of a backend.
pub trait Snapshot: Send + Sync + 'static {
    /// Reads one key.
    ///
    /// # Errors
    ///
    /// An engine failure.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError>;

    /// Reads `[begin, end)` in key order (or reversed), at most `limit` pairs
    /// (`0`: no limit).
    ///
    /// # Errors
    ///
    /// An engine failure.
    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError>;
}

/// An ordered map with atomic batch writes.
pub trait Backend: Send + Sync + 'static {
    /// The backend's snapshot type.
    type Snapshot: Snapshot;

    /// A view of every batch applied so far.
    fn snapshot(&self) -> Self::Snapshot;

    /// Applies `writes` in order, all or nothing. With `sync`, returns only
    /// once the batch is durable (fsync); without, a crash may lose it.
    ///
    /// # Errors
    ///
    /// An engine failure; nothing of the batch is applied.
    fn apply(&self, writes: &[Write], sync: bool) -> Result<(), KvError>;
}

/// Collects a range read: up to `limit` items (`0`: all), from the back when
/// `reverse`, each turned into a pair by `convert`.
pub(crate) fn collect_range<I, T>(
    iter: I,
    limit: usize,
    reverse: bool,
    mut convert: impl FnMut(T) -> Result<KeyValue, KvError>,
) -> Result<Vec<KeyValue>, KvError>
where
    I: DoubleEndedIterator<Item = T>,
{
    let limit = if limit == 0 { usize::MAX } else { limit };
    let mut out = Vec::with_capacity(limit.min(256));
    if reverse {
        for item in iter.rev().take(limit) {
            out.push(convert(item)?);
        }
    } else {
        for item in iter.take(limit) {
            out.push(convert(item)?);
        }
    }
    Ok(out)
}
