//! Optimistic transactions with FoundationDB's semantics over any
//! [`Backend`]: the embedded and simulated engines share this core, so the
//! chat keyspace meets the same conflicts, versionstamps and limits on every
//! engine.
//!
//! A transaction reads from a backend snapshot taken at its first read (its
//! read version) and buffers its writes. Commits are resolved in groups by a
//! single resolver: each transaction in a group is checked against the write
//! ranges of every transaction committed after its read version (including
//! earlier members of the same group), and the survivors are applied to the
//! backend in one atomic batch under one commit version. A transaction's
//! versionstamp is `(commit version, position in the group)`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::backend::{Backend, Snapshot, Write};
use crate::kv::{
    AtomicOp, KeyValue, KvError, RangeRead, Versionstamp, MAX_KEY_SIZE, MAX_TRANSACTION_AGE,
    MAX_TRANSACTION_SIZE, MAX_VALUE_SIZE, VERSIONSTAMP_LEN,
};

/// Where the engine keeps its last commit version. Keys from `0xff` up are
/// the engine's own, as in FoundationDB's system keyspace.
pub const VERSION_KEY: &[u8] = b"\xff\x00hanmadi/commit_version";

/// Limits an optimistic engine enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A transaction older than this fails with `TransactionTooOld`.
    pub max_age: Duration,
    /// Largest total size of a transaction's mutations.
    pub max_transaction_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_age: MAX_TRANSACTION_AGE,
            max_transaction_size: MAX_TRANSACTION_SIZE,
        }
    }
}

/// A key range `[begin, end)`; `end: None` is the single key `begin`.
#[derive(Clone, Debug)]
struct KeyRange {
    begin: Bytes,
    end: Option<Bytes>,
}

impl KeyRange {
    fn point(key: Bytes) -> Self {
        Self {
            begin: key,
            end: None,
        }
    }

    fn span(begin: &[u8], end: &[u8]) -> Self {
        Self {
            begin: Bytes::copy_from_slice(begin),
            end: Some(Bytes::copy_from_slice(end)),
        }
    }

    /// Whether the range ends past `key` (a point `k` ends at `k+0x00`).
    fn ends_after(&self, key: &[u8]) -> bool {
        match &self.end {
            None => self.begin.as_ref() >= key,
            Some(end) => end.as_ref() > key,
        }
    }

    fn intersects(&self, other: &KeyRange) -> bool {
        // [a, b) ∩ [c, d) ≠ ∅  ⇔  a < d ∧ c < b, with points as [k, k+0x00).
        let begins_before_end = |r: &KeyRange, o: &KeyRange| match &o.end {
            None => r.begin.as_ref() <= o.begin.as_ref(),
            Some(end) => r.begin.as_ref() < end.as_ref(),
        };
        begins_before_end(self, other) && begins_before_end(other, self)
    }

    fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => self.begin.as_ref() == key,
            Some(end) => self.begin.as_ref() <= key && key < end.as_ref(),
        }
    }
}

/// The write ranges of one committed transaction, sorted for lookup.
#[derive(Debug)]
struct WriteSet {
    version: u64,
    /// Sorted by `begin`.
    ranges: Vec<KeyRange>,
    /// `max_end[i]`: index of the range with the greatest end among
    /// `ranges[..=i]`, so "does any range begin below b and end above a" is
    /// one binary search.
    max_end: Vec<usize>,
}

impl WriteSet {
    fn new(version: u64, mut ranges: Vec<KeyRange>) -> Self {
        ranges.sort_by(|a, b| a.begin.cmp(&b.begin));
        let mut max_end = Vec::with_capacity(ranges.len());
        let mut best = 0usize;
        for (i, r) in ranges.iter().enumerate() {
            if i > 0 && end_greater(r, &ranges[best]) {
                best = i;
            }
            max_end.push(best);
        }
        Self {
            version,
            ranges,
            max_end,
        }
    }

    fn intersects(&self, read: &KeyRange) -> bool {
        // Ranges beginning at or past the read's end cannot touch it.
        let n = self.ranges.partition_point(|w| match &read.end {
            None => w.begin.as_ref() <= read.begin.as_ref(),
            Some(end) => w.begin.as_ref() < end.as_ref(),
        });
        if n == 0 {
            return false;
        }
        // Every range here begins before the read ends, so one of them
        // meets the read exactly when the one reaching furthest ends past
        // the read's first key.
        self.ranges[self.max_end[n - 1]].ends_after(&read.begin)
    }
}

