//! The KV layer: an ordered, transactional key-value interface shaped by what
//! FoundationDB does well. Engines implement only this; the chat keyspace
//! (`ChatStore`) is written once on top of it.
//!
//! # Contract every engine keeps
//!
//! - **Serializable transactions.** A transaction reads at a read version
//!   (fixed at its first read) and sees its own writes. At commit, if any key
//!   or range it read without `snapshot` was written by a transaction that
//!   committed after its read version, the commit fails with
//!   [`KvError::Conflict`] and nothing is applied.
//! - **Atomicity.** A commit applies all of a transaction's mutations or none.
//! - **Commit order.** Every successful commit returns a [`Versionstamp`];
//!   versionstamps sort bytewise in commit order and are unique per commit.
//! - **Versionstamped keys and values** are completed with the commit's
//!   versionstamp, so keys written later sort after keys written earlier.
//! - **Durability.** When `commit` returns `Ok`, the write survives a crash of
//!   the process (embedded: after fsync, unless configured otherwise).
//! - **Limits** (FoundationDB's): keys up to [`MAX_KEY_SIZE`], values up to
//!   [`MAX_VALUE_SIZE`], a transaction's mutations up to
//!   [`MAX_TRANSACTION_SIZE`], and a transaction older than
//!   [`MAX_TRANSACTION_AGE`] fails with [`KvError::TransactionTooOld`].
//! - **`commit_unknown_result`**: a commit may fail with
//!   [`KvError::CommitUnknownResult`] even though it was applied. Callers make
//!   retries harmless (the chat keyspace does so with its dedup entries).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

/// Largest key an engine accepts, in bytes (FoundationDB's limit).
pub const MAX_KEY_SIZE: usize = 10_000;
/// Largest value an engine accepts, in bytes (FoundationDB's limit).
pub const MAX_VALUE_SIZE: usize = 100_000;
/// Largest transaction (keys plus values of all mutations), in bytes.
pub const MAX_TRANSACTION_SIZE: usize = 10_000_000;
/// Oldest a transaction may get before reads and commit fail.
pub const MAX_TRANSACTION_AGE: Duration = Duration::from_secs(5);

/// Length of a commit's versionstamp: 8 bytes of commit version and 2 bytes
/// of order within that version, big-endian, as FoundationDB defines it.
pub const VERSIONSTAMP_LEN: usize = 10;

/// The 10-byte stamp of a commit. Sorts bytewise in commit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Versionstamp(pub [u8; VERSIONSTAMP_LEN]);

impl Versionstamp {
    /// Builds a stamp from a commit version and the order of the transaction
    /// inside that version.
    pub fn new(version: u64, batch_order: u16) -> Self {
        let mut b = [0u8; VERSIONSTAMP_LEN];
        b[..8].copy_from_slice(&version.to_be_bytes());
        b[8..].copy_from_slice(&batch_order.to_be_bytes());
        Self(b)
    }

    /// The commit version.
    pub fn version(&self) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(v)
    }
}

/// One key-value pair returned by a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
}

/// A range read: keys `begin <= k < end`, in key order or reversed.
#[derive(Clone, Copy, Debug)]
pub struct RangeRead<'a> {
    /// First key of the range, inclusive.
    pub begin: &'a [u8],
    /// End of the range, exclusive.
    pub end: &'a [u8],
    /// Most pairs to return; `0` means no limit.
    pub limit: usize,
    /// Return the last keys first.
    pub reverse: bool,
    /// A snapshot read adds no read conflict: a later write to the range does
    /// not abort this transaction.
    pub snapshot: bool,
}

impl<'a> RangeRead<'a> {
    /// A forward, conflict-checked read of `[begin, end)`.
    pub fn new(begin: &'a [u8], end: &'a [u8]) -> Self {
        Self {
            begin,
            end,
            limit: 0,
            reverse: false,
            snapshot: false,
        }
    }

