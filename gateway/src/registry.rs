//! The connection registry: user → live connections (many devices per user),
//! sharded by dashmap. It is the router's delivery sink and the node's
//! presence index.
//!
//! Values are small: an `Arc` per connection. Delivering pushes onto a
//! connection's outbound queue (an in-memory push, never I/O or `.await`)
//! and wakes its task; a push that would pass the queue's byte cap marks the
//! connection a slow consumer instead, and its task closes it.
//!
//! HTTP long-polls (`GET /v1/sync?wait_ms=`) wait here too: a user's entry
//! holds a [`Notify`] while any of their long-polls waits, and every commit
//! for the user wakes it, so a waiting poll answers on the commit itself and
//! never polls storage. A user with a waiting long-poll counts as online.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf as _, Bytes};
use dashmap::DashMap;
use hanmadi_proto::{DeliverFrame, SharedMessage};
use hanmadi_router::{Delivery, DeliverySink, Presence};
use hanmadi_storage::chat::{Before, Cursor};
use parking_lot::Mutex;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::rate::SharedBucket;

/// Strikes past which an address's new connections are closed at once:
/// each connection from it that the node closed for abuse (a broken or
/// oversized frame, no valid `Hello` in time, a bad token, a flood past the
/// rate limit) is one, and they fade at [`STRIKES_FADE_PER_SEC`].
pub const STRIKE_LIMIT: f64 = 20.0;

/// The address the per-address limits count `ip` under: an IPv4 address
/// (also when mapped into IPv6) as it is, and an IPv6 address by its /64
/// prefix, since one subscriber usually holds a whole /64 and could spread
/// its sockets, strikes and requests over it.
pub fn limited_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Outbound slots an emptied queue keeps; more are given back.
const IDLE_QUEUE_CAPACITY: usize = 64;

/// Strikes an address is forgiven per second.
pub const STRIKES_FADE_PER_SEC: f64 = 1.0;

/// The most strikes an address holds, so that it is admitted again at most
/// `STRIKE_LIMIT / STRIKES_FADE_PER_SEC` seconds (20) after its abuse stops.
const STRIKES_MAX: f64 = 2.0 * STRIKE_LIMIT;

/// Sockets of struck addresses held unanswered at once, node-wide; past
/// it they are reset at once.
pub const TARPIT_MAX: usize = 4096;

/// Addresses (and users' send buckets) remembered before the map is swept
/// of those no longer needed.
const ADDRESSES_BEFORE_SWEEP: usize = 65_536;

/// Something queued for a connection to write.
#[derive(Debug)]
pub enum Outbound {
    /// A `Deliver` frame: per-recipient header plus the shared message.
    Deliver {
        /// The inbox cursor it carries.
        cursor: Cursor,
        /// The frame.
        frame: DeliverFrame,
        /// What it must follow on the connection.
        follows: Follows,
    },
    /// Read the inbox after the last delivered cursor (a commit whose
    /// cursors are unknown here).
    Pull,
    /// Read the inbox after the last delivered cursor unless that is at or
    /// past this one already (a commit, maybe through another node of the
    /// cluster, that wrote an inbox entry at or before it).
    PullUntil(Cursor),
}

/// What a queued delivery must follow on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follows {
    /// Whatever was queued before it: on one node, frames are queued in
    /// commit order.
    Queue,
    /// The inbox entry its commit proved to come right before it (`None`:
    /// none), which must be the last the connection wrote; otherwise the
    /// connection reads its inbox through this delivery instead (a
    /// cluster's chained delivery).
    Entry(Option<Cursor>),
}

impl Outbound {
    /// Bytes the item counts against the queue's cap: the whole frame of a
    /// `Deliver`, nothing for a `Pull`.
    pub fn byte_len(&self) -> usize {
        match self {
            Self::Deliver { frame, .. } => frame.remaining(),
            Self::Pull | Self::PullUntil(_) => 0,
        }
    }
}

/// The part of a connection other tasks touch: its outbound queue.
#[derive(Debug)]
pub struct ConnShared {
    /// Registry id of the connection.
    pub id: u64,
    /// The authenticated user.
    pub user: u64,
    queue: Mutex<VecDeque<Outbound>>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Set when a push found the queue full: the task closes the connection.
    slow: AtomicBool,
    /// Set when the account was deleted: the task closes the connection.
    revoked: AtomicBool,
    /// Wakes the connection task.
    pub wake: Notify,
    /// The user's sends on this node, shared by their connections.
    sends: Arc<Mutex<SharedBucket>>,
}

