//! The FoundationDB engine (feature `foundationdb`): [`FdbKv`] maps the KV
//! layer one-to-one onto a FoundationDB cluster through the `foundationdb`
//! crate. Every operation of [`KvTxn`] is the FoundationDB operation of the
//! same name; the KV contract in [`crate::kv`] is FoundationDB's own, so
//! nothing is emulated here.
//!
//! # The client network
//!
//! FoundationDB's client runs one network thread per process; it can be
//! started once and never restarted. The first [`FdbKv::open`] starts it and
//! keeps the crate's stop guard in a `static`. From then on the network runs
//! until [`stop_network`] or the end of the process.
//!
//! The C API asks for `fdb_stop_network` and a join of the thread before the
//! process exits (the crate's `boot` docs repeat it). A binary does that by
//! calling [`stop_network`] at the end of `main`, after its last use of the
//! database and before returning. It cannot be automated with a C `atexit`
//! handler registered when the network starts: `libfdb_c` 7.3 registers
//! destructors for some of its statics only on first use (one when the
//! network thread starts, more during the first transactions), so they run
//! before such a handler, and `fdb_stop_network` called from it then touches
//! destroyed state (a SIGSEGV at every exit of a test process, here). A
//! process that never calls [`stop_network`], such as a test binary, whose
//! `main` belongs to the test harness, exits with the network thread idle in
//! `epoll_wait`, as Go programs using FoundationDB always do. Do not call
//! `foundationdb::boot` in a process that uses this module.
//!
//! # Retries
//!
//! The crate's `Database::run` loop and FoundationDB's `on_error` wrap a
//! closure around one transaction object that is reset between attempts. The
//! KV layer is shaped as `begin` / `commit(self)` instead, so that the chat
//! keyspace writes its retry loop once for every engine ([`crate::kv::Retry`]).
//! `Retry` follows `on_error`'s policy (retry the retryable codes, exponential
//! backoff from 10 ms to 1 s with jitter, bounded attempts), and a fresh
//! transaction from [`FdbKv::begin`] is what `on_error`'s reset produces: this
//! engine sets no transaction options that a reset would have to keep. Calling
//! `on_error` here as well would back off twice per attempt.
//!
//! # Errors
//!
//! | FoundationDB error | [`KvError`] |
//! |---|---|
//! | `not_committed` (1020) | [`KvError::Conflict`] |
//! | `commit_unknown_result` (1021) | [`KvError::CommitUnknownResult`] |
//! | `transaction_timed_out` (1031) | [`KvError::TimedOut`]; from a commit that wrote, [`KvError::CommitUnknownResult`] (it may have landed) |
//! | `transaction_too_old` (1007) | [`KvError::TransactionTooOld`] |
//! | `transaction_too_large` (2101) | [`KvError::TransactionTooLarge`] |
//! | `key_too_large` (2102), `value_too_large` (2103) | [`KvError::TooLarge`] |
//! | any other retryable or maybe-committed code | [`KvError::Unavailable`] |
//! | anything else | [`KvError::Engine`] |
//!
//! The boxed source of `Unavailable` and `Engine` is the
//! [`foundationdb::FdbError`] itself, so callers can downcast it for the code.
//! Keys and values over [`MAX_KEY_SIZE`] / [`MAX_VALUE_SIZE`] and malformed
//! versionstamped mutations are refused here before they reach the client
//! library: the commit then fails with [`KvError::TooLarge`] or
//! [`KvError::InvalidVersionstamp`] without a round trip, and the error can
//! name the size.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::future::FdbValues;
use foundationdb::options::{DatabaseOption, MutationType, StreamingMode};
use foundationdb::{Database, FdbError, KeySelector, RangeOption, Transaction};

use crate::kv::{
    AtomicOp, KeyValue, Kv, KvError, KvTxn, RangeRead, Versionstamp, MAX_KEY_SIZE, MAX_VALUE_SIZE,
    VERSIONSTAMP_LEN,
};

