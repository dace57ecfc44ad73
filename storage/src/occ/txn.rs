//! A transaction of an optimistic engine: a read view taken at its first
//! read, the ranges it read (for conflict checks) and its buffered writes,
//! handed to the resolver as a [`CommitRequest`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use super::atomic::apply_atomic;
use super::conflict::KeyRange;
use super::Core;
use crate::backend::{Backend, Snapshot};
use crate::kv::{
    AtomicOp, KeyValue, KvError, RangeRead, Versionstamp, MAX_KEY_SIZE, MAX_VALUE_SIZE,
};

/// What a transaction left on a key it wrote, for reading its own writes and
/// for building the commit.
#[derive(Clone, Debug)]
pub(super) enum Pending {
    Set(Bytes),
    Cleared,
    /// Atomic operations to apply, at commit, on the committed value.
    Atomic(Vec<(AtomicOp, Bytes)>),
}

/// A transaction's buffered mutations.
#[derive(Debug, Default)]
pub(super) struct Mutations {
    /// Cleared ranges; keys written after a clear live in `keys` and win.
    pub(super) cleared: Vec<KeyRange>,
    pub(super) keys: BTreeMap<Bytes, Pending>,
    /// Versionstamped keys and values: (key, value, stamp in key).
    pub(super) stamped: Vec<(Bytes, Bytes, bool)>,
    pub(super) size: usize,
    pub(super) error: Option<KvError>,
}

impl Mutations {
    fn in_cleared(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|r| r.contains(key))
    }
}

/// A transaction handed to the resolver.
#[derive(Debug)]
pub struct CommitRequest {
    pub(super) started: Instant,
    /// The version its conflict-checked reads saw, registered with the
    /// resolver; `None` when it made none.
    pub(super) read_version: Option<u64>,
    /// The version any of its reads saw.
    pub(super) read_at: Option<u64>,
    pub(super) read_ranges: Vec<KeyRange>,
    pub(super) muts: Mutations,
}

impl CommitRequest {
    /// Whether the transaction writes nothing (a read-only commit).
    pub fn is_read_only(&self) -> bool {
        self.muts.keys.is_empty() && self.muts.cleared.is_empty() && self.muts.stamped.is_empty()
    }

    /// A read-only commit succeeds at once, at the version it read.
    pub fn read_only_stamp(&self, current: u64) -> Versionstamp {
        Versionstamp::new(self.read_at.unwrap_or(current), u16::MAX)
    }
}

/// The read state of a transaction, set at its first read.
///
/// Its version is registered with the resolver (which then keeps the write
/// sets committed after it) only at its first conflict-checked read: a
/// transaction that reads only snapshots, like a single writer's append,
/// costs the resolver no bookkeeping. If a commit was published between the
/// view and that first checked read, the write sets it needs may be gone:
/// the transaction then fails with a conflict at commit, a needless one at
/// worst, never a missed one.
struct ReadView<S> {
    version: u64,
    snapshot: S,
    ranges: Vec<KeyRange>,
    registered: bool,
    stale: bool,
}

/// A transaction of an optimistic engine. The engine commits it by turning it
/// into a [`CommitRequest`] for [`Core::commit_group`].
pub struct Txn<B: Backend> {
    core: Arc<Core<B>>,
    started: Instant,
    reads: Mutex<Option<ReadView<B::Snapshot>>>,
    muts: Mutations,
}

impl<B: Backend> std::fmt::Debug for Txn<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("started", &self.started)
            .field("writes", &self.muts.keys.len())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Drop for Txn<B> {
    fn drop(&mut self) {
        if let Some(view) = self.reads.get_mut().take() {
            if view.registered {
                self.core.release_reader(view.version);
            }
        }
    }
}

impl<B: Backend> Txn<B> {
    pub(super) fn new(core: Arc<Core<B>>) -> Self {
        Self {
            core,
            started: Instant::now(),
            reads: Mutex::new(None),
            muts: Mutations::default(),
        }
    }

    /// The core this transaction belongs to.
    pub fn core(&self) -> &Arc<Core<B>> {
        &self.core
    }

