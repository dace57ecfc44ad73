//! The appender: one per node, the only writer of messages (DESIGN §3.5).
//!
//! Sends wait in a bounded queue. One task takes whatever queued while the
//! previous commit was in flight — up to `max_batch` — and appends it as one
//! batch: at low load a message commits alone and at once, at high load
//! hundreds share one commit and one fsync. A full queue makes senders wait
//! (`append`) or refuses them (`try_append`). Nothing is acknowledged before
//! its commit is durable; deliveries go out in commit order, then the acks.

use std::sync::Arc;

use hanmadi_storage::chat::{Appended, IdSource, NewMessage};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::{ChatStore, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fanout::{Delivery, DeliverySink};
use crate::presence::Presence;
use crate::RouterError;

/// Sizes of the appender.
#[derive(Clone, Copy, Debug)]
pub struct AppenderConfig {
    /// Sends that may wait for a commit.
    pub queue: usize,
    /// Most messages in one append.
    pub max_batch: usize,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        Self {
            queue: 8192,
            max_batch: 512,
        }
    }
}

type Reply = oneshot::Sender<Result<Appended, RouterError>>;

struct Job {
    msg: NewMessage,
    reply: Reply,
}

/// A handle to the node's appender. Cloning it is cheap; the appender task
/// ends after the last handle is dropped and the queue is drained.
#[derive(Clone, Debug)]
pub struct Appender {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("sender", &self.msg.sender)
            .finish()
    }
}

impl Appender {
    /// Starts the appender task on the current tokio runtime.
    pub fn start<K: Kv>(
        store: ChatStore<K>,
        ids: Arc<dyn IdSource>,
        presence: Arc<dyn Presence>,
        sink: Arc<dyn DeliverySink>,
        config: AppenderConfig,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let task = tokio::spawn(run(store, ids, presence, sink, rx, config.max_batch.max(1)));
        (Self { tx }, task)
    }

    /// Appends one message, waiting for room in the queue and then for its
    /// commit.
    ///
    /// # Errors
    ///
    /// The store's verdict on the message, or [`RouterError::ShuttingDown`].
    pub async fn append(&self, msg: NewMessage) -> Result<Appended, RouterError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { msg, reply })
            .await
            .map_err(|_| RouterError::ShuttingDown)?;
        rx.await.map_err(|_| RouterError::ShuttingDown)?
    }

    /// Appends one message if the queue has room, then waits for its commit.
    ///
    /// # Errors
    ///
    /// [`RouterError::Busy`] when the queue is full; otherwise as
    /// [`Appender::append`].
    pub async fn try_append(&self, msg: NewMessage) -> Result<Appended, RouterError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Job { msg, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RouterError::Busy,
            mpsc::error::TrySendError::Closed(_) => RouterError::ShuttingDown,
        })?;
        rx.await.map_err(|_| RouterError::ShuttingDown)?
    }

    /// Room left in the queue.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

async fn run<K: Kv>(
    store: ChatStore<K>,
    ids: Arc<dyn IdSource>,
    presence: Arc<dyn Presence>,
    sink: Arc<dyn DeliverySink>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let mut replies = Vec::with_capacity(jobs.len());
        let batch: Vec<NewMessage> = jobs
            .drain(..)
            .map(|j| {
                replies.push(j.reply);
                j.msg
            })
            .collect();
        let online = |u: u64| presence.is_online(u);
        let n = batch.len();
        let started = std::time::Instant::now();
        let results = store.append(batch, &*ids, &online).await;
        sink.committed(n, started.elapsed());
        deliver(&*sink, &results);
        for (reply, result) in replies.into_iter().zip(results) {
            // A sender that gave up waiting still had its message stored.
            let _ = reply.send(result.map_err(RouterError::from));
        }
    }
}

/// Hands a batch's new messages to the sink in commit order.
fn deliver(sink: &dyn DeliverySink, results: &[Result<Appended, StoreError>]) {
    let mut fresh: Vec<&Appended> = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(a) if !a.duplicate => fresh.push(a),
            // It may be stored though its sender got an error: whoever it
            // was planned for pulls, or their cursors could later move past
            // an entry nobody delivered.
            Err(StoreError::MaybeStored { recipients, .. }) => {
                for &u in recipients {
                    sink.notify(u);
                }
            }
            _ => {}
        }
    }
    // Transactions of one batch may commit in any order (one per
    // conversation on a cluster): sort by versionstamp.
    fresh.sort_by_key(|a| a.cursors);
    for a in fresh {
        if a.cursors.is_some() {
            sink.deliver(&Delivery::new(a));
        } else {
            // Stored by an attempt whose outcome was unknown: the exact
            // cursors are not known here, so the recipients pull.
            for &u in &a.recipients {
                sink.notify(u);
            }
        }
    }
}