/// FoundationDB error codes this module maps onto [`KvError`] variants.
mod code {
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    pub const NOT_COMMITTED: i32 = 1020;
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    pub const TRANSACTION_TIMED_OUT: i32 = 1031;
    pub const TRANSACTION_TOO_LARGE: i32 = 2101;
    pub const KEY_TOO_LARGE: i32 = 2102;
    pub const VALUE_TOO_LARGE: i32 = 2103;
    /// Asked for the versionstamp of a transaction that committed read-only.
    pub const NO_COMMIT_VERSION: i32 = 2021;
}

/// Length of the little-endian offset that ends a versionstamped key or value.
const OFFSET_SUFFIX_LEN: usize = 4;

/// The process's client network, behind a lock that is held only while it
/// starts or stops.
static NETWORK: Mutex<Network> = Mutex::new(Network::NotStarted);

/// Where the client network is in its one-way life.
enum Network {
    NotStarted,
    /// Running; held only to be dropped, which stops the network and joins
    /// its thread.
    Running {
        _guard: NetworkAutoStop,
    },
    /// [`stop_network`] ran; the network cannot start again.
    Stopped,
    /// Starting failed. The API version can be selected only once per
    /// process, so there is no second attempt.
    Failed(String),
}

/// Starts the client network on first use.
fn ensure_network() -> Result<(), KvError> {
    let mut network = NETWORK.lock().unwrap_or_else(PoisonError::into_inner);
    match &*network {
        Network::Running { .. } => Ok(()),
        Network::Stopped => Err(KvError::Engine(
            "the FoundationDB network was stopped and cannot restart in this process".into(),
        )),
        Network::Failed(why) => Err(KvError::Engine(why.clone().into())),
        Network::NotStarted => match start_network() {
            Ok(guard) => {
                *network = Network::Running { _guard: guard };
                Ok(())
            }
            Err(why) => {
                *network = Network::Failed(why.clone());
                Err(KvError::Engine(why.into()))
            }
        },
    }
}

fn start_network() -> Result<NetworkAutoStop, String> {
    let builder = FdbApiBuilder::default()
        .build()
        .map_err(|e| format!("selecting the FoundationDB API version: {e} ({})", e.code()))?;
    // SAFETY: `boot` requires the guard to be dropped before the process
    // exits. It is kept in `NETWORK` and dropped by `stop_network`; a process
    // that exits without calling it leaves the network thread running, which
    // the module docs explain and accept.
    unsafe { builder.boot() }
        .map_err(|e| format!("starting the FoundationDB network: {e} ({})", e.code()))
}

/// Stops the FoundationDB client network and waits for its thread to end.
/// Call it at the end of `main`, once nothing uses any [`FdbKv`] any more:
/// operations still pending never complete, and [`FdbKv::open`] fails from
/// then on. Does nothing when the network is not running.
///
/// # Panics
///
/// If the network thread panicked. If FoundationDB refuses to stop the
/// network, the process aborts (the crate's choice: going on would be
/// unsound).
pub fn stop_network() {
    let mut network = NETWORK.lock().unwrap_or_else(PoisonError::into_inner);
    if matches!(*network, Network::Running { .. }) {
        // Dropping the guard stops the network and joins its thread.
        drop(std::mem::replace(&mut *network, Network::Stopped));
    }
}

/// A FoundationDB database as a [`Kv`]. Cloning is cheap: clones share one
/// database handle and its connection to the cluster.
#[derive(Clone)]
pub struct FdbKv {
    db: Arc<Database>,
    /// The cluster file it was opened with (`None`: the default), for logs.
    cluster_file: Option<Arc<str>>,
}

impl fmt::Debug for FdbKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdbKv")
            .field("cluster_file", &self.cluster_file)
            .finish_non_exhaustive()
    }
}