    /// Sets the most pairs to return.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Reads from the end of the range backwards.
    #[must_use]
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    /// Makes the read a snapshot read (no read conflict).
    #[must_use]
    pub fn snapshot(mut self, snapshot: bool) -> Self {
        self.snapshot = snapshot;
        self
    }
}

/// Atomic read-modify-write operations, applied at commit time without a read
/// conflict, with FoundationDB's semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicOp {
    /// Little-endian integer addition, wrapping; a missing value counts as 0.
    Add,
    /// Little-endian unsigned maximum; a missing value takes the parameter.
    Max,
    /// Little-endian unsigned minimum; a missing value takes the parameter.
    Min,
}

/// What went wrong in a KV operation. [`KvError::is_retryable`] tells a retry
/// from giving up.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Another transaction wrote what this one read; nothing was applied.
    #[error("transaction conflict: a key it read was written after its read version")]
    Conflict,
    /// The commit may or may not have been applied.
    #[error("commit result unknown: the transaction may or may not have been applied")]
    CommitUnknownResult,
    /// The transaction outlived [`MAX_TRANSACTION_AGE`].
    #[error("transaction too old: it lived longer than {MAX_TRANSACTION_AGE:?}")]
    TransactionTooOld,
    /// The transaction's mutations exceed [`MAX_TRANSACTION_SIZE`].
    #[error("transaction too large: {size} bytes, the limit is {MAX_TRANSACTION_SIZE}")]
    TransactionTooLarge {
        /// Bytes the transaction tried to write.
        size: usize,
    },
    /// A key or value exceeds the engine's limit.
    #[error("{what} too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// A malformed versionstamped key or value (no room for the stamp).
    #[error("invalid versionstamp placement: {0}")]
    InvalidVersionstamp(&'static str),
    /// The engine is closed or failed; retrying in this process will not help.
    #[error("storage engine failed: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The commit was applied, but the engine could not report its
    /// versionstamp. Not retryable (running the transaction again would
    /// apply it twice), but [`KvError::maybe_committed`].
    #[error("committed, but its versionstamp is unknown: {0}")]
    CommittedStampUnknown(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The engine failed in a way that may pass (a cluster recovering).
    #[error("storage engine temporarily unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The transaction ran out of the time the engine gives it, waiting
    /// for a cluster it cannot reach. Not retried in place (the next
    /// attempt would wait as long), but the operation may succeed later.
    #[error("storage engine did not answer in time")]
    TimedOut,
}

impl KvError {
    /// Whether running the transaction again may succeed.
    ///
    /// [`KvError::CommitUnknownResult`] is retryable only for transactions
    /// that are harmless to apply twice; see [`KvError::maybe_committed`].
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KvError::Conflict
                | KvError::CommitUnknownResult
                | KvError::TransactionTooOld
                | KvError::Unavailable(_)
        )
    }

    /// Whether the operation may succeed if tried again later: the
    /// retryable errors, and a timeout, which is not retried in place.
    pub fn may_succeed_later(&self) -> bool {
        self.is_retryable() || matches!(self, KvError::TimedOut)
    }

    /// Whether the failed commit may nevertheless have been applied.
    pub fn maybe_committed(&self) -> bool {
        matches!(
            self,
            KvError::CommitUnknownResult
                | KvError::Unavailable(_)
                | KvError::CommittedStampUnknown(_)
        )
    }

    /// Wraps an engine's own error as a permanent failure.
    pub fn engine(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        KvError::Engine(Box::new(e))
    }
}

/// A transactional, ordered key-value store.
pub trait Kv: Clone + Send + Sync + 'static {
    /// The engine's transaction.
    type Txn: KvTxn;

    /// Starts a transaction.
    ///
    /// # Errors
    ///
    /// Fails when the engine is closed or failed.
    fn begin(&self) -> Result<Self::Txn, KvError>;

    /// Starts a transaction whose reads see at least every commit up to
    /// `version`, the version of a [`Versionstamp`] this store returned.
    /// An engine may read at a newer version; FoundationDB reads at exactly
    /// `version`, which spares it asking the cluster for a read version
    /// (a round trip). Such a read may fail with
    /// [`KvError::TransactionTooOld`] when `version` is too old, and its
    /// writes conflict with everything committed since `version`: it suits
    /// reads of what a known commit made.
    ///
    /// # Errors
    ///
    /// As [`Kv::begin`].
    fn begin_at(&self, version: u64) -> Result<Self::Txn, KvError> {
        let _ = version;
        self.begin()
    }
}