impl ConnShared {
    /// Takes a send costing `cost` tokens from a bucket of `rate` per
    /// second and `burst` shared by all the user's connections on this
    /// node.
    pub(crate) fn take_send(&self, rate: u32, burst: u32, cost: f64) -> bool {
        self.sends.lock().take(rate, burst, cost)
    }

    /// Queues an item; returns false (and marks the connection slow) when
    /// it would pass the byte cap. A chained delivery that would pass it is
    /// queued as a pull through its cursor instead: the inbox holds it, and
    /// a connection catching up through pulls is not a slow consumer.
    pub fn push(&self, item: Outbound) -> bool {
        if self.slow.load(Ordering::Relaxed) {
            return false;
        }
        let item = match item {
            Outbound::Deliver {
                cursor,
                follows: Follows::Entry(_),
                ref frame,
            } if self.queued_bytes.load(Ordering::Acquire) + frame.remaining() > self.max_bytes => {
                Outbound::PullUntil(cursor)
            }
            item => item,
        };
        if let Outbound::Pull | Outbound::PullUntil(_) = item {
            // Pulls cost no queue bytes: merged with a pull at the back of
            // the queue, they cannot pile up behind a slow reader either.
            let mut queue = self.queue.lock();
            match (queue.back_mut(), item) {
                (Some(Outbound::Pull), _) => {}
                (Some(back @ Outbound::PullUntil(_)), Outbound::Pull) => *back = Outbound::Pull,
                (Some(Outbound::PullUntil(last)), Outbound::PullUntil(c)) => {
                    *last = (*last).max(c);
                }
                (_, item) => queue.push_back(item),
            }
            drop(queue);
            self.wake.notify_one();
            return true;
        }
        let bytes = item.byte_len();
        if self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > self.max_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.slow.store(true, Ordering::Release);
            self.wake.notify_one();
            return false;
        }
        self.queue.lock().push_back(item);
        self.wake.notify_one();
        true
    }

    /// Takes up to `max` queued items into `out`, in order.
    pub fn drain_into(&self, out: &mut Vec<Outbound>, max: usize) {
        let mut q = self.queue.lock();
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        // A burst must not leave a connection that lives for weeks holding
        // the queue's largest size.
        if q.is_empty() && q.capacity() > IDLE_QUEUE_CAPACITY {
            q.shrink_to(IDLE_QUEUE_CAPACITY);
        }
    }

    /// Drops everything queued (the connection is closing and unregistered;
    /// its client will sync what it missed).
    pub fn clear(&self) {
        let mut queue = self.queue.lock();
        let bytes: usize = queue.iter().map(Outbound::byte_len).sum();
        queue.clear();
        drop(queue);
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        // Nothing queues here any more once the connection is unregistered;
        // the last frame (the close reason) may be written.
        self.slow.store(false, Ordering::Release);
    }

    /// Gives back the byte budget of written items.
    pub fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether anything waits to be written.
    pub fn has_queued(&self) -> bool {
        !self.queue.lock().is_empty()
    }

    /// Whether a push found the queue full.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// Whether the connection's account was deleted.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The user holds the most connections allowed.
    #[error("too many connections for this user (at most {0})")]
    PerUser(usize),
    /// The address holds the most connections allowed.
    #[error("too many connections from this address (at most {0})")]
    PerIp(usize),
    /// The node recently closed too many of the address's connections for
    /// abuse.
    #[error("too many connections from this address were closed for abuse")]
    Struck,
}

impl RegisterError {
    /// The `reason` label a refused connection is counted under.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::PerUser(_) => "too_many_connections",
            Self::PerIp(_) => "too_many_from_address",
            Self::Struck => "address_struck",
        }
    }
}

/// Limits the registry enforces.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    /// Live connections per user.
    pub per_user: usize,
    /// Live connections per remote address.
    pub per_ip: usize,
    /// Outbound queue cap per connection, in bytes.
    pub outbound_bytes: usize,
    /// How long a socket from a struck address is held unanswered before
    /// it is reset (a tarpit): an attacker that waits for an answer, as
    /// every client does, then opens connections at its concurrency over
    /// this, not as fast as the node can reset them.
    pub tarpit: std::time::Duration,
}

/// What this node holds of one user. The entry exists while it holds
/// anything, so presence is one `contains_key`.
#[derive(Debug, Default)]
struct Local {
    conns: Vec<Arc<ConnShared>>,
    /// Long-polls waiting for the user's next commit.
    polls: usize,
    /// What they wait on; present exactly while `polls > 0`, so a commit
    /// for a user nobody polls for costs no wake-up.
    poll_wake: Option<Arc<Notify>>,
}