    fn check_age(&self) -> Result<(), KvError> {
        if self.started.elapsed() > self.core.limits.max_age {
            Err(KvError::TransactionTooOld)
        } else {
            Ok(())
        }
    }

    /// Runs `f` on the read view, taking it first if needed; `checked`:
    /// the read is conflict-checked.
    fn with_view<T>(
        &self,
        checked: bool,
        f: impl FnOnce(&mut ReadView<B::Snapshot>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        self.check_age()?;
        let mut guard = self.reads.lock();
        let view = guard.get_or_insert_with(|| {
            let (version, snapshot) = self.core.take_read_view(checked);
            ReadView {
                version,
                snapshot,
                ranges: Vec::new(),
                registered: checked,
                stale: false,
            }
        });
        if checked && !view.registered && !view.stale {
            if self.core.register_reader(view.version) {
                view.registered = true;
            } else {
                view.stale = true;
            }
        }
        f(view)
    }

    /// Reads a key, seeing this transaction's writes.
    ///
    /// # Errors
    ///
    /// `TransactionTooOld` or a backend failure.
    pub fn get_now(&self, key: &[u8], snapshot: bool) -> Result<Option<Bytes>, KvError> {
        let pending = self.muts.keys.get(key);
        if let Some(Pending::Set(v)) = pending {
            self.check_age()?;
            return Ok(Some(v.clone()));
        }
        if let Some(Pending::Cleared) = pending {
            self.check_age()?;
            return Ok(None);
        }
        let cleared = self.muts.in_cleared(key);
        self.with_view(!snapshot, |view| {
            if !snapshot {
                view.ranges
                    .push(KeyRange::point(Bytes::copy_from_slice(key)));
            }
            let base = if cleared {
                None
            } else {
                view.snapshot.get(key)?
            };
            Ok(match pending {
                Some(Pending::Atomic(ops)) => {
                    let mut v = base;
                    for (op, param) in ops {
                        v = Some(apply_atomic(*op, v.as_deref(), param));
                    }
                    v
                }
                _ => base,
            })
        })
    }

    /// Reads a range, merging this transaction's writes.
    ///
    /// # Errors
    ///
    /// `TransactionTooOld` or a backend failure.
    pub fn get_range_now(&self, range: RangeRead<'_>) -> Result<Vec<KeyValue>, KvError> {
        if range.begin >= range.end {
            self.check_age()?;
            return Ok(Vec::new());
        }
        let overlay: Vec<(&Bytes, &Pending)> = self
            .muts
            .keys
            .range::<[u8], _>((Bound::Included(range.begin), Bound::Excluded(range.end)))
            .collect();
        let has_cleared = self
            .muts
            .cleared
            .iter()
            .any(|c| c.intersects(&KeyRange::span(range.begin, range.end)));
        self.with_view(!range.snapshot, |view| {
            // Fetch enough from the snapshot to fill the limit even if the
            // transaction's own clears hide some of it; a cleared range can
            // hide any number, so then everything is fetched.
            let fetch_limit = if range.limit == 0 || has_cleared {
                0
            } else {
                range.limit.saturating_add(overlay.len())
            };
            let base = view
                .snapshot
                .range(range.begin, range.end, fetch_limit, range.reverse)?;
            let merged = if overlay.is_empty() && !has_cleared {
                base
            } else {
                self.merge(base, &overlay, range.reverse)
            };
            let mut out = merged;
            let hit_limit = range.limit != 0 && out.len() >= range.limit;
            if hit_limit {
                out.truncate(range.limit);
            }
            if !range.snapshot {
                // A limited read conflicts only on the part it saw.
                let conflict = match (hit_limit, out.last()) {
                    (true, Some(last)) if !range.reverse => {
                        let mut end = last.key.to_vec();
                        end.push(0);
                        KeyRange::span(range.begin, &end)
                    }
                    (true, Some(last)) => KeyRange::span(&last.key, range.end),
                    _ => KeyRange::span(range.begin, range.end),
                };
                view.ranges.push(conflict);
            }
            Ok(out)
        })
    }

    fn merge(
        &self,
        base: Vec<KeyValue>,
        overlay: &[(&Bytes, &Pending)],
        reverse: bool,
    ) -> Vec<KeyValue> {
        let mut map: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let overlay_keys: BTreeSet<&Bytes> = overlay.iter().map(|(k, _)| *k).collect();
        for kv in base {
            if !overlay_keys.contains(&kv.key) && !self.muts.in_cleared(&kv.key) {
                map.insert(kv.key, kv.value);
            } else if let Some((_, Pending::Atomic(_))) =
                overlay.iter().find(|(k, _)| **k == kv.key)
            {
                map.insert(kv.key, kv.value);
            }
        }
        for (k, p) in overlay {
            match p {
                Pending::Set(v) => {
                    map.insert((*k).clone(), v.clone());
                }
                Pending::Cleared => {
                    map.remove(*k);
                }
                Pending::Atomic(ops) => {
                    let mut v = map.remove(*k);
                    for (op, param) in ops {
                        v = Some(apply_atomic(*op, v.as_deref(), param));
                    }
                    if let Some(v) = v {
                        map.insert((*k).clone(), v);
                    }
                }
            }
        }
        let iter = map.into_iter().map(|(key, value)| KeyValue { key, value });
        if reverse {
            iter.rev().collect()
        } else {
            iter.collect()
        }
    }

    fn account(&mut self, key: &[u8], value_len: usize) -> bool {
        if key.len() > MAX_KEY_SIZE {
            self.muts.error.get_or_insert(KvError::TooLarge {
                what: "key",
                size: key.len(),
                limit: MAX_KEY_SIZE,
            });
            return false;
        }
        if value_len > MAX_VALUE_SIZE {
            self.muts.error.get_or_insert(KvError::TooLarge {
                what: "value",
                size: value_len,
                limit: MAX_VALUE_SIZE,
            });
            return false;
        }
        self.muts.size += key.len() + value_len;
        true
    }

    /// Buffers a set.
    pub fn set_now(&mut self, key: &[u8], value: &[u8]) {
        if self.account(key, value.len()) {
            self.muts.keys.insert(
                Bytes::copy_from_slice(key),
                Pending::Set(Bytes::copy_from_slice(value)),
            );
        }
    }

    /// Buffers a clear.
    pub fn clear_now(&mut self, key: &[u8]) {
        if self.account(key, 0) {
            self.muts
                .keys
                .insert(Bytes::copy_from_slice(key), Pending::Cleared);
        }
    }

    /// Buffers a range clear.
    pub fn clear_range_now(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end || !self.account(begin, end.len()) {
            return;
        }
        let doomed: Vec<Bytes> = self
            .muts
            .keys
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.muts.keys.remove(&k);
        }
        self.muts.cleared.push(KeyRange::span(begin, end));
    }