impl FdbKv {
    /// Opens the database described by `cluster_file`, or by FoundationDB's
    /// default (`FDB_CLUSTER_FILE`, else `/etc/foundationdb/fdb.cluster`)
    /// when `None`. The first call in a process starts the client network,
    /// which then runs until [`stop_network`] or the end of the process (see
    /// the module docs).
    ///
    /// Opening does not contact the cluster: an unreachable cluster shows up
    /// as reads and commits that wait for it, until
    /// [`FdbKv::set_transaction_timeout`] bounds the wait.
    ///
    /// # Errors
    ///
    /// [`KvError::Engine`] when the client library cannot start (for
    /// example, an API version it does not support) or the cluster file
    /// cannot be used.
    pub fn open(cluster_file: Option<&str>) -> Result<Self, KvError> {
        if cluster_file.is_some_and(|path| path.contains('\0')) {
            return Err(KvError::Engine(
                "cluster file path contains a NUL byte".into(),
            ));
        }
        ensure_network()?;
        let db = Database::new(cluster_file).map_err(KvError::engine)?;
        Ok(Self {
            db: Arc::new(db),
            cluster_file: cluster_file.map(Arc::from),
        })
    }

    /// The underlying database handle, for FoundationDB options.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Bounds every transaction begun from now on to `timeout` from its
    /// start, waits for an unreachable cluster included. A read past it
    /// fails with [`KvError::TimedOut`] (FoundationDB does not retry
    /// `transaction_timed_out`), and a commit that wrote with
    /// [`KvError::CommitUnknownResult`]: it may have landed.
    ///
    /// # Errors
    ///
    /// [`KvError::Engine`] when the client library refuses the option.
    pub fn set_transaction_timeout(&self, timeout: Duration) -> Result<(), KvError> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        self.db
            .set_option(DatabaseOption::TransactionTimeout(ms))
            .map_err(KvError::engine)
    }
}

impl Kv for FdbKv {
    type Txn = FdbTxn;

    fn begin(&self) -> Result<FdbTxn, KvError> {
        let tr = self.db.create_trx().map_err(KvError::engine)?;
        Ok(FdbTxn {
            tr,
            db: Arc::clone(&self.db),
            wrote: false,
            sizes: Sizes::default(),
            refused: None,
        })
    }

    fn begin_at(&self, version: u64) -> Result<FdbTxn, KvError> {
        let txn = self.begin()?;
        // Zero or a version past i64 is no commit's (FoundationDB refuses
        // them with `version_invalid`): read at the newest instead.
        if let Ok(version @ 1..) = i64::try_from(version) {
            txn.tr.set_read_version(version);
        }
        Ok(txn)
    }
}

/// What a transaction has written, for the size in a too-large error.
#[derive(Clone, Copy, Debug, Default)]
struct Sizes {
    /// Keys plus values of all mutations, roughly what FoundationDB counts
    /// against its transaction size limit.
    mutation_bytes: usize,
    largest_key: usize,
    largest_value: usize,
}

/// One FoundationDB transaction.
pub struct FdbTxn {
    tr: Transaction,
    /// For a fresh read version when a commit turns out read-only (see
    /// `commit`). Cloning the handle costs one atomic increment per
    /// transaction; asking the network thread for this transaction's read
    /// version on every commit, just in case, would cost a thread hop.
    db: Arc<Database>,
    /// Whether any mutation was made. A transaction without one has no
    /// commit version, so its versionstamp comes from its read version.
    wrote: bool,
    sizes: Sizes,
    /// The first mutation refused before it reached FoundationDB; the commit
    /// fails with it.
    refused: Option<KvError>,
}