fn end_greater(a: &KeyRange, b: &KeyRange) -> bool {
    // Compare ends, a point key k ending at k+0x00.
    fn end_key(r: &KeyRange) -> (&[u8], bool) {
        match &r.end {
            None => (r.begin.as_ref(), true),
            Some(e) => (e.as_ref(), false),
        }
    }
    let (ea, pa) = end_key(a);
    let (eb, pb) = end_key(b);
    // k+0x00 sorts right after k: compare (key, is_point).
    (ea, pa) > (eb, pb)
}

/// A committed member's write ranges, sorted on first use.
#[derive(Debug)]
enum LazyWriteSet {
    Raw(Vec<KeyRange>),
    Sorted(WriteSet),
}

impl LazyWriteSet {
    fn sorted(&mut self, version: u64) -> &WriteSet {
        if let LazyWriteSet::Raw(ranges) = self {
            *self = LazyWriteSet::Sorted(WriteSet::new(version, std::mem::take(ranges)));
        }
        match self {
            LazyWriteSet::Sorted(w) => w,
            LazyWriteSet::Raw(_) => unreachable!("sorted just above"),
        }
    }

    fn into_sorted(self, version: u64) -> WriteSet {
        match self {
            LazyWriteSet::Raw(ranges) => WriteSet::new(version, ranges),
            LazyWriteSet::Sorted(w) => w,
        }
    }
}

/// What a transaction left on a key it wrote, for reading its own writes and
/// for building the commit.
#[derive(Clone, Debug)]
enum Pending {
    Set(Bytes),
    Cleared,
    /// Atomic operations to apply, at commit, on the committed value.
    Atomic(Vec<(AtomicOp, Bytes)>),
}

/// A transaction's buffered mutations.
#[derive(Debug, Default)]
struct Mutations {
    /// Cleared ranges; keys written after a clear live in `keys` and win.
    cleared: Vec<KeyRange>,
    keys: BTreeMap<Bytes, Pending>,
    /// Versionstamped keys and values: (key, value, stamp in key).
    stamped: Vec<(Bytes, Bytes, bool)>,
    size: usize,
    error: Option<KvError>,
}

impl Mutations {
    fn in_cleared(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|r| r.contains(key))
    }
}

/// State of the resolver, behind one lock.
#[derive(Debug)]
struct Resolver {
    /// Last version applied to the backend and published to readers.
    version: u64,
    /// Write sets of commits newer than the oldest live read version.
    log: VecDeque<WriteSet>,
    /// Live read versions and how many transactions hold each.
    readers: BTreeMap<u64, usize>,
}

/// The shared core of an optimistic engine.
#[derive(Debug)]
pub struct Core<B: Backend> {
    backend: B,
    limits: Limits,
    resolver: Mutex<Resolver>,
    /// Held for a whole group resolution: versions are assigned, checked and
    /// applied by one committer at a time.
    commit: Mutex<()>,
}

