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
//! Under a steady stream that a fast disk would commit one or two messages
//! at a time, a batch lingers briefly for company ([`Linger`]): fewer,
//! fuller commits, each fsync and its wake-ups shared by more messages.
//!
//! On a cluster (`split_by_conversation`) each conversation commits in
//! transactions of its own, one at a time, each taking every send that
//! queued behind the one before: a conversation whose transactions conflict
//! or retry (a hot group written through several nodes) holds up its own
//! sends, never the node's others. A delivery there names the inbox entry
//! its commit proved to come before it, or is a notification, so the order
//! of the sink calls never breaks a connection's order (one that arrives
//! out of line becomes a pull). Messages in flight are capped at the
//! queue's size: past it the loop stops taking sends, the queue fills, and
//! senders wait or are refused.
//!
//! A full queue is not the only refusal: when sends stand in line longer
//! than [`AppenderConfig::max_wait`], `try_append` refuses before the queue
//! fills (`crate::admission`), so an overloaded node answers `BUSY` at
//! once rather than acknowledging after its senders have given up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hanmadi_proto::ConversationId;
use hanmadi_storage::chat::{Appended, IdSource, NewMessage};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::{ChatStore, StoreError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::admission::{Admission, Ticket};
use crate::fanout::{Delivery, DeliverySink};
use crate::fatal::{guarded, AbortOnPanic};
use crate::presence::Presence;
use crate::RouterError;

/// Sizes of the appender.
#[derive(Clone, Copy, Debug)]
pub struct AppenderConfig {
    /// Sends that may wait for a commit.
    pub queue: usize,
    /// Most messages in one append.
    pub max_batch: usize,
    /// How long a batch may wait for more sends when the disk is idle but
    /// sends arrive steadily ([`Linger`]); zero never waits.
    pub linger: Duration,
    /// `try_append` refuses while no send has been answered within this
    /// for a while and [`AppenderConfig::admit_in_flight`] sends are in
    /// flight; zero refuses only when the queue is full.
    pub max_wait: Duration,
    /// Sends in flight that are always admitted, however slow answers are:
    /// enough to keep commits full while refusing.
    pub admit_in_flight: usize,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        Self {
            queue: 8192,
            max_batch: 512,
            linger: DEFAULT_LINGER,
            max_wait: DEFAULT_MAX_WAIT,
            admit_in_flight: 1024,
        }
    }
}

/// The default [`AppenderConfig::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);

/// The default [`AppenderConfig::max_wait`]: well under a client's request
/// timeout (10 s in the client library), so that a refused sender retries
/// rather than one that timed out resending what was stored.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

/// Where a send's outcome goes, and its place in the count of sends in
/// flight.
struct Reply {
    tx: oneshot::Sender<Result<Appended, RouterError>>,
    ticket: Ticket,
}

struct Job {
    msg: NewMessage,
    reply: Reply,
}

/// A handle to the node's appender. Cloning it is cheap; the appender task
/// ends after the last handle is dropped and the queue is drained.
#[derive(Clone, Debug)]
pub struct Appender {
    tx: mpsc::Sender<Job>,
    admission: Arc<Admission>,
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
        let admission = Admission::new(config.max_wait, config.admit_in_flight);
        let task = tokio::spawn(guarded(run(store, ids, presence, sink, rx, config)));
        (Self { tx, admission }, task)
    }

    /// Appends one message, waiting for room in the queue and then for its
    /// commit.
    ///
    /// # Errors
    ///
    /// The store's verdict on the message, or [`RouterError::ShuttingDown`].
    pub async fn append(&self, msg: NewMessage) -> Result<Appended, RouterError> {
        let (tx, rx) = oneshot::channel();
        let reply = Reply {
            tx,
            ticket: self.admission.ticket(),
        };
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
    /// [`RouterError::Busy`] when the queue is full or sends wait longer
    /// than [`AppenderConfig::max_wait`]; otherwise as [`Appender::append`].
    pub async fn try_append(&self, msg: NewMessage) -> Result<Appended, RouterError> {
        if !self.admission.admits() {
            return Err(RouterError::Busy);
        }
        let (tx, rx) = oneshot::channel();
        let reply = Reply {
            tx,
            ticket: self.admission.ticket(),
        };
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
    config: AppenderConfig,
) {
    let _fatal = AbortOnPanic("appender");
    let max_batch = config.max_batch.max(1);
    let online = move |u: u64| presence.is_online(u);
    let stage = Arc::new(Stage {
        store,
        ids,
        online: Box::new(online),
        sink,
    });
    if stage.store.config().split_by_conversation {
        return run_by_conversation(stage, rx, max_batch, config.queue.max(1)).await;
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
    let mut linger = Linger::new(config.linger);
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
                    linger.committed();
                    continue;
                }
            },
        };
        if taken == 0 {
            break;
        }
        // Under a steady stream, commits start at most one delay apart:
        // the batch gathers until then (and while the one before commits).
        if let Some(until) = linger.wait_until(taken, max_batch) {
            tokio::time::sleep_until(until.into()).await;
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            linger.gathered(jobs.len() - taken);
        }
        linger.count(jobs.len());
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
            linger.committed();
        }
        // Nothing else plans now: a plan that went stale meanwhile is made
        // again here, not beside the next batch's.
        stage
            .store
            .refresh_append(&mut prepared, &*stage.ids, &*stage.online)
            .await;
        let (committed_tx, committed) = oneshot::channel();
        let (delivered_tx, delivered) = oneshot::channel();
        last_task = Some(tokio::spawn(guarded(Arc::clone(&stage).commit(
            prepared,
            replies,
            committed_tx,
            delivered_before.replace(delivered),
            delivered_tx,
        ))));
        committing = Some(committed);
        linger.started = Instant::now();
        // tokio runs a task spawned from a worker next on that worker, and
        // no other worker may take it meanwhile: when sends are waiting,
        // the commit would wait until the next batch's planning awaits,
        // and the two stages would take turns instead of overlapping.
        // With none waiting, the wait for the next send yields anyway.
        if !rx.is_empty() {
            tokio::task::yield_now().await;
        }
    }
    // Queued sends are committed and answered before the task ends (each
    // batch's task ends after the one before it has delivered).
    if let Some(task) = last_task {
        let _ = task.await;
    }
}