/// One transaction. Reads see the transaction's own writes. Mutations are
/// buffered and take effect at [`KvTxn::commit`]. Dropping a transaction
/// without committing discards it.
pub trait KvTxn: Send + Sync + Sized + 'static {
    /// Reads one key.
    ///
    /// # Errors
    ///
    /// [`KvError::TransactionTooOld`] past [`MAX_TRANSACTION_AGE`], or an
    /// engine failure.
    fn get(
        &self,
        key: &[u8],
        snapshot: bool,
    ) -> impl Future<Output = Result<Option<Bytes>, KvError>> + Send;

    /// Reads a range of keys.
    ///
    /// # Errors
    ///
    /// As [`KvTxn::get`].
    fn get_range(
        &self,
        range: RangeRead<'_>,
    ) -> impl Future<Output = Result<Vec<KeyValue>, KvError>> + Send;

    /// Sets `key` to `value`.
    fn set(&mut self, key: &[u8], value: &[u8]);

    /// Removes `key`.
    fn clear(&mut self, key: &[u8]);

    /// Removes every key in `[begin, end)`.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]);

    /// Applies an atomic operation to `key` at commit time.
    fn atomic_op(&mut self, key: &[u8], op: AtomicOp, param: &[u8]);

    /// Sets a key completed with the commit's versionstamp, in FoundationDB's
    /// format: `key` holds a 10-byte placeholder and ends with the
    /// placeholder's offset as a 4-byte little-endian integer, which is
    /// removed. (`foundationdb_tuple::pack_with_versionstamp` builds such keys.)
    fn set_versionstamped_key(&mut self, key: &[u8], value: &[u8]);

    /// Sets `key` to a value completed with the commit's versionstamp, in the
    /// same format as [`KvTxn::set_versionstamped_key`] applies to keys.
    fn set_versionstamped_value(&mut self, key: &[u8], value: &[u8]);

    /// Commits the transaction and returns its versionstamp.
    ///
    /// # Errors
    ///
    /// [`KvError::Conflict`], [`KvError::CommitUnknownResult`], a limit, or
    /// an engine failure. See the module documentation.
    fn commit(self) -> impl Future<Output = Result<Versionstamp, KvError>> + Send;
}

/// Backoff between attempts of a transaction retry loop, as FoundationDB's
/// `on_error` does it: exponential from 10 ms up to 1 s, with jitter, and a
/// bound on the attempts.
#[derive(Debug)]
pub struct Retry {
    attempt: u32,
    max_attempts: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self::new(100)
    }
}

impl Retry {
    /// A retry loop that gives up after `max_attempts` failed attempts.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            attempt: 0,
            max_attempts,
        }
    }

    /// Attempts failed so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Takes a failed attempt's error: returns it when it is not retryable
    /// (or the attempts are used up), else sleeps the backoff.
    ///
    /// # Errors
    ///
    /// `err` itself when retrying cannot help.
    pub async fn backoff(&mut self, err: KvError) -> Result<(), KvError> {
        self.attempt += 1;
        if !err.is_retryable() || self.attempt >= self.max_attempts {
            return Err(err);
        }
        // Conflicts retry at once the first time: the conflicting writer has
        // already committed, so the fresh read version sees its writes.
        if self.attempt == 1 && matches!(err, KvError::Conflict) {
            return Ok(());
        }
        let base_ms = 10u64.saturating_mul(1 << self.attempt.min(7)).min(1000);
        let jitter = rand::random::<u64>() % (base_ms / 2 + 1);
        tokio::time::sleep(Duration::from_millis(base_ms / 2 + jitter)).await;
        Ok(())
    }
}