impl<B: Backend> Core<B> {
    /// Opens the core over `backend`, resuming from the commit version it
    /// stored last.
    ///
    /// # Errors
    ///
    /// A backend read failure, or a malformed stored version.
    pub fn open(backend: B, limits: Limits) -> Result<Arc<Self>, KvError> {
        let version = match backend.snapshot().get(VERSION_KEY)? {
            None => 0,
            Some(v) => {
                let raw: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                    KvError::engine(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "stored commit version is not 8 bytes",
                    ))
                })?;
                u64::from_be_bytes(raw)
            }
        };
        Ok(Arc::new(Self {
            backend,
            limits,
            resolver: Mutex::new(Resolver {
                version,
                log: VecDeque::new(),
                readers: BTreeMap::new(),
            }),
            commit: Mutex::new(()),
        }))
    }

    /// The backend under this core.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The last published commit version.
    pub fn version(&self) -> u64 {
        self.resolver.lock().version
    }

    /// Starts a transaction.
    pub fn begin(self: &Arc<Self>) -> Txn<B> {
        Txn {
            core: Arc::clone(self),
            started: Instant::now(),
            reads: Mutex::new(None),
            muts: Mutations::default(),
        }
    }

    fn take_read_view(&self) -> (u64, B::Snapshot) {
        // Snapshot and version are taken under the resolver lock, and the
        // resolver publishes a version only after its batch is applied, so a
        // snapshot is never older than its version (at worst newer, which
        // can only cause a needless conflict, never a missed one).
        let mut r = self.resolver.lock();
        let snapshot = self.backend.snapshot();
        let version = r.version;
        *r.readers.entry(version).or_insert(0) += 1;
        (version, snapshot)
    }

    fn release_reader(&self, version: u64) {
        let mut r = self.resolver.lock();
        Self::release_locked(&mut r, version);
        Self::prune(&mut r);
    }

    fn release_locked(r: &mut Resolver, version: u64) {
        if let Some(n) = r.readers.get_mut(&version) {
            *n -= 1;
            if *n == 0 {
                r.readers.remove(&version);
            }
        }
    }

    fn prune(r: &mut Resolver) {
        // A write set matters only to transactions that read before it.
        let oldest = r.readers.keys().next().copied().unwrap_or(r.version);
        while r.log.front().is_some_and(|w| w.version <= oldest) {
            r.log.pop_front();
        }
    }

    /// Resolves and applies a group of commits as one backend batch with
    /// `sync` durability. Returns one outcome per commit, in order.
    pub fn commit_group(
        &self,
        group: Vec<CommitRequest>,
        sync: bool,
    ) -> Vec<Result<Versionstamp, KvError>> {
        let _committer = self.commit.lock();
        let mut outcomes: Vec<Result<Versionstamp, KvError>> = Vec::with_capacity(group.len());
        let version = self.resolver.lock().version + 1;
        let now = Instant::now();
        let snapshot = self.backend.snapshot();
        let mut writes: Vec<Write> = Vec::new();
        // Values this group has written so far, kept only when a later
        // member has atomic operations that must see them.
        let mut touched: Option<HashMap<Bytes, Option<Bytes>>> = group
            .iter()
            .skip(1)
            .any(|r| {
                r.muts
                    .keys
                    .values()
                    .any(|p| matches!(p, Pending::Atomic(_)))
            })
            .then(HashMap::new);
        let mut group_cleared: Vec<KeyRange> = Vec::new();
        // Write sets of the members committed so far, sorted only once a
        // later member or a live reader needs to check against them.
        let mut group_sets: Vec<LazyWriteSet> = Vec::new();
        let mut order: u16 = 0;
        let mut read_versions = Vec::with_capacity(group.len());

        for req in group {
            read_versions.extend(req.read_version);
            match self.resolve_one(
                &req,
                now,
                &snapshot,
                &mut group_sets,
                version,
                order,
                &mut writes,
                touched.as_mut(),
                &mut group_cleared,
            ) {
                Ok((stamp, ranges)) => {
                    group_sets.push(LazyWriteSet::Raw(ranges));
                    order = order.saturating_add(1);
                    outcomes.push(Ok(stamp));
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }

        let applied = if group_sets.is_empty() {
            false
        } else {
            writes.push(Write::Set(
                Bytes::from_static(VERSION_KEY),
                Bytes::copy_from_slice(&version.to_be_bytes()),
            ));
            match self.backend.apply(&writes, sync) {
                Ok(()) => true,
                Err(e) => {
                    let msg = e.to_string();
                    for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                        *o = Err(KvError::engine(std::io::Error::other(msg.clone())));
                    }
                    false
                }
            }
        };
        let mut r = self.resolver.lock();
        for rv in read_versions {
            Self::release_locked(&mut r, rv);
        }
        if applied {
            // Only transactions that read before this version can conflict
            // with it; with none alive, its write sets are never needed.
            if r.readers
                .keys()
                .next()
                .is_some_and(|&oldest| oldest < version)
            {
                r.log
                    .extend(group_sets.into_iter().map(|w| w.into_sorted(version)));
            }
            r.version = version;
        }
        Self::prune(&mut r);
        outcomes
    }

    #[allow(clippy::too_many_arguments)]
    fn resolve_one(
        &self,
        req: &CommitRequest,
        now: Instant,
        snapshot: &B::Snapshot,
        group_sets: &mut [LazyWriteSet],
        version: u64,
        order: u16,
        writes: &mut Vec<Write>,
        mut touched: Option<&mut HashMap<Bytes, Option<Bytes>>>,
        group_cleared: &mut Vec<KeyRange>,
    ) -> Result<(Versionstamp, Vec<KeyRange>), KvError> {
        if now.duration_since(req.started) > self.limits.max_age {
            return Err(KvError::TransactionTooOld);
        }
        if let Some(rv) = req.read_version {
            let in_log = {
                let r = self.resolver.lock();
                r.log
                    .iter()
                    .filter(|w| w.version > rv)
                    .any(|w| req.read_ranges.iter().any(|rr| w.intersects(rr)))
            };
            let in_group = group_sets.iter_mut().any(|w| {
                let w = w.sorted(version);
                req.read_ranges.iter().any(|rr| w.intersects(rr))
            });
            if in_log || in_group {
                return Err(KvError::Conflict);
            }
        }
        let stamp = Versionstamp::new(version, order);
        let mut ranges = Vec::with_capacity(req.muts.keys.len() + req.muts.cleared.len());
        for range in &req.muts.cleared {
            let (Some(end), begin) = (&range.end, &range.begin) else {
                continue;
            };
            writes.push(Write::ClearRange(begin.clone(), end.clone()));
            if let Some(t) = touched.as_deref_mut() {
                t.retain(|k, _| !range.contains(k));
            }
            group_cleared.push(range.clone());
            ranges.push(range.clone());
        }
        for (key, pending) in &req.muts.keys {
            let value = match pending {
                Pending::Set(v) => Some(v.clone()),
                Pending::Cleared => None,
                Pending::Atomic(ops) => {
                    let current = match touched.as_deref().and_then(|t| t.get(key)) {
                        Some(v) => v.clone(),
                        None if group_cleared.iter().any(|r| r.contains(key)) => None,
                        None => snapshot.get(key)?,
                    };
                    let mut v = current;
                    for (op, param) in ops {
                        v = Some(apply_atomic(*op, v.as_deref(), param));
                    }
                    v
                }
            };
            writes.push(match &value {
                Some(v) => Write::Set(key.clone(), v.clone()),
                None => Write::Clear(key.clone()),
            });
            if let Some(t) = touched.as_deref_mut() {
                t.insert(key.clone(), value);
            }
            ranges.push(KeyRange::point(key.clone()));
        }
        for (raw, value, in_key) in &req.muts.stamped {
            let (key, value) = if *in_key {
                (complete_stamp(raw, &stamp)?, value.clone())
            } else {
                (raw.clone(), complete_stamp(value, &stamp)?)
            };
            writes.push(Write::Set(key.clone(), value.clone()));
            if let Some(t) = touched.as_deref_mut() {
                t.insert(key.clone(), Some(value));
            }
            ranges.push(KeyRange::point(key));
        }
        Ok((stamp, ranges))
    }
}