impl Local {
    fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.polls == 0
    }

    /// Wakes the user's waiting long-polls; they read their inbox next.
    fn wake_polls(&self) {
        if let Some(wake) = &self.poll_wake {
            wake.notify_waiters();
        }
    }
}

/// A long-poll of one user waiting for their next commit. While it lives
/// the user counts as online; dropping it unregisters it.
#[derive(Debug)]
pub struct PollWaiter<'a> {
    registry: &'a Registry,
    user: u64,
    wake: Arc<Notify>,
}

impl PollWaiter<'_> {
    /// A future that completes at the user's next commit. Call
    /// [`Notified::enable`] on it (pinned) before reading the inbox, so a
    /// commit between that read and the wait still wakes it.
    pub fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }
}

impl Drop for PollWaiter<'_> {
    fn drop(&mut self) {
        if let Some(mut local) = self.registry.users.get_mut(&self.user) {
            local.polls = local.polls.saturating_sub(1);
            if local.polls == 0 {
                local.poll_wake = None;
            }
        }
        self.registry.remove_if_empty(self.user);
    }
}

/// One socket counted against its address's limit by
/// [`Registry::admit_ip`]. Dropping it gives the place back, so a
/// connection task that ends any way at all, a panic included, never leaks
/// its address's count.
pub struct IpPermit {
    registry: Arc<Registry>,
    ip: IpAddr,
    /// Held by a tarpitted socket: also counted in `Registry::tarpitted`.
    tarpit: bool,
}

impl std::fmt::Debug for IpPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpPermit").field("ip", &self.ip).finish()
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        if self.tarpit {
            self.registry.tarpitted.fetch_sub(1, Ordering::Relaxed);
        }
        let ips = &self.registry.ips;
        if let Some(mut address) = ips.get_mut(&self.ip) {
            address.live = address.live.saturating_sub(1);
        }
        // An address with strikes stays, or reconnecting would clear them.
        ips.remove_if(&self.ip, |_, a| a.is_forgotten(Instant::now()));
    }
}

/// What the node remembers of one remote address.
#[derive(Debug)]
struct Address {
    /// Sockets open from it.
    live: usize,
    /// Strikes as of `struck_at`.
    strikes: f64,
    struck_at: Instant,
}

impl Address {
    fn new() -> Self {
        Self {
            live: 0,
            strikes: 0.0,
            struck_at: Instant::now(),
        }
    }

    fn strikes_at(&self, now: Instant) -> f64 {
        let faded = now.duration_since(self.struck_at).as_secs_f64() * STRIKES_FADE_PER_SEC;
        (self.strikes - faded).max(0.0)
    }

    fn is_forgotten(&self, now: Instant) -> bool {
        self.live == 0 && self.strikes_at(now) == 0.0
    }
}

