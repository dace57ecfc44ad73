//! Delivery across nodes: notify, then pull (DESIGN §3.6, §6).
//!
//! On one node a commit's frames go straight onto its recipients' queues.
//! In a cluster, other nodes' commits interleave with this node's in
//! versionstamp order, and a frame pushed straight from a local commit
//! could overtake an earlier commit made elsewhere for the same user, which
//! the connection's cursor would then skip. So in a cluster a commit hands
//! this node's connections a frame only with the inbox entry the commit
//! proved to come right before it ([`Follows::Entry`]), and a connection
//! writes it only if that entry is the last it wrote. Every other delivery
//! only *notifies*: the recipient connection reads its inbox after its
//! last delivered cursor ([`Outbound::PullUntil`](crate::registry::Outbound)),
//! and a read sees every commit before the newest it returns, in order.
//!
//! [`Follows::Entry`]: crate::registry::Follows
//!
//! After a commit, [`ClusterSink`] notifies this node's recipients at once
//! and hands the recipients to the notifier, which looks up the presence
//! index for the peers holding them and sends each peer one event per
//! round naming its users, over the link. The change feed is the backstop:
//! every node reads it every `backstop` ([`run_feed`]) and pulls for the
//! users it names, so an event the link lost delays a delivery by at most
//! about that long; pulls that find the connection already past the entry
//! read nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use hanmadi_router::{Delivery, DeliverySink, Presence, Router};
use hanmadi_storage::chat::{Cursor, FeedEvent, FeedPosition, CURSOR_LEN};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::{LinkEvent, Links};
use super::presence::PresenceIndex;
use crate::registry::Registry;

/// A cursor past every other: "pull whatever is there".
const ANY: Cursor = Cursor([0xff; CURSOR_LEN]);
/// Notices waiting for the notifier; more are dropped (the feed has them).
const NOTICE_QUEUE: usize = 16_384;
/// Presence lookups one round of the notifier runs at once.
const LOOKUPS: usize = 64;
/// Rounds of presence lookups in flight at once.
const MISS_ROUNDS: usize = 4;
/// Feed entries read per page.
const FEED_PAGE: usize = 1000;
/// Feed entries are kept this long after a node read past them.
const FEED_KEEP: Duration = Duration::from_secs(600);

/// Users with new inbox entries up to `until`, for the peers that hold
/// them.
#[derive(Debug)]
pub struct Notice {
    users: Vec<u64>,
    until: Cursor,
}

/// The router's delivery sink and presence index on a cluster node.
pub struct ClusterSink<K: Kv> {
    registry: Arc<Registry>,
    presence: Arc<PresenceIndex<K>>,
    links: Arc<Links>,
    notices: mpsc::Sender<Notice>,
    dropped: AtomicU64,
}

impl<K: Kv> std::fmt::Debug for ClusterSink<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSink").finish_non_exhaustive()
    }
}

impl<K: Kv> ClusterSink<K> {
    /// A sink over this node's `registry`, and the notifier's queue, whose
    /// other end goes to [`run_notifier`].
    pub fn new(
        registry: Arc<Registry>,
        presence: Arc<PresenceIndex<K>>,
        links: Arc<Links>,
    ) -> (Self, mpsc::Receiver<Notice>) {
        let (notices, rx) = mpsc::channel(NOTICE_QUEUE);
        let sink = Self {
            registry,
            presence,
            links,
            notices,
            dropped: AtomicU64::new(0),
        };
        (sink, rx)
    }