/// When a batch waits for more sends before it is planned.
///
/// Each commit has a fixed cost (an fsync, the commit thread's wake-ups, a
/// task, the deliveries' socket writes) that is most of a message's CPU
/// when batches hold one or two messages: at a few thousand sends a second
/// a fast disk finishes each commit before the next send arrives. Like
/// PostgreSQL's `commit_delay`, a batch then waits `delay` for company, but
/// only while sends arrive fast enough that the wait is expected to gather
/// [`Linger::MIN_EXPECTED`] more: a lone message is never held. The wait
/// runs from the start of the commit before, so commits begin at most one
/// `delay` apart and a send waits at most `delay` past the commit it
/// missed. When commits last long enough to gather [`Linger::ENOUGH`]
/// sends on their own, nothing waits: the pipeline batches already, and
/// senders that wait for their acks before sending again would only be
/// slowed. Such senders send nothing while their batch waits, however fast
/// they are: a wait that gathered nothing turns waiting off for a window.
struct Linger {
    delay: Duration,
    /// When the last batch's commit started.
    started: Instant,
    /// Seconds a commit lasts, on average (from start to the loop seeing
    /// its end).
    commit_secs: f64,
    /// No waiting before this.
    suspended_until: Instant,
    /// Sends per second over the last whole window.
    rate: f64,
    window_start: Instant,
    window_jobs: usize,
}

impl Linger {
    /// Sends a wait must be expected to gather to be worth it.
    const MIN_EXPECTED: f64 = 2.0;
    /// Sends a commit gathering this many on its own needs no wait.
    const ENOUGH: f64 = 8.0;
    /// The span the arrival rate is measured over.
    const WINDOW: Duration = Duration::from_millis(100);

    fn new(delay: Duration) -> Self {
        Self {
            delay,
            started: Instant::now(),
            commit_secs: 0.0,
            suspended_until: Instant::now(),
            rate: 0.0,
            window_start: Instant::now(),
            window_jobs: 0,
        }
    }

    /// Until when a batch of `taken` sends gathers more, if it waits.
    fn wait_until(&self, taken: usize, max_batch: usize) -> Option<Instant> {
        if self.delay.is_zero() || taken >= max_batch / 2 {
            return None;
        }
        // After a quiet spell the last window's rate is stale: the one
        // still open says how quiet.
        let open = self.window_start.elapsed();
        let rate = if open >= 2 * Self::WINDOW {
            per_sec(self.window_jobs, open)
        } else {
            self.rate
        };
        let until = self.started + self.delay;
        let now = Instant::now();
        (rate * self.delay.as_secs_f64() >= Self::MIN_EXPECTED
            && rate * self.commit_secs < Self::ENOUGH
            && until > now
            && now >= self.suspended_until)
            .then_some(until)
    }

    /// Notes that a wait gathered `jobs` more sends.
    fn gathered(&mut self, jobs: usize) {
        if jobs == 0 {
            self.suspended_until = Instant::now() + Self::WINDOW;
        }
    }

    /// Notes that the last batch's commit has ended.
    fn committed(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        self.commit_secs = 0.8 * self.commit_secs + 0.2 * secs;
    }