/// Fills the 10-byte placeholder of a versionstamped key or value whose last
/// 4 bytes give the placeholder's offset (little-endian), and drops them.
fn complete_stamp(raw: &[u8], stamp: &Versionstamp) -> Result<Bytes, KvError> {
    let Some(body_len) = raw.len().checked_sub(4) else {
        return Err(KvError::InvalidVersionstamp(
            "shorter than its 4-byte offset",
        ));
    };
    let mut off = [0u8; 4];
    off.copy_from_slice(&raw[body_len..]);
    let off = u32::from_le_bytes(off) as usize;
    if off + VERSIONSTAMP_LEN > body_len {
        return Err(KvError::InvalidVersionstamp(
            "placeholder runs past the end",
        ));
    }
    let mut out = raw[..body_len].to_vec();
    out[off..off + VERSIONSTAMP_LEN].copy_from_slice(&stamp.0);
    Ok(Bytes::from(out))
}

/// FoundationDB's atomic operations on little-endian integers.
fn apply_atomic(op: AtomicOp, current: Option<&[u8]>, param: &[u8]) -> Bytes {
    let n = param.len();
    let Some(cur) = current else {
        return Bytes::copy_from_slice(param);
    };
    // The existing value is truncated or zero-extended to the parameter's
    // length, as FoundationDB does.
    let mut a = vec![0u8; n];
    let m = cur.len().min(n);
    a[..m].copy_from_slice(&cur[..m]);
    match op {
        AtomicOp::Add => {
            let mut carry = 0u16;
            for (x, y) in a.iter_mut().zip(param) {
                let s = u16::from(*x) + u16::from(*y) + carry;
                *x = s as u8;
                carry = s >> 8;
            }
            Bytes::from(a)
        }
        AtomicOp::Max | AtomicOp::Min => {
            // Compare as little-endian unsigned: most significant byte last.
            let ord = a.iter().rev().cmp(param.iter().rev());
            let keep_current = match op {
                AtomicOp::Max => ord.is_ge(),
                _ => ord.is_le(),
            };
            if keep_current {
                Bytes::from(a)
            } else {
                Bytes::copy_from_slice(param)
            }
        }
    }
}

/// A transaction handed to the resolver.
#[derive(Debug)]
pub struct CommitRequest {
    started: Instant,
    read_version: Option<u64>,
    read_ranges: Vec<KeyRange>,
    muts: Mutations,
}

impl CommitRequest {
    /// Whether the transaction writes nothing (a read-only commit).
    pub fn is_read_only(&self) -> bool {
        self.muts.keys.is_empty() && self.muts.cleared.is_empty() && self.muts.stamped.is_empty()
    }