impl fmt::Debug for FdbTxn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdbTxn")
            .field("tr", &self.tr)
            .field("wrote", &self.wrote)
            .field("sizes", &self.sizes)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl FdbTxn {
    /// Records a mutation's sizes; refuses it (returns `false`) when the key
    /// or value is over FoundationDB's limit.
    fn admit(&mut self, key_len: usize, value_len: usize) -> bool {
        self.wrote = true;
        let sizes = &mut self.sizes;
        sizes.mutation_bytes = sizes
            .mutation_bytes
            .saturating_add(key_len)
            .saturating_add(value_len);
        sizes.largest_key = sizes.largest_key.max(key_len);
        sizes.largest_value = sizes.largest_value.max(value_len);
        if key_len > MAX_KEY_SIZE {
            self.refuse(KvError::TooLarge {
                what: "key",
                size: key_len,
                limit: MAX_KEY_SIZE,
            });
            return false;
        }
        if value_len > MAX_VALUE_SIZE {
            self.refuse(KvError::TooLarge {
                what: "value",
                size: value_len,
                limit: MAX_VALUE_SIZE,
            });
            return false;
        }
        true
    }

    /// Keeps the first refusal: it is the one the caller's code caused first.
    fn refuse(&mut self, err: KvError) {
        self.refused.get_or_insert(err);
    }

    fn error(&self, e: FdbError) -> KvError {
        kv_error(e, &self.sizes)
    }

    /// Commits a transaction that made no mutation. FoundationDB commits it
    /// without contacting the cluster and assigns it no commit version, so
    /// its stamp comes from its read version ([`read_only_stamp`]).
    async fn commit_read_only(self) -> Result<Versionstamp, KvError> {
        let read_version = self
            .tr
            .get_read_version()
            .await
            .map_err(|e| self.error(e))?;
        let sizes = self.sizes;
        self.tr
            .commit()
            .await
            .map_err(|e| kv_error(FdbError::from(e), &sizes))?;
        read_only_stamp(read_version)
    }
}

/// The stamp of a commit that wrote nothing: its read version with the
/// largest batch order, so it sorts after every commit it could see and
/// before every commit it could not (the optimistic engines do the same).
fn read_only_stamp(read_version: i64) -> Result<Versionstamp, KvError> {
    let version = u64::try_from(read_version)
        .map_err(|_| KvError::Engine("FoundationDB returned a negative read version".into()))?;
    Ok(Versionstamp::new(version, u16::MAX))
}

impl KvTxn for FdbTxn {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Bytes>, KvError> {
        let value = self
            .tr
            .get(key, snapshot)
            .await
            .map_err(|e| self.error(e))?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
    }