    /// Buffers an atomic operation.
    pub fn atomic_now(&mut self, key: &[u8], op: AtomicOp, param: &[u8]) {
        if !self.account(key, param.len()) {
            return;
        }
        let cleared = self.muts.in_cleared(key);
        let entry = self.muts.keys.get_mut(key);
        match entry {
            Some(Pending::Set(v)) => *v = apply_atomic(op, Some(v), param),
            Some(Pending::Atomic(ops)) => ops.push((op, Bytes::copy_from_slice(param))),
            Some(p @ Pending::Cleared) => *p = Pending::Set(apply_atomic(op, None, param)),
            None if cleared => {
                let v = apply_atomic(op, None, param);
                self.muts
                    .keys
                    .insert(Bytes::copy_from_slice(key), Pending::Set(v));
            }
            None => {
                self.muts.keys.insert(
                    Bytes::copy_from_slice(key),
                    Pending::Atomic(vec![(op, Bytes::copy_from_slice(param))]),
                );
            }
        }
    }

    /// Buffers a versionstamped key or value.
    pub fn stamped_now(&mut self, key: &[u8], value: &[u8], in_key: bool) {
        if self.account(key, value.len()) {
            self.muts.stamped.push((
                Bytes::copy_from_slice(key),
                Bytes::copy_from_slice(value),
                in_key,
            ));
        }
    }

