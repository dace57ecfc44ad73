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
//!
//! - [`conflict`]: key ranges and the write sets reads are checked against.
//! - [`txn`]: a transaction's read view and buffered writes.
//! - [`resolve`]: the group resolver.
//! - [`atomic`]: FoundationDB's atomic operations.

mod atomic;
mod conflict;
mod resolve;
mod txn;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::backend::{Backend, Snapshot};
use crate::kv::{KvError, Versionstamp, MAX_TRANSACTION_AGE, MAX_TRANSACTION_SIZE};

use conflict::WriteSet;
pub(crate) use txn::forward_txn_ops;
pub use txn::{CommitRequest, Txn};

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
        Txn::new(Arc::clone(self))
    }

    /// A snapshot and its version, registered as a live reader when
    /// `register`.
    fn take_read_view(&self, register: bool) -> (u64, B::Snapshot) {
        // Snapshot and version are taken under the resolver lock, and the
        // resolver publishes a version only after its batch is applied, so a
        // snapshot is never older than its version (at worst newer, which
        // can only cause a needless conflict, never a missed one).
        let mut r = self.resolver.lock();
        let snapshot = self.backend.snapshot();
        let version = r.version;
        if register {
            *r.readers.entry(version).or_insert(0) += 1;
        }
        (version, snapshot)
    }

    /// Registers a reader of `version` late, at its first conflict-checked
    /// read; `false` when a newer version was published since, whose write
    /// sets may not have been kept.
    fn register_reader(&self, version: u64) -> bool {
        let mut r = self.resolver.lock();
        if r.version != version {
            return false;
        }
        *r.readers.entry(version).or_insert(0) += 1;
        true
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

    /// Drops a request without applying it.
    pub fn abandon(&self, req: CommitRequest) {
        if let Some(rv) = req.read_version {
            self.release_reader(rv);
        }
    }

    /// Live read versions, counted once per transaction holding one.
    #[cfg(test)]
    fn live_readers(&self) -> usize {
        self.resolver.lock().readers.values().sum()
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

/// A commit request on its way to the resolver. Dropped before it gets
/// there (its commit future was cancelled while it waited for room or a
/// turn), it releases the read version it registered: a reader that never
/// finishes would make the resolver keep every later write set, for good.
#[derive(Debug)]
pub struct Handoff<'a, B: Backend> {
    core: &'a Core<B>,
    req: Option<CommitRequest>,
}

impl<'a, B: Backend> Handoff<'a, B> {
    /// Holds `req` of `core` until [`Handoff::hand_over`].
    pub fn new(core: &'a Core<B>, req: CommitRequest) -> Self {
        Self {
            core,
            req: Some(req),
        }
    }

    /// The request, now the caller's to finish.
    pub fn hand_over(mut self) -> CommitRequest {
        self.req.take().expect("a handoff is handed over once")
    }
}

impl<B: Backend> Drop for Handoff<'_, B> {
    fn drop(&mut self) {
        if let Some(req) = self.req.take() {
            self.core.abandon(req);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{Core, Handoff, Limits};
    use crate::memory::MemoryBackend;

    #[test]
    fn a_request_dropped_on_its_way_releases_its_read_version() {
        let core = Core::open(MemoryBackend::new(), Limits::default()).unwrap();
        let mut txn = core.begin();
        // A conflict-checked read registers the transaction as a reader.
        assert_eq!(txn.get_now(b"k", false).unwrap(), None);
        txn.set_now(b"k", b"v");
        assert_eq!(core.live_readers(), 1);
        let (_, req) = txn.into_request().unwrap();
        drop(Handoff::new(&core, req));
        assert_eq!(core.live_readers(), 0);

        // Handed over, the request is the resolver's to finish.
        let mut txn = core.begin();
        assert_eq!(txn.get_now(b"k", false).unwrap(), None);
        txn.set_now(b"k", b"v");
        let (_, req) = txn.into_request().unwrap();
        let req = Handoff::new(&core, req).hand_over();
        assert_eq!(core.live_readers(), 1);
        core.commit_group(vec![req], false).pop().unwrap().unwrap();
        assert_eq!(core.live_readers(), 0);
    }
}