    async fn get_range(&self, range: RangeRead<'_>) -> Result<Vec<KeyValue>, KvError> {
        // Nothing to read, and FoundationDB refuses an inverted range.
        if range.begin >= range.end {
            return Ok(Vec::new());
        }
        let (limit, mode) = if range.limit == 0 {
            // The caller takes the whole range: fetch it in the largest batches.
            (None, StreamingMode::WantAll)
        } else {
            // A known row count: ask for exactly that many in one batch.
            (Some(range.limit), StreamingMode::Exact)
        };
        let mut opt = RangeOption {
            begin: KeySelector::first_greater_or_equal(range.begin),
            end: KeySelector::first_greater_or_equal(range.end),
            limit,
            mode,
            reverse: range.reverse,
            ..RangeOption::default()
        };
        let mut out = Vec::new();
        let mut iteration = 1;
        loop {
            let page = self
                .tr
                .get_range(&opt, iteration, range.snapshot)
                .await
                .map_err(|e| self.error(e))?;
            append_page(&mut out, &page);
            // `next_range` ends the loop when the cluster reports no more
            // rows or the limit is reached, and otherwise moves the range's
            // near end past the last key returned.
            match opt.next_range(&page) {
                Some(next) => opt = next,
                None => return Ok(out),
            }
            iteration += 1;
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        if self.admit(key.len(), value.len()) {
            self.tr.set(key, value);
        }
    }

    fn clear(&mut self, key: &[u8]) {
        // No size check: a key over the limit cannot exist, and FoundationDB
        // ignores clearing one.
        self.wrote = true;
        self.sizes.mutation_bytes = self.sizes.mutation_bytes.saturating_add(key.len());
        self.tr.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.wrote = true;
        self.sizes.mutation_bytes = self
            .sizes
            .mutation_bytes
            .saturating_add(begin.len())
            .saturating_add(end.len());
        self.tr.clear_range(begin, end);
    }

    fn atomic_op(&mut self, key: &[u8], op: AtomicOp, param: &[u8]) {
        let mutation = match op {
            AtomicOp::Add => MutationType::Add,
            AtomicOp::Max => MutationType::Max,
            AtomicOp::Min => MutationType::Min,
        };
        if self.admit(key.len(), param.len()) {
            self.tr.atomic_op(key, param, mutation);
        }
    }

    fn set_versionstamped_key(&mut self, key: &[u8], value: &[u8]) {
        if let Err(why) = check_versionstamp_placement(key) {
            self.wrote = true;
            self.refuse(KvError::InvalidVersionstamp(why));
            return;
        }
        // The stored key loses its offset suffix.
        if self.admit(key.len() - OFFSET_SUFFIX_LEN, value.len()) {
            self.tr
                .atomic_op(key, value, MutationType::SetVersionstampedKey);
        }
    }

    fn set_versionstamped_value(&mut self, key: &[u8], value: &[u8]) {
        if let Err(why) = check_versionstamp_placement(value) {
            self.wrote = true;
            self.refuse(KvError::InvalidVersionstamp(why));
            return;
        }
        if self.admit(key.len(), value.len() - OFFSET_SUFFIX_LEN) {
            self.tr
                .atomic_op(key, value, MutationType::SetVersionstampedValue);
        }
    }

    async fn commit(mut self) -> Result<Versionstamp, KvError> {
        if let Some(err) = self.refused.take() {
            return Err(err);
        }
        if !self.wrote {
            return self.commit_read_only().await;
        }
        // Must be requested before the commit; it resolves once the commit
        // has succeeded.
        let stamp = self.tr.get_versionstamp();
        let sizes = self.sizes;
        let db = self.db;
        self.tr
            .commit()
            .await
            .map_err(|e| match FdbError::from(e) {
                // The commit was on its way when the time ran out.
                e if e.code() == code::TRANSACTION_TIMED_OUT => KvError::CommitUnknownResult,
                e => kv_error(e, &sizes),
            })?;
        let stamp = match stamp.await {
            Ok(stamp) => stamp,
            // FoundationDB dropped every mutation (clears of keys over the
            // size limit, which no key can match; empty ranges) and committed
            // read-only, without a commit version. Nothing was applied, so a
            // read version taken now orders it correctly against the commits
            // after it.
            Err(e) if e.code() == code::NO_COMMIT_VERSION => {
                let fresh = db.create_trx().map_err(KvError::engine)?;
                let read_version = fresh
                    .get_read_version()
                    .await
                    .map_err(|e| kv_error(e, &sizes))?;
                return read_only_stamp(read_version);
            }
            // The commit is durable from here on; failing to read its stamp
            // must not look like a retryable failure, or the caller would
            // apply it twice, but it did commit: an append must still reach
            // its recipients.
            Err(e) => {
                return Err(KvError::CommittedStampUnknown(
                    format!("reading the versionstamp failed: {e} ({})", e.code()).into(),
                ))
            }
        };
        let stamp = <[u8; VERSIONSTAMP_LEN]>::try_from(&stamp[..]).map_err(|_| {
            KvError::CommittedStampUnknown(
                format!("FoundationDB returned a {}-byte versionstamp", stamp.len()).into(),
            )
        })?;
        Ok(Versionstamp(stamp))
    }
}

/// Checks that a versionstamped key or value ends with a 4-byte little-endian
/// offset and that the 10-byte placeholder at that offset lies before it.
fn check_versionstamp_placement(bytes: &[u8]) -> Result<(), &'static str> {
    let Some((body, suffix)) = bytes.split_last_chunk::<OFFSET_SUFFIX_LEN>() else {
        return Err("shorter than its 4-byte offset suffix");
    };
    let offset = u32::from_le_bytes(*suffix) as usize;
    if offset
        .checked_add(VERSIONSTAMP_LEN)
        .is_none_or(|end| end > body.len())
    {
        return Err("the 10-byte placeholder does not fit before the offset suffix");
    }
    Ok(())
}