    fn notice(&self, users: Vec<u64>, until: Cursor) {
        if self.notices.try_send(Notice { users, until }).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<K: Kv> DeliverySink for ClusterSink<K> {
    fn deliver(&self, delivery: &Delivery<'_>) {
        // This node's connections take the message itself where the commit
        // proved what comes before it, and read their inboxes otherwise.
        self.registry.hand(delivery, true);
        let mut users = Vec::new();
        let mut until = Cursor([0; CURSOR_LEN]);
        for (user, cursor) in delivery.recipients() {
            users.push(user);
            until = until.max(cursor);
        }
        self.notice(users, until);
    }

    fn notify(&self, user: u64) {
        self.registry.notify(user);
        self.notice(vec![user], ANY);
    }

    fn committed(&self, messages: usize, latency: Duration) {
        self.registry.committed(messages, latency);
    }

    fn changed(&self, change: &FeedEvent) {
        self.links.broadcast(&LinkEvent {
            change: Some(change.clone()),
            ..LinkEvent::default()
        });
    }
}

impl<K: Kv> Presence for ClusterSink<K> {
    fn is_online(&self, user: u64) -> bool {
        self.registry.is_here(user) || self.presence.cached_elsewhere(user)
    }
}

/// Sends the peers holding each notice's users one event per round, until
/// the sink is gone or `shutdown`.
///
/// Users whose holders the presence cache knows are sent at once. The
/// others are looked up in storage off the loop, at most
/// [`MISS_ROUNDS`] rounds at a time, and sent as their lookups finish: a
/// slow read delays only the users it is for, never the next round.
pub async fn run_notifier<K: Kv>(
    mut notices: mpsc::Receiver<Notice>,
    presence: Arc<PresenceIndex<K>>,
    links: Arc<Links>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(256);
    let rounds = Arc::new(Semaphore::new(MISS_ROUNDS));
    // Dropped with the loop: lookups still running end with it.
    let mut lookups = JoinSet::new();
    loop {
        let n = tokio::select! {
            n = notices.recv_many(&mut batch, 256) => n,
            () = shutdown.cancelled() => 0,
        };
        if n == 0 {
            return;
        }
        while lookups.try_join_next().is_some() {}
        let mut users: HashMap<u64, Cursor> = HashMap::new();
        for notice in batch.drain(..) {
            for user in notice.users {
                let until = users.entry(user).or_insert(notice.until);
                *until = (*until).max(notice.until);
            }
        }
        let mut per_node = PerNode::new();
        let mut missed = Vec::new();
        for (user, until) in users {
            match presence.cached_peers_of(user) {
                Some(nodes) => add(&mut per_node, user, until, nodes),
                None => missed.push((user, until)),
            }
        }
        send(&links, per_node);
        if missed.is_empty() {
            continue;
        }
        // Past the cap the loop waits here, and notices queue behind it.
        let permit = tokio::select! {
            permit = Arc::clone(&rounds).acquire_owned() => permit,
            () = shutdown.cancelled() => return,
        };
        let Ok(permit) = permit else {
            return;
        };
        let (presence, links) = (Arc::clone(&presence), Arc::clone(&links));
        lookups.spawn(async move {
            let presence = &presence;
            let mut found = futures::stream::iter(missed)
                .map(|(user, until)| async move { (user, until, presence.peers_of(user).await) })
                .buffer_unordered(LOOKUPS)
                .ready_chunks(LOOKUPS);
            while let Some(chunk) = found.next().await {
                let mut per_node = PerNode::new();
                for (user, until, nodes) in chunk {
                    match nodes {
                        Ok(nodes) => add(&mut per_node, user, until, nodes),
                        // The feed's backstop covers them.
                        Err(e) => tracing::debug!(user, error = %e, "presence lookup failed"),
                    }
                }
                send(&links, per_node);
            }
            drop(permit);
        });
    }
}

/// Per peer: the users to pull for, and the newest entry among them.
type PerNode = HashMap<u64, (Vec<u64>, Cursor)>;

fn add(per_node: &mut PerNode, user: u64, until: Cursor, nodes: Vec<u64>) {
    for node in nodes {
        let (users, max) = per_node.entry(node).or_insert_with(|| (Vec::new(), until));
        users.push(user);
        *max = (*max).max(until);
    }
}

fn send(links: &Links, per_node: PerNode) {
    for (node, (users, until)) in per_node {
        links.send(
            node,
            &LinkEvent {
                change: Some(FeedEvent {
                    users,
                    ..FeedEvent::default()
                }),
                until: Bytes::copy_from_slice(until.as_bytes()),
                present: Vec::new(),
            },
        );
    }
}

/// What a node does with an event from a peer or the feed.
#[derive(Debug)]
pub struct Apply<K: Kv> {
    /// The router, whose caches drop what changed. Weak: the router's sink
    /// holds the links, whose handler holds this.
    pub router: Weak<Router<K>>,
    /// The connections that pull.
    pub registry: Arc<Registry>,
    /// The presence cache.
    pub presence: Arc<PresenceIndex<K>>,
}

impl<K: Kv> Apply<K> {
    /// Acts on `change`, whose `i`th user's inbox entries lie at or before
    /// `until(i)`.
    pub fn change(&self, change: &FeedEvent, until: impl Fn(usize) -> Cursor) {
        for (i, &user) in change.users.iter().enumerate() {
            self.registry.pull_until(user, until(i));
        }
        if !(change.groups.is_empty() && change.accounts.is_empty() && change.blocks.is_empty()) {
            if let Some(router) = self.router.upgrade() {
                router.forget(change);
            }
            for &user in &change.accounts {
                self.registry.revoke_user(user);
            }
        }
    }

    /// Acts on an event from a peer.
    pub fn link_event(&self, event: LinkEvent) {
        self.presence.forget(&event.present);
        if let Some(change) = &event.change {
            let until = Cursor::parse(&event.until).ok().flatten().unwrap_or(ANY);
            self.change(change, |_| until);
        }
    }
}

/// Reads the change feed every `every` from where it stood at start, and
/// acts on each entry, until `shutdown`; drops entries read more than
/// [`FEED_KEEP`] ago.
pub async fn run_feed<K: Kv>(
    store: ChatStore<K>,
    apply: Arc<Apply<K>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut position = loop {
        match store.feed_head().await {
            Ok(head) => break head,
            Err(e) => tracing::warn!(error = %e, "reading the change feed's head failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    };
    let mut read: VecDeque<(Instant, FeedPosition)> = VecDeque::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            let page = match store.feed_after(position, FEED_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the change feed failed");
                    break;
                }
            };
            for (at, change) in &page {
                // Each user through their own entry: a connection that the
                // committing node (this one, often) handed it reads nothing.
                apply.change(change, |i| at.until_of(change, i));
                apply.registry.metrics().feed_entries.inc();
                position = Some(*at);
            }
            if page.len() < FEED_PAGE {
                break;
            }
        }
        if let Some(p) = position {
            if read.back().is_none_or(|(_, last)| *last != p) {
                read.push_back((Instant::now(), p));
            }
        }
        let mut expired = None;
        while read.front().is_some_and(|(t, _)| t.elapsed() > FEED_KEEP) {
            expired = read.pop_front().map(|(_, p)| p);
        }
        if let Some(p) = expired {
            if let Err(e) = store.trim_feed(p).await {
                tracing::warn!(error = %e, "trimming the change feed failed");
            }
        }
    }
}
