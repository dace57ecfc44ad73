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
//! round over the link. A recipient whose entry the commit chained travels
//! as the message itself with the entry before it ([`LinkDelivery`]), which
//! the peer's connections write as this node's do, without reading their
//! inboxes; the event names the others, to pull. The change feed is the backstop:
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
use hanmadi_storage::chat::{Before, Cursor, FeedEvent, FeedPosition, CURSOR_LEN};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;
use prost::Message as _;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::{LinkDelivery, LinkEvent, Links, USERS_PER_EVENT};
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
/// Most bytes of messages one link event carries (the link's frames stop
/// at 1 MiB).
const LINK_EVENT_BYTES: usize = 256 * 1024;
/// Largest message that travels over a link; peers pull larger ones, so one
/// delivery never outgrows an event.
const LINK_MESSAGE_BYTES: usize = LINK_EVENT_BYTES / 4;
/// Feed entries read per page.
const FEED_PAGE: usize = 1000;
/// Feed entries are kept this long after a node read past them.
const FEED_KEEP: Duration = Duration::from_secs(600);

/// Users with new inbox entries up to `until`, for the peers that hold
/// them.
#[derive(Debug)]
pub struct Notice {
    /// Users to pull through `until`.
    users: Vec<u64>,
    until: Cursor,
    /// Users whose entries the commit chained: each with its entry and
    /// the entry before it (`None`: the inbox's first).
    chained: Vec<(u64, Cursor, Option<Cursor>)>,
    /// The message, for `chained`.
    message: Bytes,
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