/// Every live, authenticated connection of this node, and the users'
/// waiting long-polls.
pub struct Registry {
    users: DashMap<u64, Local>,
    /// Told of every user who comes to or leaves this node (the first
    /// connection or long-poll, the last one): the cluster's presence index.
    on_change: std::sync::OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
    ips: DashMap<IpAddr, Address>,
    /// Size of `ips` at which it is next swept.
    sweep_at: AtomicUsize,
    /// Sockets held in the tarpit now.
    tarpitted: AtomicUsize,
    /// Each user's sends on this node, shared by their connections. A
    /// bucket outlives the connections while it is refilling, so that
    /// reconnecting does not refill it.
    sends: DashMap<u64, Arc<Mutex<SharedBucket>>>,
    /// Size of `sends` at which it is next swept.
    sends_sweep_at: AtomicUsize,
    next_id: AtomicU64,
    limits: RegistryLimits,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("users", &self.users.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: RegistryLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            on_change: std::sync::OnceLock::new(),
            users: DashMap::new(),
            ips: DashMap::new(),
            sweep_at: AtomicUsize::new(ADDRESSES_BEFORE_SWEEP),
            tarpitted: AtomicUsize::new(0),
            sends: DashMap::new(),
            sends_sweep_at: AtomicUsize::new(ADDRESSES_BEFORE_SWEEP),
            next_id: AtomicU64::new(1),
            limits,
            metrics,
        }
    }

    /// Sets what is told of every user who comes to this node or leaves it
    /// (once; later calls are ignored).
    pub fn on_presence_change(&self, f: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(f));
    }

    fn presence_changed(&self, user: u64) {
        if let Some(f) = self.on_change.get() {
            f(user);
        }
    }

    /// Removes `user`'s entry if it holds nothing any more, telling the
    /// presence index.
    fn remove_if_empty(&self, user: u64) {
        if self.users.remove_if(&user, |_, l| l.is_empty()).is_some() {
            self.presence_changed(user);
        }
    }

    /// Counts a new socket from `ip` before it authenticates; the count
    /// drops when the returned permit does.
    ///
    /// # Errors
    ///
    /// [`RegisterError::PerIp`] past the per-address limit,
    /// [`RegisterError::Struck`] while the address has passed
    /// [`STRIKE_LIMIT`].
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Result<IpPermit, RegisterError> {
        let ip = limited_address(ip);
        let now = Instant::now();
        if self.ips.len() >= self.sweep_at.load(Ordering::Relaxed) {
            // Struck addresses outlive their connections; forget those
            // whose strikes have faded, at most once per doubling.
            self.ips.retain(|_, a| !a.is_forgotten(now));
            self.sweep_at.store(
                (2 * self.ips.len()).max(ADDRESSES_BEFORE_SWEEP),
                Ordering::Relaxed,
            );
        }
        let mut address = self.ips.entry(ip).or_insert_with(Address::new);
        if address.strikes_at(now) >= STRIKE_LIMIT {
            return Err(RegisterError::Struck);
        }
        self.place(&mut address, ip, false)
            .ok_or(RegisterError::PerIp(self.limits.per_ip))
    }

    /// Counts one more socket of `address` (`ip`) if its limit allows.
    fn place(
        self: &Arc<Self>,
        address: &mut Address,
        ip: IpAddr,
        tarpit: bool,
    ) -> Option<IpPermit> {
        if address.live >= self.limits.per_ip {
            return None;
        }
        address.live += 1;
        Some(IpPermit {
            registry: Arc::clone(self),
            ip,
            tarpit,
        })
    }

    /// A place in the tarpit for a socket of `ip`, an address
    /// [`Registry::admit_ip`] refused as struck: it counts against the
    /// address's limit like a connection, and against [`TARPIT_MAX`].
    /// `None` when either is full (the socket is reset at once).
    pub fn tarpit(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let ip = limited_address(ip);
        if self.tarpitted.fetch_add(1, Ordering::Relaxed) >= TARPIT_MAX {
            self.tarpitted.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let mut address = self.ips.entry(ip).or_insert_with(Address::new);
        let permit = self.place(&mut address, ip, true);
        if permit.is_none() {
            self.tarpitted.fetch_sub(1, Ordering::Relaxed);
        }
        permit
    }

    /// How long a tarpitted socket is held.
    pub fn tarpit_time(&self) -> std::time::Duration {
        self.limits.tarpit
    }

    /// Counts a strike against `ip`, one of whose connections the node
    /// closed for abuse; the address is remembered while it holds strikes.
    pub fn strike(&self, ip: IpAddr) {
        let ip = limited_address(ip);
        let now = Instant::now();
        let mut address = self.ips.entry(ip).or_insert_with(Address::new);
        address.strikes = (address.strikes_at(now) + 1.0).min(STRIKES_MAX);
        address.struck_at = now;
    }

    /// Registers an authenticated connection of `user`.
    ///
    /// # Errors
    ///
    /// [`RegisterError::PerUser`] past the per-user limit.
    pub fn register(&self, user: u64) -> Result<Arc<ConnShared>, RegisterError> {
        if self.sends.len() >= self.sends_sweep_at.load(Ordering::Relaxed) {
            // Forget the buckets of users with no connection whose buckets
            // have refilled, at most once per doubling.
            self.sends
                .retain(|_, b| Arc::strong_count(b) > 1 || !b.lock().is_full());
            self.sends_sweep_at.store(
                (2 * self.sends.len()).max(ADDRESSES_BEFORE_SWEEP),
                Ordering::Relaxed,
            );
        }
        let sends = Arc::clone(&self.sends.entry(user).or_default());
        let mut local = self.users.entry(user).or_default();
        let conn = Arc::new(ConnShared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            queue: Mutex::new(VecDeque::new()),
            queued_bytes: AtomicUsize::new(0),
            max_bytes: self.limits.outbound_bytes,
            slow: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            wake: Notify::new(),
            sends,
        });
        if local.conns.len() >= self.limits.per_user {
            let empty = local.is_empty();
            drop(local);
            if empty {
                self.remove_if_empty(user);
            }
            return Err(RegisterError::PerUser(self.limits.per_user));
        }
        let first = local.is_empty();
        local.conns.push(Arc::clone(&conn));
        drop(local);
        if first {
            self.presence_changed(user);
        }
        Ok(conn)
    }

    /// Removes a connection.
    pub fn unregister(&self, conn: &ConnShared) {
        if let Some(mut local) = self.users.get_mut(&conn.user) {
            local.conns.retain(|c| c.id != conn.id);
        }
        self.remove_if_empty(conn.user);
    }

    /// Registers a long-poll of `user` waiting for their next commit.
    pub fn wait_for_commit(&self, user: u64) -> PollWaiter<'_> {
        let mut local = self.users.entry(user).or_default();
        let first = local.is_empty();
        local.polls += 1;
        let wake = Arc::clone(local.poll_wake.get_or_insert_with(Default::default));
        drop(local);
        if first {
            self.presence_changed(user);
        }
        PollWaiter {
            registry: self,
            user,
            wake,
        }
    }

    /// Closes every connection of `user` on this node (the account was
    /// deleted): each task tells its client `TOKEN_INVALID` and closes.
    pub fn revoke_user(&self, user: u64) {
        if let Some(local) = self.users.get(&user) {
            for conn in &local.conns {
                conn.revoked.store(true, Ordering::Release);
                conn.wake.notify_one();
            }
        }
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Wakes `user`'s long-polls and has each of their connections read
    /// its inbox until `cursor` is delivered (the cluster's delivery of a
    /// commit through another node, or one that proved nothing about the
    /// entries before it).
    pub fn pull_until(&self, user: u64, cursor: Cursor) {
        self.pull(user, Outbound::PullUntil(cursor));
    }

    fn pull(&self, user: u64, item: Outbound) {
        if let Some(local) = self.users.get(&user) {
            local.wake_polls();
            for conn in local.conns.iter() {
                let item = match &item {
                    Outbound::PullUntil(c) => Outbound::PullUntil(*c),
                    _ => Outbound::Pull,
                };
                conn.push(item);
            }
        }
    }

    /// Queues a committed message for every live device of its
    /// recipients. `chained` (a cluster): each delivery follows the inbox
    /// entry its commit proved to come before it, and a recipient without
    /// one reads their inbox through it instead.
    pub fn hand(&self, delivery: &Delivery<'_>, chained: bool) {
        // Encoded once for every recipient: each frame is a small header
        // plus a reference to these bytes.
        let shared = SharedMessage::from_encoded(delivery.encoded().clone());
        let mut delivered = 0u64;
        let mut overflowed: Vec<Arc<ConnShared>> = Vec::new();
        for (user, cursor, before) in delivery.chained() {
            let follows = match (chained, before) {
                (false, _) => Follows::Queue,
                (true, Before::Empty) => Follows::Entry(None),
                (true, Before::Entry(c)) => Follows::Entry(Some(c)),
                (true, Before::Unknown) => {
                    self.pull_until(user, cursor);
                    continue;
                }
            };
            delivered += self.queue(user, cursor, follows, &shared, &mut overflowed);
        }
        self.settle(delivered, overflowed);
    }

    /// Queues a message another node committed for every live device of
    /// `user`, to be written right after `before` (`None`: the inbox's
    /// first entry), the entry that commit proved to come before it.
    pub fn hand_followed(
        &self,
        user: u64,
        cursor: Cursor,
        before: Option<Cursor>,
        message: &Bytes,
    ) {
        let shared = SharedMessage::from_encoded(message.clone());
        let mut overflowed = Vec::new();
        let delivered = self.queue(
            user,
            cursor,
            Follows::Entry(before),
            &shared,
            &mut overflowed,
        );
        self.settle(delivered, overflowed);
    }

    /// Queues the message at `cursor` for `user`'s devices; returns how
    /// many took it, and adds those whose queues overflowed.
    fn queue(
        &self,
        user: u64,
        cursor: Cursor,
        follows: Follows,
        shared: &SharedMessage,
        overflowed: &mut Vec<Arc<ConnShared>>,
    ) -> u64 {
        let Some(local) = self.users.get(&user) else {
            return 0;
        };
        local.wake_polls();
        let conns = &local.conns;
        if conns.is_empty() {
            return 0;
        }
        // One frame per recipient, shared by its devices (a clone is a
        // header copy and a reference count).
        let Ok(frame) = shared.deliver_frame(cursor.as_bytes()) else {
            if let Follows::Entry(_) = follows {
                // The inbox has it: the connections read it there.
                drop(local);
                self.pull_until(user, cursor);
            }
            return 0;
        };
        let mut delivered = 0;
        // Pushing is an in-memory append and a wake-up: holding the
        // shard's read guard for it never waits on I/O.
        for conn in conns.iter() {
            let item = Outbound::Deliver {
                cursor,
                frame: frame.clone(),
                follows,
            };
            if conn.push(item) {
                delivered += 1;
            } else {
                overflowed.push(Arc::clone(conn));
            }
        }
        delivered
    }

    /// Counts `delivered`, and drops the connections that overflowed.
    fn settle(&self, delivered: u64, overflowed: Vec<Arc<ConnShared>>) {
        // A slow consumer leaves the registry at once (its task may still
        // be stuck in a write): it gets nothing more and counts as offline.
        for conn in overflowed {
            self.unregister(&conn);
        }
        self.metrics.deliveries.inc_by(delivered);
    }

    /// Whether this node holds a connection or a long-poll of `user`.
    pub fn is_here(&self, user: u64) -> bool {
        self.users.contains_key(&user)
    }

    /// Live connections in all.
    pub fn connections(&self) -> usize {
        self.users.iter().map(|e| e.value().conns.len()).sum()
    }

    /// Every live connection (for shutdown).
    pub fn all(&self) -> Vec<Arc<ConnShared>> {
        self.users
            .iter()
            .flat_map(|e| e.value().conns.clone())
            .collect()
    }
}