/// Appends one page of a range read. Keys and values are copied into one
/// buffer per page and handed out as slices of it: two allocations per page
/// instead of two per pair. The page's memory lives as long as any of its
/// pairs does.
fn append_page(out: &mut Vec<KeyValue>, page: &FdbValues) {
    let total = page
        .iter()
        .map(|kv| kv.key().len() + kv.value().len())
        .sum();
    let mut buf = Vec::with_capacity(total);
    for kv in page.iter() {
        buf.extend_from_slice(kv.key());
        buf.extend_from_slice(kv.value());
    }
    let buf = Bytes::from(buf);
    out.reserve(page.len());
    let mut at = 0;
    for kv in page.iter() {
        let key_end = at + kv.key().len();
        let value_end = key_end + kv.value().len();
        out.push(KeyValue {
            key: buf.slice(at..key_end),
            value: buf.slice(key_end..value_end),
        });
        at = value_end;
    }
}

/// Maps a FoundationDB error onto the KV layer's (table in the module docs).
fn kv_error(e: FdbError, sizes: &Sizes) -> KvError {
    match e.code() {
        code::NOT_COMMITTED => KvError::Conflict,
        code::COMMIT_UNKNOWN_RESULT => KvError::CommitUnknownResult,
        code::TRANSACTION_TOO_OLD => KvError::TransactionTooOld,
        code::TRANSACTION_TIMED_OUT => KvError::TimedOut,
        code::TRANSACTION_TOO_LARGE => KvError::TransactionTooLarge {
            size: sizes.mutation_bytes,
        },
        code::KEY_TOO_LARGE => KvError::TooLarge {
            what: "key",
            size: sizes.largest_key,
            limit: MAX_KEY_SIZE,
        },
        code::VALUE_TOO_LARGE => KvError::TooLarge {
            what: "value",
            size: sizes.largest_value,
            limit: MAX_VALUE_SIZE,
        },
        // `maybe_committed` codes land here too, and `KvError::Unavailable`
        // reports `maybe_committed()`, so a caller still treats them with care.
        _ if e.is_retryable() || e.is_maybe_committed() => KvError::Unavailable(Box::new(e)),
        _ => KvError::Engine(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versionstamp_placement_is_checked() {
        let mut key = b"k".to_vec();
        key.extend_from_slice(&[0xff; VERSIONSTAMP_LEN]);
        key.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(check_versionstamp_placement(&key), Ok(()));

        // Placeholder one byte past the end of the body.
        let mut late = b"k".to_vec();
        late.extend_from_slice(&[0xff; VERSIONSTAMP_LEN]);
        late.extend_from_slice(&2u32.to_le_bytes());
        assert!(check_versionstamp_placement(&late).is_err());

        assert!(check_versionstamp_placement(b"abc").is_err());
        let mut huge = vec![0; VERSIONSTAMP_LEN];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(check_versionstamp_placement(&huge).is_err());
    }

    #[test]
    fn error_codes_map_onto_kv_errors() {
        let sizes = Sizes {
            mutation_bytes: 11_000_000,
            largest_key: 10_001,
            largest_value: 100_001,
        };
        let map = |code| kv_error(FdbError::from_code(code), &sizes);
        assert!(matches!(map(1020), KvError::Conflict));
        assert!(matches!(map(1021), KvError::CommitUnknownResult));
        assert!(matches!(map(1007), KvError::TransactionTooOld));
        assert!(matches!(
            map(2101),
            KvError::TransactionTooLarge { size: 11_000_000 }
        ));
        assert!(matches!(
            map(2102),
            KvError::TooLarge {
                what: "key",
                size: 10_001,
                ..
            }
        ));
        assert!(matches!(
            map(2103),
            KvError::TooLarge {
                what: "value",
                size: 100_001,
                ..
            }
        ));
        // future_version: retryable.
        assert!(matches!(map(1009), KvError::Unavailable(_)));
        // cluster_version_changed: maybe committed.
        let e = map(1039);
        assert!(matches!(e, KvError::Unavailable(_)) && e.maybe_committed());
        // transaction_timed_out: not retryable.
        let e = map(1031);
        assert!(matches!(e, KvError::TimedOut) && !e.is_retryable());
    }
}