    fn notice(&self, notice: Notice) {
        if self.notices.try_send(notice).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<K: Kv> DeliverySink for ClusterSink<K> {
    fn deliver(&self, delivery: &Delivery<'_>) {
        // This node's connections take the message itself where the commit
        // proved what comes before it, and read their inboxes otherwise.
        self.registry.hand(delivery, true);
        // Peers get the message itself where the commit proved what comes
        // before it, and a notice to pull otherwise.
        let message = delivery.encoded();
        let carried = message.len() <= LINK_MESSAGE_BYTES;
        let mut users = Vec::new();
        let mut until = Cursor([0; CURSOR_LEN]);
        let mut chained = Vec::new();
        for (user, cursor, before) in delivery.chained() {
            match before {
                Before::Entry(c) if carried => chained.push((user, cursor, Some(c))),
                Before::Empty if carried => chained.push((user, cursor, None)),
                _ => {
                    users.push(user);
                    until = until.max(cursor);
                }
            }
        }
        let message = if chained.is_empty() {
            Bytes::new()
        } else {
            message.clone()
        };
        self.notice(Notice {
            users,
            until,
            chained,
            message,
        });
    }

    fn notify(&self, user: u64) {
        self.registry.notify(user);
        self.notice(Notice {
            users: vec![user],
            until: ANY,
            chained: Vec::new(),
            message: Bytes::new(),
        });
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
        let mut users: HashMap<u64, ForUser> = HashMap::new();
        for notice in batch.drain(..) {
            for user in notice.users {
                let until = &mut users.entry(user).or_default().until;
                *until = Some(until.map_or(notice.until, |u| u.max(notice.until)));
            }
            // In the order the notices arrive: commit order within a
            // conversation, not across conversations, whose committers run
            // side by side. Each names the entry before it, so a receiving
            // connection writes one out of line as a pull, never a gap.
            for (user, cursor, before) in notice.chained {
                let message = notice.message.clone();
                users
                    .entry(user)
                    .or_default()
                    .deliveries
                    .push((cursor, before, message));
            }
        }
        let mut per_node = PerNode::new();
        let mut missed = Vec::new();
        for (user, pending) in users {
            match presence.cached_peers_of(user) {
                Some(nodes) => add(&mut per_node, user, pending, nodes),
                None => missed.push((user, pending)),
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
                .map(
                    |(user, pending)| async move { (user, pending, presence.peers_of(user).await) },
                )
                .buffer_unordered(LOOKUPS)
                .ready_chunks(LOOKUPS);
            while let Some(chunk) = found.next().await {
                let mut per_node = PerNode::new();
                for (user, pending, nodes) in chunk {
                    match nodes {
                        Ok(nodes) => add(&mut per_node, user, pending, nodes),
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

/// What one round of the notifier has for one user: a pull through
/// `until`, and messages chained to the entries before them.
#[derive(Default)]
struct ForUser {
    until: Option<Cursor>,
    /// Each message's entry, the entry before it, and the message.
    deliveries: Vec<(Cursor, Option<Cursor>, Bytes)>,
}

/// What one round sends one peer.
#[derive(Default)]
struct ForNode {
    /// Users to pull for, and the newest entry among them.
    users: Vec<u64>,
    until: Option<Cursor>,
    deliveries: Vec<LinkDelivery>,
}

type PerNode = HashMap<u64, ForNode>;

fn add(per_node: &mut PerNode, user: u64, pending: ForUser, nodes: Vec<u64>) {
    for node in nodes {
        let out = per_node.entry(node).or_default();
        if let Some(until) = pending.until {
            out.users.push(user);
            out.until = Some(out.until.map_or(until, |u| u.max(until)));
        }
        out.deliveries
            .extend(
                pending
                    .deliveries
                    .iter()
                    .map(|(cursor, before, message)| LinkDelivery {
                        user,
                        cursor: Bytes::copy_from_slice(cursor.as_bytes()),
                        before: before
                            .map_or_else(Bytes::new, |b| Bytes::copy_from_slice(b.as_bytes())),
                        message: message.clone(),
                    }),
            );
    }
}

fn send(links: &Links, per_node: PerNode) {
    for (node, out) in per_node {
        for event in events(out) {
            links.send(node, &event);
        }
    }
}

/// Splits what one peer gets into events that each stay well under a link
/// frame: at most [`USERS_PER_EVENT`] users to pull and about
/// [`LINK_EVENT_BYTES`] of messages. A user's messages stay in order across
/// the events, which the link keeps in order.
fn events(out: ForNode) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    let mut event = LinkEvent::default();
    if let Some(until) = out.until {
        let until = Bytes::copy_from_slice(until.as_bytes());
        let mut users = out.users;
        while users.len() > USERS_PER_EVENT {
            let rest = users.split_off(USERS_PER_EVENT);
            events.push(pull_event(users, until.clone()));
            users = rest;
        }
        event = pull_event(users, until);
    }
    let mut bytes = event.encoded_len();
    for d in out.deliveries {
        let size = d.encoded_len();
        if bytes + size > LINK_EVENT_BYTES && !event.deliveries.is_empty() {
            events.push(std::mem::take(&mut event));
            bytes = 0;
        }
        bytes += size;
        event.deliveries.push(d);
    }
    if event != LinkEvent::default() {
        events.push(event);
    }
    events
}

/// An event asking a peer to pull `users`' inboxes through `until`.
fn pull_event(users: Vec<u64>, until: Bytes) -> LinkEvent {
    LinkEvent {
        change: Some(FeedEvent {
            users,
            ..FeedEvent::default()
        }),
        until,
        ..LinkEvent::default()
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
        for d in &event.deliveries {
            match (Cursor::parse(&d.cursor), Cursor::parse(&d.before)) {
                (Ok(Some(cursor)), Ok(before)) => {
                    self.registry
                        .hand_followed(d.user, cursor, before, &d.message);
                }
                (Ok(Some(cursor)), Err(_)) => self.registry.pull_until(d.user, cursor),
                // Nothing names the entry: the user's connections read all.
                _ => self.registry.notify(d.user),
            }
        }
        if let Some(change) = &event.change {
            let until = Cursor::parse(&event.until).ok().flatten().unwrap_or(ANY);
            self.change(change, |_| until);
        }
    }
}

/// Reads the change feed every `every` from where it stood at start, and
/// acts on each entry, until `shutdown`; drops entries read more than
/// [`FEED_KEEP`] ago. Sets `started` once it knows where it starts:
/// connections wait for it before reading their inbox heads, or an entry
/// committed between a head and a late start would be neither told (its
/// notification lost) nor read again by the feed.
pub async fn run_feed<K: Kv>(
    store: ChatStore<K>,
    apply: Arc<Apply<K>>,
    every: Duration,
    started: Arc<tokio::sync::SetOnce<()>>,
    shutdown: CancellationToken,
) {
    let mut position = loop {
        match store.feed_head().await {
            Ok(head) => {
                let _ = started.set(());
                break head;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::link::MAX_LINK_FRAME;

    #[test]
    fn what_a_peer_gets_is_split_into_events_a_link_frame_holds() {
        let users: Vec<u64> = (u64::MAX - 120_000..u64::MAX).collect();
        let message = Bytes::from(vec![7u8; LINK_MESSAGE_BYTES]);
        let deliveries: Vec<LinkDelivery> = (0..40u64)
            .map(|i| LinkDelivery {
                user: i,
                cursor: Bytes::copy_from_slice(&[i as u8; CURSOR_LEN]),
                before: Bytes::new(),
                message: message.clone(),
            })
            .collect();
        let out = ForNode {
            users: users.clone(),
            until: Some(Cursor([9; CURSOR_LEN])),
            deliveries: deliveries.clone(),
        };

        let events = events(out);

        assert!(events.len() > 3, "{} events", events.len());
        for e in &events {
            assert!(
                e.encoded_len() < MAX_LINK_FRAME,
                "{} bytes",
                e.encoded_len()
            );
        }
        let pulled: Vec<u64> = events
            .iter()
            .filter_map(|e| e.change.as_ref())
            .flat_map(|c| c.users.iter().copied())
            .collect();
        assert_eq!(pulled, users);
        let carried: Vec<LinkDelivery> = events
            .iter()
            .flat_map(|e| e.deliveries.iter().cloned())
            .collect();
        assert_eq!(carried, deliveries);
    }
}