    /// Counts `jobs` sends taken into a batch.
    fn count(&mut self, jobs: usize) {
        self.window_jobs += jobs;
        let elapsed = self.window_start.elapsed();
        if elapsed >= Self::WINDOW {
            self.rate = per_sec(self.window_jobs, elapsed);
            self.window_start = Instant::now();
            self.window_jobs = 0;
        }
    }
}

/// `jobs` over `elapsed`, per second.
fn per_sec(jobs: usize, elapsed: Duration) -> f64 {
    // Precision loss past 2^52 sends in a window does not arise.
    #[allow(clippy::cast_precision_loss)]
    let jobs = jobs as f64;
    jobs / elapsed.as_secs_f64()
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
        // Unwinding past the store's commit would skip this batch's live
        // deliveries while the next batch's go out.
        let _fatal = AbortOnPanic("appender's commit task");
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
        answer(replies, results);
    }
}

/// The appender of a cluster node: each conversation's sends commit in
/// transactions of their own, one at a time per conversation. Sends that
/// arrive while their conversation's transaction is in flight wait, and the
/// next transaction takes all of them: at low load a message commits alone
/// and at once, under load each conversation's transaction carries
/// everything that queued behind the last.
async fn run_by_conversation<K: Kv>(
    stage: Arc<Stage<K>>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    in_flight: usize,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    let waiting: Arc<Waiting> = Arc::default();
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
            if let Some(slice) = waiting.enqueue(conversation, slice, slice_permit) {
                let task = Committer {
                    stage: Arc::clone(&stage),
                    waiting: Arc::clone(&waiting),
                    conversation,
                    max_batch,
                    drained: false,
                };
                running.spawn(task.run(slice));
            }
        }
        drop(permit);
        while running.try_join_next().is_some() {}
    }
    // Queued sends are committed and answered before the task ends: each
    // committer drains its conversation's queue before it returns.
    while running.join_next().await.is_some() {}
}

/// Sends that wait for their conversation's transaction in flight. A
/// conversation has an entry exactly while a [`Committer`] runs for it.
#[derive(Default)]
struct Waiting {
    queues: parking_lot::Mutex<HashMap<ConversationId, Queued>>,
}

/// A conversation's waiting sends, with their share of the in-flight cap.
#[derive(Default)]
struct Queued {
    jobs: Vec<Job>,
    permit: Option<OwnedSemaphorePermit>,
}

type Slice = (Vec<Job>, Option<OwnedSemaphorePermit>);