    /// Closes the transaction for commit: checks its limits and hands over
    /// its reads and writes.
    ///
    /// # Errors
    ///
    /// A limit the transaction broke.
    pub fn into_request(mut self) -> Result<(Arc<Core<B>>, CommitRequest), KvError> {
        if let Some(e) = self.muts.error.take() {
            return Err(e);
        }
        if self.muts.size > self.core.limits.max_transaction_size {
            return Err(KvError::TransactionTooLarge {
                size: self.muts.size,
            });
        }
        let view = self.reads.get_mut().take();
        let (read_version, read_at, read_ranges) = match view {
            Some(v) if v.stale => return Err(KvError::Conflict),
            Some(v) => (v.registered.then_some(v.version), Some(v.version), v.ranges),
            None => (None, None, Vec::new()),
        };
        let req = CommitRequest {
            started: self.started,
            read_version,
            read_at,
            read_ranges,
            muts: std::mem::take(&mut self.muts),
        };
        Ok((Arc::clone(&self.core), req))
    }
}

/// Implements every [`KvTxn`](crate::kv::KvTxn) method but `commit` inside an
/// engine's `impl KvTxn for ...` block by forwarding to the [`Txn`] in field
/// `$txn` of `self`.
///
/// Why a macro: `EmbeddedTxn` and `SimTxn` are public types that differ only
/// in `commit`, and default methods in `KvTxn` would tie `kv`, which knows no
/// engine, to this core. A shared generic transaction type with a pluggable
/// commit would change both engines' public types for eight one-line methods.
macro_rules! forward_txn_ops {
    ($txn:ident) => {
        fn get(
            &self,
            key: &[u8],
            snapshot: bool,
        ) -> impl ::std::future::Future<
            Output = ::std::result::Result<
                ::std::option::Option<::bytes::Bytes>,
                $crate::kv::KvError,
            >,
        > + Send {
            ::std::future::ready(self.$txn.get_now(key, snapshot))
        }

        fn get_range(
            &self,
            range: $crate::kv::RangeRead<'_>,
        ) -> impl ::std::future::Future<
            Output = ::std::result::Result<
                ::std::vec::Vec<$crate::kv::KeyValue>,
                $crate::kv::KvError,
            >,
        > + Send {
            ::std::future::ready(self.$txn.get_range_now(range))
        }

        fn set(&mut self, key: &[u8], value: &[u8]) {
            self.$txn.set_now(key, value);
        }

        fn clear(&mut self, key: &[u8]) {
            self.$txn.clear_now(key);
        }

        fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
            self.$txn.clear_range_now(begin, end);
        }

        fn atomic_op(&mut self, key: &[u8], op: $crate::kv::AtomicOp, param: &[u8]) {
            self.$txn.atomic_now(key, op, param);
        }

        fn set_versionstamped_key(&mut self, key: &[u8], value: &[u8]) {
            self.$txn.stamped_now(key, value, true);
        }

        fn set_versionstamped_value(&mut self, key: &[u8], value: &[u8]) {
            self.$txn.stamped_now(key, value, false);
        }
    };
}
pub(crate) use forward_txn_ops;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_range_reads_merge_writes_over_everything() {
        let core = super::super::Core::open(
            crate::memory::MemoryBackend::new(),
            super::super::Limits::default(),
        )
        .unwrap();
        let mut setup = core.begin();
        for k in ["a", "b", "c", "d", "e"] {
            setup.set_now(k.as_bytes(), b"old");
        }
        let (core2, req) = setup.into_request().unwrap();
        core2.commit_group(vec![req], false).pop().unwrap().unwrap();
        let mut txn = core.begin();
        txn.set_now(b"bb", b"new");
        txn.clear_now(b"d");
        let all = txn.get_range_now(RangeRead::new(b"a", b"z")).unwrap();
        let keys: Vec<&[u8]> = all.iter().map(|kv| kv.key.as_ref()).collect();
        assert_eq!(keys, vec![&b"a"[..], b"b", b"bb", b"c", b"e"]);
        let two = txn
            .get_range_now(RangeRead::new(b"a", b"z").limit(2).reverse(true))
            .unwrap();
        let keys: Vec<&[u8]> = two.iter().map(|kv| kv.key.as_ref()).collect();
        assert_eq!(keys, vec![&b"e"[..], b"c"]);
    }
}
