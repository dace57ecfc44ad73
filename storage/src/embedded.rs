//! The embedded engine: FoundationDB's transaction semantics (from
//! [`crate::occ`]) over an on-disk [`Backend`], with group commit.
//!
//! Commits go to one resolver thread. It takes every commit that queued
//! while the previous batch was being written and applies them together in
//! one durable backend write, so one fsync serves them all. At low load a
//! commit is written alone and at once. The async caller only awaits a
//! channel: fsync never blocks an async worker. The channel is bounded
//! ([`MAX_QUEUED`]): when the disk falls behind, committers wait for room
//! instead of piling requests up in memory.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::backend::Backend;
use crate::kv::{Kv, KvError, KvTxn, Versionstamp};
use crate::occ::{forward_txn_ops, CommitRequest, Core, Handoff, Limits, Txn};

/// Most commits resolved and written together in one backend batch.
const MAX_GROUP: usize = 1024;

/// Most commits waiting for the resolver thread: two full groups, so the
/// next group is always gathered while one is written.
const MAX_QUEUED: usize = 2 * MAX_GROUP;

/// Options of the embedded engine.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedOptions {
    /// Wait for fsync before a commit returns (the default). Without it a
    /// crash may lose the last commits, but never tears one.
    pub sync: bool,
    /// Transaction limits.
    pub limits: Limits,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            sync: true,
            limits: Limits::default(),
        }
    }
}

type Reply = oneshot::Sender<Result<Versionstamp, KvError>>;

/// A database on a local backend.
#[derive(Debug)]
pub struct EmbeddedKv<B: Backend> {
    core: Arc<Core<B>>,
    commits: mpsc::Sender<(CommitRequest, Reply)>,
}

impl<B: Backend> Clone for EmbeddedKv<B> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
            commits: self.commits.clone(),
        }
    }
}

impl<B: Backend> EmbeddedKv<B> {
    /// Runs the engine over `backend`, resuming its commit version. The
    /// resolver thread ends when the last clone of the handle is dropped.
    ///
    /// # Errors
    ///
    /// A failure reading the stored version or starting the thread.
    pub fn with_backend(backend: B, options: EmbeddedOptions) -> Result<Self, KvError> {
        let core = Core::open(backend, options.limits)?;
        let (tx, mut rx) = mpsc::channel::<(CommitRequest, Reply)>(MAX_QUEUED);
        let resolver = Arc::clone(&core);
        std::thread::Builder::new()
            .name("hanmadi-commit".into())
            .spawn(move || resolve_loop(&resolver, &mut rx, options.sync))
            .map_err(KvError::engine)?;
        Ok(Self { core, commits: tx })
    }

    /// The backend under the engine.
    pub fn backend(&self) -> &B {
        self.core.backend()
    }
}

fn resolve_loop<B: Backend>(
    core: &Core<B>,
    rx: &mut mpsc::Receiver<(CommitRequest, Reply)>,
    sync: bool,
) {
    let mut requests = Vec::with_capacity(MAX_GROUP);
    let mut replies = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        requests.push(first.0);
        replies.push(first.1);
        while requests.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok((req, reply)) => {
                    requests.push(req);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let outcomes = core.commit_group(std::mem::take(&mut requests), sync);
        for (reply, outcome) in replies.drain(..).zip(outcomes) {
            // The committer may have gone away (its future was dropped); the
            // commit's outcome stands either way.
            let _ = reply.send(outcome);
        }
    }
}

impl<B: Backend> Kv for EmbeddedKv<B> {
    type Txn = EmbeddedTxn<B>;

    fn begin(&self) -> Result<Self::Txn, KvError> {
        Ok(EmbeddedTxn {
            txn: self.core.begin(),
            commits: self.commits.clone(),
        })
    }
}

/// A transaction on an [`EmbeddedKv`].
#[derive(Debug)]
pub struct EmbeddedTxn<B: Backend> {
    txn: Txn<B>,
    commits: mpsc::Sender<(CommitRequest, Reply)>,
}

impl<B: Backend> KvTxn for EmbeddedTxn<B> {
    forward_txn_ops!(txn);

    fn commit(self) -> impl Future<Output = Result<Versionstamp, KvError>> + Send {
        let commits = self.commits;
        let prepared = self.txn.into_request();
        async move {
            let (core, req) = prepared?;
            if req.is_read_only() {
                return Ok(core.finish_read_only(req));
            }
            // Cancelled while it waits for room in the queue, the commit
            // releases its read version (the handoff's drop).
            let handoff = Handoff::new(&core, req);
            let room = commits.reserve().await.map_err(|_| closed())?;
            let req = handoff.hand_over();
            let (tx, rx) = oneshot::channel();
            room.send((req, tx));
            rx.await.map_err(|_| closed())?
        }
    }
}

fn closed() -> KvError {
    KvError::engine(std::io::Error::other(
        "the embedded engine's commit thread has stopped",
    ))
}