impl Waiting {
    /// Queues `jobs` behind their conversation's transaction in flight, or,
    /// when there is none, registers one and hands them back to start it.
    fn enqueue(
        &self,
        conversation: ConversationId,
        jobs: Vec<Job>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<Slice> {
        let mut queues = self.queues.lock();
        match queues.get_mut(&conversation) {
            Some(queued) => {
                queued.jobs.extend(jobs);
                match (&mut queued.permit, permit) {
                    (Some(held), Some(more)) => held.merge(more),
                    (held @ None, more) => *held = more,
                    (Some(_), None) => {}
                }
                None
            }
            None => {
                queues.insert(conversation, Queued::default());
                Some((jobs, permit))
            }
        }
    }

    /// The next slice of `conversation`, at most `max` sends; `None`, and
    /// the conversation's entry gone, when nothing waits.
    fn next(&self, conversation: ConversationId, max: usize) -> Option<Slice> {
        let mut queues = self.queues.lock();
        let queued = queues.get_mut(&conversation)?;
        if queued.jobs.is_empty() {
            queues.remove(&conversation);
            return None;
        }
        let n = queued.jobs.len().min(max);
        let jobs: Vec<Job> = queued.jobs.drain(..n).collect();
        let permit = if queued.jobs.is_empty() {
            queued.permit.take()
        } else {
            queued.permit.as_mut().and_then(|p| p.split(n))
        };
        Some((jobs, permit))
    }
}

/// Commits one conversation's sends, a slice at a time, until none wait.
struct Committer<K: Kv> {
    stage: Arc<Stage<K>>,
    waiting: Arc<Waiting>,
    conversation: ConversationId,
    max_batch: usize,
    /// Set once the queue is drained and the entry removed.
    drained: bool,
}

impl<K: Kv> Committer<K> {
    async fn run(mut self, first: Slice) {
        let mut slice = Some(first);
        while let Some((jobs, permit)) = slice {
            let (batch, replies): (Vec<NewMessage>, Vec<Reply>) =
                jobs.into_iter().map(|j| (j.msg, j.reply)).unzip();
            let started = Instant::now();
            let results = self
                .stage
                .store
                .append(batch, &*self.stage.ids, &*self.stage.online)
                .await;
            self.stage.sink.committed(replies.len(), started.elapsed());
            deliver(&*self.stage.sink, &results);
            answer(replies, results);
            drop(permit);
            slice = self.waiting.next(self.conversation, self.max_batch);
        }
        self.drained = true;
    }
}

impl<K: Kv> Drop for Committer<K> {
    fn drop(&mut self) {
        // Only a panic (or the runtime's shutdown) ends a committer before
        // its queue is drained: drop the entry with its sends (their
        // senders see the appender gone) rather than leave the
        // conversation waiting for a committer that no longer runs.
        if !self.drained {
            self.waiting.queues.lock().remove(&self.conversation);
        }
    }
}

/// Answers each sender with its message's outcome.
fn answer(replies: Vec<Reply>, results: Vec<Result<Appended, StoreError>>) {
    if let Some(youngest) = replies.last() {
        youngest.ticket.answered();
    }
    for (reply, result) in replies.into_iter().zip(results) {
        // A sender that gave up waiting still had its message stored.
        let _ = reply.tx.send(result.map_err(RouterError::from));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(conversation: ConversationId, n: u8) -> Job {
        let (tx, _) = oneshot::channel();
        let reply = Reply {
            tx,
            ticket: Admission::new(Duration::ZERO, 0).ticket(),
        };
        Job {
            msg: NewMessage {
                conversation,
                sender: 1,
                client_msg_id: bytes::Bytes::from(vec![n]),
                sent_at: 0,
                kind: hanmadi_proto::pb::MessageKind::Text,
                body: String::new(),
                membership: None,
            },
            reply,
        }
    }

    fn ids(jobs: &[Job]) -> Vec<u8> {
        jobs.iter().map(|j| j.msg.client_msg_id[0]).collect()
    }

    #[test]
    fn a_conversation_in_flight_gathers_its_next_sends_in_order() {
        let permits = Arc::new(Semaphore::new(10));
        let permit = |n| Arc::clone(&permits).try_acquire_many_owned(n).ok();
        let waiting = Waiting::default();
        let c = ConversationId::Group(1);
        let other = ConversationId::Group(2);

        let (first, _held) = waiting
            .enqueue(c, vec![job(c, 1)], permit(1))
            .expect("starts");
        assert_eq!(ids(&first), [1]);
        // While it commits, more for it wait; another conversation starts.
        assert!(waiting
            .enqueue(c, vec![job(c, 2), job(c, 3)], permit(2))
            .is_none());
        assert!(waiting.enqueue(c, vec![job(c, 4)], permit(1)).is_none());
        let started = waiting.enqueue(other, vec![job(other, 9)], permit(1));
        assert!(started.is_some());
        assert_eq!(permits.available_permits(), 5);

        // The next transaction takes what waited, in order, up to the max.
        let (next, p) = waiting.next(c, 2).expect("waiting");
        assert_eq!(ids(&next), [2, 3]);
        drop(p);
        assert_eq!(
            permits.available_permits(),
            7,
            "permits travel with their sends"
        );
        let (last, p) = waiting.next(c, 2).expect("waiting");
        assert_eq!(ids(&last), [4]);
        drop(p);
        assert_eq!(permits.available_permits(), 8);
        // Drained: the entry goes, and the conversation's next send starts
        // a transaction at once.
        assert!(waiting.next(c, 2).is_none());
        assert!(waiting.enqueue(c, vec![job(c, 5)], permit(1)).is_some());
    }

    fn steady(rate: f64) -> Linger {
        let mut linger = Linger::new(Duration::from_millis(1));
        linger.rate = rate;
        linger.started = Instant::now();
        linger
    }

    #[test]
    fn a_lone_message_is_never_held() {
        assert!(Linger::new(Duration::from_millis(1))
            .wait_until(1, 512)
            .is_none());
        assert!(steady(1_000.0).wait_until(1, 512).is_none());
    }

    #[test]
    fn a_steady_stream_waits_until_one_delay_past_the_last_commit() {
        let linger = steady(4_000.0);
        let until = linger.wait_until(1, 512).expect("waits");
        assert_eq!(until, linger.started + Duration::from_millis(1));
        assert!(linger.wait_until(300, 512).is_none(), "a big batch goes");
    }

    #[test]
    fn no_wait_when_commits_gather_enough_or_waiting_gathered_nothing() {
        let mut slow_disk = steady(4_000.0);
        slow_disk.commit_secs = 0.004;
        assert!(slow_disk.wait_until(1, 512).is_none());

        let mut closed_loop = steady(4_000.0);
        closed_loop.gathered(0);
        assert!(closed_loop.wait_until(1, 512).is_none());

        let mut off = steady(4_000.0);
        off.delay = Duration::ZERO;
        assert!(off.wait_until(1, 512).is_none());
    }
}
