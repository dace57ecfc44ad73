//! The simulated engine: FoundationDB's semantics in memory, with faults
//! injected from a seed. Tests run the chat keyspace on it so conflicts,
//! `commit_unknown_result` and the transaction limits are met on every run.
//!
//! Fault decisions are drawn, one per commit, from a ChaCha stream seeded by
//! [`SimOptions::seed`]: a run that commits in the same order draws the same
//! faults, so a failing seed replays (single-threaded runs commit in a fixed
//! order).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kv::{Kv, KvError, KvTxn, Versionstamp};
use crate::memory::MemoryBackend;
use crate::occ::{forward_txn_ops, Core, Limits, Txn};

/// Probabilities of each injected fault, per commit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Fail with `Conflict` without applying.
    pub conflict: f64,
    /// Apply, then report `CommitUnknownResult`.
    pub unknown_applied: f64,
    /// Report `CommitUnknownResult` without applying.
    pub unknown_not_applied: f64,
    /// Yield to the scheduler before committing, to shuffle interleavings.
    pub delay: f64,
}

impl Faults {
    /// No faults: the engine behaves like a healthy cluster.
    pub fn none() -> Self {
        Self::default()
    }

    /// A mix that hits every failure path often without starving progress.
    pub fn standard() -> Self {
        Self {
            conflict: 0.05,
            unknown_applied: 0.05,
            unknown_not_applied: 0.03,
            delay: 0.2,
        }
    }
}

/// Configuration of a simulated database.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// Seed of the fault stream.
    pub seed: u64,
    /// Fault probabilities.
    pub faults: Faults,
    /// Age and size limits.
    pub limits: Limits,
}

impl SimOptions {
    /// No faults, FoundationDB's limits.
    pub fn healthy() -> Self {
        Self {
            seed: 0,
            faults: Faults::none(),
            limits: Limits::default(),
        }
    }

    /// Standard faults from `seed`.
    pub fn faulty(seed: u64) -> Self {
        Self {
            seed,
            faults: Faults::standard(),
            limits: Limits::default(),
        }
    }
}

/// How many faults a simulated database has injected, for tests to check that
/// the paths they mean to exercise were taken.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Injected conflicts.
    pub conflicts: AtomicU64,
    /// Commits applied but reported unknown.
    pub unknown_applied: AtomicU64,
    /// Commits dropped and reported unknown.
    pub unknown_not_applied: AtomicU64,
    /// Commits that went through.
    pub commits: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    core: Arc<Core<MemoryBackend>>,
    /// The fault mix and the stream it is drawn from.
    faults: Mutex<(Faults, ChaCha8Rng)>,
    counts: FaultCounts,
}

/// A simulated FoundationDB database in memory.
#[derive(Clone, Debug)]
pub struct SimKv {
    shared: Arc<Shared>,
}

impl SimKv {
    /// A new, empty database.
    pub fn new(options: SimOptions) -> Self {
        let core = match Core::open(MemoryBackend::new(), options.limits) {
            Ok(core) => core,
            // An empty memory backend has no stored version to misread.
            Err(e) => unreachable!("opening an empty memory backend failed: {e}"),
        };
        Self {
            shared: Arc::new(Shared {
                core,
                faults: Mutex::new((options.faults, ChaCha8Rng::seed_from_u64(options.seed))),
                counts: FaultCounts::default(),
            }),
        }
    }

    /// Changes the fault mix from the next commit on (a test sets up
    /// healthy, then turns faults on).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.lock().0 = faults;
    }

    /// Faults injected so far.
    pub fn fault_counts(&self) -> &FaultCounts {
        &self.shared.counts
    }
}

impl Kv for SimKv {
    type Txn = SimTxn;

    fn begin(&self) -> Result<SimTxn, KvError> {
        Ok(SimTxn {
            txn: self.shared.core.begin(),
            shared: Arc::clone(&self.shared),
        })
    }
}

/// A transaction on a [`SimKv`].
#[derive(Debug)]
pub struct SimTxn {
    txn: Txn<MemoryBackend>,
    shared: Arc<Shared>,
}

enum Fate {
    Commit,
    Conflict,
    UnknownApplied,
    UnknownNotApplied,
}

impl Shared {
    fn draw(&self) -> (Fate, bool) {
        let mut guard = self.faults.lock();
        let (f, rng) = &mut *guard;
        let delay = rng.random_bool(f.delay.clamp(0.0, 1.0));
        let x: f64 = rng.random();
        let fate = if x < f.conflict {
            Fate::Conflict
        } else if x < f.conflict + f.unknown_applied {
            Fate::UnknownApplied
        } else if x < f.conflict + f.unknown_applied + f.unknown_not_applied {
            Fate::UnknownNotApplied
        } else {
            Fate::Commit
        };
        (fate, delay)
    }
}

impl KvTxn for SimTxn {
    forward_txn_ops!(txn);

    fn commit(self) -> impl Future<Output = Result<Versionstamp, KvError>> + Send {
        let shared = self.shared;
        let txn = self.txn;
        async move {
            let (core, mut req) = txn.into_request()?;
            if req.is_read_only() {
                return Ok(core.finish_read_only(req));
            }
            let (fate, delay) = shared.draw();
            if delay {
                // Cancelled at this turn, the commit releases its read
                // version (the handoff's drop).
                let handoff = crate::occ::Handoff::new(&core, req);
                tokio::task::yield_now().await;
                req = handoff.hand_over();
            }
            let counts = &shared.counts;
            match fate {
                Fate::Conflict => {
                    core.abandon(req);
                    counts.conflicts.fetch_add(1, Ordering::Relaxed);
                    Err(KvError::Conflict)
                }
                Fate::UnknownNotApplied => {
                    core.abandon(req);
                    counts.unknown_not_applied.fetch_add(1, Ordering::Relaxed);
                    Err(KvError::CommitUnknownResult)
                }
                Fate::UnknownApplied => {
                    commit_one(&core, req)?;
                    counts.unknown_applied.fetch_add(1, Ordering::Relaxed);
                    Err(KvError::CommitUnknownResult)
                }
                Fate::Commit => {
                    let stamp = commit_one(&core, req)?;
                    counts.commits.fetch_add(1, Ordering::Relaxed);
                    Ok(stamp)
                }
            }
        }
    }
}

fn commit_one(
    core: &Core<MemoryBackend>,
    req: crate::occ::CommitRequest,
) -> Result<Versionstamp, KvError> {
    core.commit_group(vec![req], true)
        .pop()
        .unwrap_or(Err(KvError::CommitUnknownResult))
}
