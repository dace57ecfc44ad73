//! The appender: one per node, the only writer of messages (DESIGN §3.5).
//!
//! Sends wait in a bounded queue. One task takes whatever queued — up to
//! `max_batch` — and appends it as one batch: at low load a message commits
//! alone and at once, at high load hundreds share one commit and one fsync.
//! A full queue makes senders wait (`append`) or refuses them
//! (`try_append`).
//!
//! It is a pipeline of two stages on different cores: while one batch
//! commits (its fsync, then its deliveries and acks, in a task of its own),
//! the next is planned (dedup reads, ids, recipients, encoding). A batch's
//! commit starts only once the one before it has ended, so commits happen
//! in planning order and ids, conversations and inbox cursors stay in
//! order; deliveries go out in commit order too. Nothing is acknowledged
//! before its own commit is durable.
//!
//! On a cluster (`split_by_conversation`) each conversation's slice of a
//! batch commits in transactions of its own, and waits only for the same
//! conversation's slice of the batch before it: a conversation whose
//! transactions conflict or retry (a hot group written through several
//! nodes) holds up its own sends, never the node's others. Every delivery
//! there is a notification, so the order of the sink calls does not
//! matter. Messages in flight are capped at the queue's size: past it the
//! loop stops taking sends, the queue fills, and senders wait or are
//! refused.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::{FutureExt as _, Shared};
use hanmadi_proto::ConversationId;
use hanmadi_storage::chat::{Appended, IdSource, NewMessage};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::{ChatStore, StoreError};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

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
        let task = tokio::spawn(run(
            store,
            ids,
            presence,
            sink,
            rx,
            config.max_batch.max(1),
            config.queue.max(1),
        ));
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
    in_flight: usize,
) {
    let online = move |u: u64| presence.is_online(u);
    let stage = Arc::new(Stage {
        store,
        ids,
        online: Box::new(online),
        sink,
    });
    if stage.store.config().split_by_conversation {
        return run_by_conversation(stage, rx, max_batch, in_flight).await;
    }
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    // Fires when the batch committing now has ended (stored or failed): the
    // next batch's commit starts only then, so commits happen in planning
    // order.
    let mut committing: Option<oneshot::Receiver<()>> = None;
    // Fires when the last batch's deliveries have been handed to the sink;
    // the next batch's wait for it.
    let mut delivered_before: Option<oneshot::Receiver<()>> = None;
    let mut last_task: Option<JoinHandle<()>> = None;
    loop {
        let taken = match committing.as_mut() {
            None => rx.recv_many(&mut jobs, max_batch).await,
            Some(committed) => tokio::select! {
                biased;
                n = rx.recv_many(&mut jobs, max_batch) => n,
                // A task that panicked dropped its sender: nothing to wait
                // for either way.
                _ = committed => {
                    committing = None;
                    continue;
                }
            },
        };
        if taken == 0 {
            break;
        }
        let mut replies = Vec::with_capacity(jobs.len());
        let batch: Vec<NewMessage> = jobs
            .drain(..)
            .map(|j| {
                replies.push(j.reply);
                j.msg
            })
            .collect();
        // Planned while the batch before commits.
        let mut prepared = stage
            .store
            .prepare_append(batch, &*stage.ids, &*stage.online)
            .await;
        if let Some(committed) = committing.take() {
            let _ = committed.await;
        }
        // Nothing else plans now: a plan that went stale meanwhile is made
        // again here, not beside the next batch's.
        stage
            .store
            .refresh_append(&mut prepared, &*stage.ids, &*stage.online)
            .await;
        let (committed_tx, committed) = oneshot::channel();
        let (delivered_tx, delivered) = oneshot::channel();
        last_task = Some(tokio::spawn(Arc::clone(&stage).commit(
            prepared,
            replies,
            committed_tx,
            delivered_before.replace(delivered),
            delivered_tx,
        )));
        committing = Some(committed);
    }
    // Queued sends are committed and answered before the task ends (each
    // batch's task ends after the one before it has delivered).
    if let Some(task) = last_task {
        let _ = task.await;
    }
}

/// What a batch's commit needs, shared by every batch.
struct Stage<K: Kv> {
    store: ChatStore<K>,
    ids: Arc<dyn IdSource>,
    online: Box<dyn Fn(u64) -> bool + Send + Sync>,
    sink: Arc<dyn DeliverySink>,
}

impl<K: Kv> Stage<K> {
    /// Commits a planned batch, then, after the batch before it has been
    /// delivered, delivers it in commit order and answers its senders.
    async fn commit(
        self: Arc<Self>,
        prepared: hanmadi_storage::chat::PreparedAppend<K>,
        replies: Vec<Reply>,
        committed: oneshot::Sender<()>,
        delivered_before: Option<oneshot::Receiver<()>>,
        delivered: oneshot::Sender<()>,
    ) {
        let n = replies.len();
        let started = std::time::Instant::now();
        let results = self
            .store
            .commit_append(prepared, &*self.ids, &*self.online)
            .await;
        let _ = committed.send(());
        self.sink.committed(n, started.elapsed());
        if let Some(before) = delivered_before {
            let _ = before.await;
        }
        deliver(&*self.sink, &results);
        let _ = delivered.send(());
        for (reply, result) in replies.into_iter().zip(results) {
            // A sender that gave up waiting still had its message stored.
            let _ = reply.send(result.map_err(RouterError::from));
        }
    }
}

/// The appender of a cluster node: each conversation's slice of a batch
/// commits on its own, after that conversation's slice of the batch before.
async fn run_by_conversation<K: Kv>(
    stage: Arc<Stage<K>>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    in_flight: usize,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    // The last slice of each conversation still committing: the next one
    // starts after it, so one sender's messages keep their order.
    let mut tails: HashMap<ConversationId, Shared<oneshot::Receiver<()>>> = HashMap::new();
    let mut running = JoinSet::new();
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        let taken = rx.recv_many(&mut jobs, max_batch).await;
        if taken == 0 {
            break;
        }
        // Past the cap the loop waits here, and the queue fills behind it.
        let Ok(mut permit) = Arc::clone(&permits)
            .acquire_many_owned(u32::try_from(taken).unwrap_or(u32::MAX))
            .await
        else {
            break;
        };
        tails.retain(|_, tail| tail.peek().is_none());
        let mut slices: Vec<(ConversationId, Vec<Job>)> = Vec::new();
        for job in jobs.drain(..) {
            let conversation = job.msg.conversation;
            match slices.iter_mut().find(|(c, _)| *c == conversation) {
                Some((_, slice)) => slice.push(job),
                None => slices.push((conversation, vec![job])),
            }
        }
        for (conversation, slice) in slices {
            let slice_permit = permit.split(slice.len());
            let before = tails.remove(&conversation);
            let (done_tx, done) = oneshot::channel();
            tails.insert(conversation, done.shared());
            let stage = Arc::clone(&stage);
            running.spawn(async move {
                if let Some(before) = before {
                    let _ = before.await;
                }
                let (batch, replies): (Vec<NewMessage>, Vec<Reply>) =
                    slice.into_iter().map(|j| (j.msg, j.reply)).unzip();
                let started = std::time::Instant::now();
                let results = stage.store.append(batch, &*stage.ids, &*stage.online).await;
                let _ = done_tx.send(());
                stage.sink.committed(replies.len(), started.elapsed());
                deliver(&*stage.sink, &results);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result.map_err(RouterError::from));
                }
                drop(slice_permit);
            });
        }
        drop(permit);
        while running.try_join_next().is_some() {}
    }
    // Queued sends are committed and answered before the task ends.
    while running.join_next().await.is_some() {}
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