impl Presence for Registry {
    fn is_online(&self, user: u64) -> bool {
        self.users.contains_key(&user)
    }
}

impl DeliverySink for Registry {
    fn deliver(&self, delivery: &Delivery<'_>) {
        self.hand(delivery, false);
    }

    fn committed(&self, messages: usize, latency: std::time::Duration) {
        self.metrics.commit_batch.observe(messages as f64);
        self.metrics.commit_seconds.observe(latency.as_secs_f64());
    }

    fn notify(&self, user: u64) {
        self.pull(user, Outbound::Pull);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn ipv6_addresses_are_limited_by_their_64_prefix() {
        use super::limited_address;
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(limited_address(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(limited_address(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            limited_address(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limited_address(ip("2001:db8:1:2::1")),
            limited_address(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            limited_address(ip("2001:db8:1:2::1")),
            limited_address(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limited_address(ip("::1")), ip("::"));
    }

    use std::sync::Arc;

    use hanmadi_proto::SharedMessage;
    use hanmadi_storage::chat::{Cursor, CURSOR_LEN};

    use super::{Follows, Outbound, Registry, RegistryLimits};
    use crate::metrics::Metrics;

    fn delivery(n: u8, follows: Follows) -> Outbound {
        let cursor = Cursor([n; CURSOR_LEN]);
        let message = SharedMessage::encode(&hanmadi_proto::Message {
            body: "x".repeat(200),
            ..Default::default()
        });
        Outbound::Deliver {
            cursor,
            frame: message.deliver_frame(cursor.as_bytes()).unwrap(),
            follows,
        }
    }

    #[test]
    fn a_chained_delivery_past_the_cap_becomes_a_pull() {
        let registry = Registry::new(
            RegistryLimits {
                per_user: 4,
                per_ip: 4,
                outbound_bytes: 1000,
                tarpit: std::time::Duration::from_secs(1),
            },
            Arc::new(Metrics::new()),
        );
        let conn = registry.register(7).unwrap();
        let mut pushed = 0;
        while conn.queued_bytes() + 300 <= 1000 {
            assert!(conn.push(delivery(pushed + 1, Follows::Entry(None))));
            pushed += 1;
        }
        // The inbox holds what does not fit: the connection reads it there.
        assert!(conn.push(delivery(20, Follows::Entry(None))));
        assert!(conn.push(delivery(21, Follows::Entry(None))));
        assert!(!conn.is_slow());
        let mut out = Vec::new();
        conn.drain_into(&mut out, 100);
        assert_eq!(out.len(), usize::from(pushed) + 1);
        assert!(matches!(
            out.last(),
            Some(Outbound::PullUntil(c)) if *c == Cursor([21; CURSOR_LEN])
        ));
        // A delivery the queue must carry itself marks the reader slow.
        let conn = registry.register(8).unwrap();
        while conn.push(delivery(1, Follows::Queue)) {}
        assert!(conn.is_slow());
    }
}