    /// A read-only commit succeeds at once, at the version it read.
    pub fn read_only_stamp(&self, current: u64) -> Versionstamp {
        Versionstamp::new(self.read_version.unwrap_or(current), u16::MAX)
    }
}

/// The read state of a transaction, set at its first read.
struct ReadView<S> {
    version: u64,
    snapshot: S,
    ranges: Vec<KeyRange>,
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
            self.core.release_reader(view.version);
        }
    }
}

impl<B: Backend> Txn<B> {
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

    fn with_view<T>(
        &self,
        f: impl FnOnce(&mut ReadView<B::Snapshot>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        self.check_age()?;
        let mut guard = self.reads.lock();
        let view = guard.get_or_insert_with(|| {
            let (version, snapshot) = self.core.take_read_view();
            ReadView {
                version,
                snapshot,
                ranges: Vec::new(),
            }
        });
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
        self.with_view(|view| {
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
        self.with_view(|view| {
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
        let (read_version, read_ranges) = match view {
            Some(v) => (Some(v.version), v.ranges),
            None => (None, Vec::new()),
        };
        let req = CommitRequest {
            started: self.started,
            read_version,
            read_ranges,
            muts: std::mem::take(&mut self.muts),
        };
        Ok((Arc::clone(&self.core), req))
    }
}

impl<B: Backend> Core<B> {
    /// Drops a request without applying it.
    pub fn abandon(&self, req: CommitRequest) {
        if let Some(rv) = req.read_version {
            self.release_reader(rv);
        }
    }

    /// Commits a read-only request without touching the backend.
    pub fn finish_read_only(&self, req: CommitRequest) -> Versionstamp {
        let stamp = req.read_only_stamp(self.version());
        if let Some(rv) = req.read_version {
            self.release_reader(rv);
        }
        stamp
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

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn atomic_add_carries_and_extends() {
        assert_eq!(
            apply_atomic(AtomicOp::Add, Some(&[0xff, 0, 0, 0]), &[1, 0, 0, 0]).as_ref(),
            &[0, 1, 0, 0]
        );
        assert_eq!(apply_atomic(AtomicOp::Add, None, &[5, 0]).as_ref(), &[5, 0]);
        assert_eq!(
            apply_atomic(AtomicOp::Max, Some(&[0, 1]), &[0xff, 0]).as_ref(),
            &[0, 1]
        );
        assert_eq!(
            apply_atomic(AtomicOp::Min, Some(&[0, 1]), &[0xff, 0]).as_ref(),
            &[0xff, 0]
        );
    }

    #[test]
    fn write_set_finds_intersections() {
        let ws = WriteSet::new(
            1,
            vec![
                KeyRange::point(b("b")),
                KeyRange::span(b"d", b"f"),
                KeyRange::point(b("x")),
            ],
        );
        assert!(ws.intersects(&KeyRange::point(b("b"))));
        assert!(!ws.intersects(&KeyRange::point(b("c"))));
        assert!(ws.intersects(&KeyRange::point(b("e"))));
        assert!(!ws.intersects(&KeyRange::point(b("f"))));
        assert!(ws.intersects(&KeyRange::span(b"a", b"c")));
        assert!(!ws.intersects(&KeyRange::span(b"c", b"d")));
        assert!(ws.intersects(&KeyRange::span(b"c", b"d\x00")));
        assert!(ws.intersects(&KeyRange::span(b"e0", b"e1")));
        assert!(!ws.intersects(&KeyRange::span(b"f", b"x")));
        assert!(ws.intersects(&KeyRange::span(b"f", b"x\x00")));
        assert!(!ws.intersects(&KeyRange::span(b"y", b"z")));
    }

    #[test]
    fn unlimited_range_reads_merge_writes_over_everything() {
        let core = Core::open(crate::memory::MemoryBackend::new(), Limits::default()).unwrap();
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

    #[test]
    fn complete_stamp_fills_placeholder() {
        let mut raw = b"k".to_vec();
        raw.extend_from_slice(&[0xff; 10]);
        raw.extend_from_slice(b"s");
        raw.extend_from_slice(&1u32.to_le_bytes());
        let stamp = Versionstamp::new(7, 2);
        let out = complete_stamp(&raw, &stamp).unwrap();
        assert_eq!(&out[1..11], &stamp.0);
        assert_eq!(out.len(), 12);
        assert!(complete_stamp(&[1, 0, 0, 0], &stamp).is_err());
    }
}
