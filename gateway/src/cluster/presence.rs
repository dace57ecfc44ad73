//! The presence index of a cluster (DESIGN §3.4, §6): user → the nodes
//! holding that user's live connections, in storage.
//!
//! This node writes its own entries: present when a user's first
//! connection or long-poll arrives here, absent when the last one leaves.
//! Writes are state, not events: a writer task takes the users whose state
//! may have changed, reads the registry for what is true now, and writes
//! the difference in one transaction, so bursts of connects and
//! disconnects coalesce and a retried write is harmless. A connection
//! waits for its own entry to be stored before its `Welcome` (see
//! [`PresenceIndex::announce`]): from then on every commit for the user,
//! through any node, finds this node in the index.
//!
//! Entries name the lease epoch they were written under and count only
//! while that lease is live, so a dead node's entries need no cleanup to
//! stop counting.
//!
//! Routers read the index through a bounded cache. A node that stores or
//! removes an entry tells every peer over the link at once, and each drops
//! its cached entry for the user; a link that opens or closes drops the
//! whole cache (what its lost events told is unknown). A cached entry is
//! also read again once it is older than [`CACHE_TTL`], the bound for an
//! event dropped from a full link queue: the lookup that finds it old
//! still answers from it, and the read runs beside the delivery rather
//! than in front of it. A stale entry costs a delivery at most until the
//! change feed's backstop; it never loses one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::{DashMap, DashSet};
use hanmadi_storage::chat::NodeLease;
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;
use moka::sync::Cache;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::link::{LinkEvent, Links, USERS_PER_EVENT};
use super::peers::Peers;
use crate::registry::Registry;

/// Age after which a cached presence entry is read again. Each entry is
/// given a random age between half of it and all of it, so the users a
/// burst of traffic cached together are not all read again in the same
/// instant. Changes come over the links; this only bounds what an event
/// dropped from a full link queue leaves stale. The lookup that finds an
/// entry this old answers from it and reads it again in the background:
/// when such a lookup waited for its read, those waits were most of a
/// three-node cluster's cross-node p99 (docs/PERFORMANCE.md).
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Longest an entry stays cached without a read: one that no lookup asks
/// for again is dropped.
const CACHE_KEEP: Duration = Duration::from_secs(60);
/// Most background reads of old entries at once; past it, a lookup that
/// finds an old entry reads it in front of the caller, as for a miss, so
/// an entry is never used for long past its age.
const MAX_REFRESHES: usize = 256;
/// Most users whose presence a node caches.
const CACHE_USERS: u64 = 1_000_000;
/// Most users one presence transaction writes.
const WRITE_CHUNK: usize = 1000;
/// Stripes of [`PresenceIndex`]'s forget counters.
const FORGET_STRIPES: usize = 1024;

/// A cached entry, and when it is to be read again.
#[derive(Clone)]
struct Cached {
    entries: Entries,
    stale_at: Instant,
}

impl Cached {
    fn read_now(entries: Entries) -> Self {
        Self {
            entries,
            stale_at: Instant::now() + CACHE_TTL.mul_f64(rand::random_range(0.5..=1.0)),
        }
    }
}

/// A user's entries: `(node, epoch)`.
pub type Entries = Arc<[(u64, u64)]>;

/// Users whose entry may need writing, and who waits for it.
#[derive(Default)]
struct Dirty {
    users: HashSet<u64>,
    waiters: Vec<oneshot::Sender<()>>,
}

/// A background read of `user`'s entry: while it lives, lookups answer
/// from the old entry. Dropped when the read ends, or with its task.
struct Refreshing<K: Kv> {
    index: Arc<PresenceIndex<K>>,
    user: u64,
}

impl<K: Kv> Drop for Refreshing<K> {
    fn drop(&mut self) {
        self.index.refreshing.remove(&self.user);
    }
}

/// This node's side of the presence index.
pub struct PresenceIndex<K: Kv> {
    store: ChatStore<K>,
    lease: NodeLease,
    registry: Arc<Registry>,
    peers: Arc<Peers>,
    /// Connections between their announcement and their registration.
    arriving: DashMap<u64, u32>,
    dirty: Mutex<Dirty>,
    wake: Notify,
    cache: Cache<u64, Cached>,
    /// Users whose old entry is being read again in the background.
    refreshing: DashSet<u64>,
    /// Counts [`PresenceIndex::forget`]s, per stripe of users: a lookup
    /// that read storage before a peer's new entry must not cache what it
    /// read after the peer's notice dropped the old one.
    forgets: Box<[AtomicU64]>,
}

impl<K: Kv> std::fmt::Debug for PresenceIndex<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceIndex")
            .field("node", &self.lease.node_id)
            .finish_non_exhaustive()
    }
}

/// A connection announced in the index, not yet in the registry; dropping
/// it (once registered, or given up) lets the entry follow the registry.
#[derive(Debug)]
pub struct Announced<K: Kv> {
    index: Arc<PresenceIndex<K>>,
    user: u64,
}

impl<K: Kv> Drop for Announced<K> {
    fn drop(&mut self) {
        if let Some(mut n) = self.index.arriving.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
        self.index.arriving.remove_if(&self.user, |_, n| *n == 0);
        self.index.changed(self.user);
    }
}

impl<K: Kv> PresenceIndex<K> {
    /// The index as the node holding `lease` writes and reads it.
    pub fn new(
        store: ChatStore<K>,
        lease: NodeLease,
        registry: Arc<Registry>,
        peers: Arc<Peers>,
    ) -> Self {
        Self {
            store,
            lease,
            registry,
            peers,
            arriving: DashMap::new(),
            dirty: Mutex::new(Dirty::default()),
            wake: Notify::new(),
            cache: Cache::builder()
                .max_capacity(CACHE_USERS)
                .time_to_live(CACHE_KEEP)
                .build(),
            refreshing: DashSet::new(),
            forgets: (0..FORGET_STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// `user` may have come or gone here: their entry follows.
    pub fn changed(&self, user: u64) {
        self.dirty.lock().users.insert(user);
        self.wake.notify_one();
    }

    /// Stores this node's entry for `user` before their connection is
    /// registered, and returns once it is stored (or its write failed:
    /// the feed's backstop then covers the connection).
    pub async fn announce(self: &Arc<Self>, user: u64) -> Announced<K> {
        *self.arriving.entry(user).or_insert(0) += 1;
        let announced = Announced {
            index: Arc::clone(self),
            user,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut dirty = self.dirty.lock();
            dirty.users.insert(user);
            dirty.waiters.push(tx);
        }
        self.wake.notify_one();
        let _ = rx.await;
        announced
    }

    /// Drops the cached entries of `users` (a peer stored new ones).
    pub fn forget(&self, users: &[u64]) {
        for user in users {
            // Counted before the entry goes: a lookup that cached after
            // this sees the count moved and drops what it cached.
            self.forgets_of(*user).fetch_add(1, Ordering::SeqCst);
            self.cache.invalidate(user);
        }
    }

    /// Drops every cached entry (a link opened or closed).
    pub fn forget_all(&self) {
        // As in `forget`: a lookup in flight sees its count move.
        for stripe in self.forgets.iter() {
            stripe.fetch_add(1, Ordering::SeqCst);
        }
        self.cache.invalidate_all();
    }

    /// The live peers holding `user`'s connections, from the cache or
    /// storage.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn peers_of(
        self: &Arc<Self>,
        user: u64,
    ) -> Result<Vec<u64>, hanmadi_storage::StoreError> {
        if let Some(nodes) = self.cached_peers_of(user) {
            return Ok(nodes);
        }
        let entries = self.read(user).await?;
        Ok(self.live(&entries))
    }

    /// The live peers holding `user`'s connections if the cache knows
    /// them ([`PresenceIndex::cached`]).
    pub fn cached_peers_of(self: &Arc<Self>, user: u64) -> Option<Vec<u64>> {
        self.cached(user).map(|entries| self.live(&entries))
    }

    /// `user`'s cached entries. One past its age still answers while a
    /// background read of it runs; when none can start, it is as if not
    /// cached.
    fn cached(self: &Arc<Self>, user: u64) -> Option<Entries> {
        let cached = self.cache.get(&user)?;
        if cached.stale_at <= Instant::now() && !self.refresh(user) {
            return None;
        }
        Some(cached.entries)
    }

    /// Reads `user`'s entry again off the caller's path; returns whether a
    /// read of it is running, which it is not when [`MAX_REFRESHES`] are
    /// and it was not among them.
    fn refresh(self: &Arc<Self>, user: u64) -> bool {
        if self.refreshing.contains(&user) {
            return true;
        }
        // Outside a runtime there is nowhere to read in the background.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self.refreshing.len() >= MAX_REFRESHES {
            return false;
        }
        if !self.refreshing.insert(user) {
            // Another lookup started this read a moment ago.
            return true;
        }
        let refreshing = Refreshing {
            index: Arc::clone(self),
            user,
        };
        runtime.spawn(async move {
            if let Err(e) = refreshing.index.read(user).await {
                // The old entry stays; the next lookup past its age tries
                // again.
                tracing::debug!(user, error = %e, "presence refresh failed");
            }
        });
        true
    }

    /// Reads `user`'s entries from storage into the cache.
    async fn read(&self, user: u64) -> Result<Entries, hanmadi_storage::StoreError> {
        let forgets = self.forgets_of(user).load(Ordering::SeqCst);
        let entries: Entries = self.store.presence(user).await?.into();
        self.cache
            .insert(user, Cached::read_now(Arc::clone(&entries)));
        // The insert is seen before the count is read again.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.forgets_of(user).load(Ordering::SeqCst) != forgets {
            // A notice may have dropped an entry newer than this read.
            self.cache.invalidate(&user);
        }
        Ok(entries)
    }

    fn forgets_of(&self, user: u64) -> &AtomicU64 {
        // The stripe count is a power of two far below u64::MAX.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = (user % FORGET_STRIPES as u64) as usize;
        &self.forgets[stripe]
    }

    fn live(&self, entries: &[(u64, u64)]) -> Vec<u64> {
        entries
            .iter()
            .filter(|&&(node, epoch)| self.is_live_peer(node, epoch))
            .map(|&(node, _)| node)
            .collect()
    }

    /// Whether an entry of `node` under `epoch` names a live peer. This
    /// node's own entries name none, and must not make the peer table look
    /// stale.
    fn is_live_peer(&self, node: u64, epoch: u64) -> bool {
        node != self.lease.node_id && self.peers.is_live(node, epoch)
    }

    /// Whether the cache knows `user` to be connected to a live peer (the
    /// router's question, which must not wait for storage). An old entry
    /// counts as [`PresenceIndex::cached_peers_of`] counts it.
    pub fn cached_elsewhere(self: &Arc<Self>, user: u64) -> bool {
        self.cached(user).is_some_and(|entries| {
            entries
                .iter()
                .any(|&(node, epoch)| self.is_live_peer(node, epoch))
        })
    }

    /// Writes entries as users come and go, until `shutdown`; then removes
    /// this node's entries. Tells the peers about each change over
    /// `links`.
    pub async fn run_writer(self: Arc<Self>, links: Arc<Links>, shutdown: CancellationToken) {
        // Users whose entry this node stored and has not removed.
        let mut stored: HashSet<u64> = HashSet::new();
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = shutdown.cancelled() => break,
            }
            let Dirty { users, waiters } = std::mem::take(&mut *self.dirty.lock());
            let changes: Vec<(u64, bool)> = users
                .into_iter()
                .filter_map(|u| {
                    let here = self.registry.is_here(u) || self.arriving.contains_key(&u);
                    (here != stored.contains(&u)).then_some((u, here))
                })
                .collect();
            let mut present = Vec::new();
            let mut failed = false;
            for chunk in changes.chunks(WRITE_CHUNK) {
                match self.store.set_presence(&self.lease, chunk).await {
                    Ok(()) => {
                        for &(u, here) in chunk {
                            if here {
                                stored.insert(u);
                            } else {
                                stored.remove(&u);
                            }
                            present.push(u);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "presence write failed");
                        failed = true;
                        let mut dirty = self.dirty.lock();
                        dirty.users.extend(chunk.iter().map(|&(u, _)| u));
                    }
                }
            }
            for users in present.chunks(USERS_PER_EVENT) {
                links.broadcast(&LinkEvent {
                    present: users.to_vec(),
                    ..LinkEvent::default()
                });
            }
            for waiter in waiters {
                let _ = waiter.send(());
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.wake.notify_one();
            }
        }
        // A drained node's entries stop counting with its lease anyway;
        // removing them spares other nodes the reads.
        let gone: Vec<(u64, bool)> = stored.into_iter().map(|u| (u, false)).collect();
        for chunk in gone.chunks(WRITE_CHUNK) {
            let _ = self.store.set_presence(&self.lease, chunk).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use hanmadi_storage::chat::NodeRecord;
    use hanmadi_storage::sim::{SimKv, SimOptions};
    use hanmadi_storage::StoreConfig;

    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::RegistryLimits;

    impl<K: Kv> PresenceIndex<K> {
        /// Ages `user`'s cached entry past [`CACHE_TTL`].
        fn age(&self, user: u64) {
            let mut cached = self.cache.get(&user).expect("cached");
            cached.stale_at = Instant::now();
            self.cache.insert(user, cached);
        }
    }

    /// An index whose cached entry says another node (its id returned)
    /// holds user 7, past its age, while storage says the user has left
    /// and the notice of it was lost.
    async fn old_entry_of_a_departure() -> (Arc<PresenceIndex<SimKv>>, u64) {
        let store = ChatStore::new(
            SimKv::new(SimOptions::faulty(7)),
            StoreConfig::for_cluster(),
        );
        let (now, expiry) = (crate::now_ms(), Duration::from_secs(60));
        let me = store
            .acquire_node(&NodeRecord::default(), now, expiry)
            .await
            .unwrap();
        let other = store
            .acquire_node(&NodeRecord::default(), now, expiry)
            .await
            .unwrap();
        let peers = Arc::new(Peers::default());
        peers.update(me.node_id, now, store.nodes().await.unwrap());
        let limits = RegistryLimits {
            per_user: 4,
            per_ip: 4,
            outbound_bytes: 1000,
            tarpit: Duration::from_secs(1),
        };
        let registry = Arc::new(Registry::new(limits, Arc::new(Metrics::new())));
        store.set_presence(&other, &[(7, true)]).await.unwrap();
        let index = Arc::new(PresenceIndex::new(store.clone(), me, registry, peers));
        assert_eq!(index.peers_of(7).await.unwrap(), vec![other.node_id]);
        store.set_presence(&other, &[(7, false)]).await.unwrap();
        index.age(7);
        (index, other.node_id)
    }

    #[tokio::test]
    async fn an_old_entry_answers_at_once_and_is_read_again_behind_the_delivery() {
        let (index, other) = old_entry_of_a_departure().await;

        // Past its age the entry still answers, with no wait for storage,
        // and is read again beside the caller.
        assert_eq!(index.cached_peers_of(7), Some(vec![other]));
        assert!(index.refreshing.contains(&7), "no read started");
        assert!(
            index.cached_elsewhere(7),
            "online by the old entry meanwhile"
        );
        tokio::time::timeout(Duration::from_secs(5), async {
            while index.refreshing.contains(&7) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the background read never ended");
        assert_eq!(index.cached_peers_of(7), Some(Vec::new()));
        assert!(!index.cached_elsewhere(7));
    }

    #[tokio::test]
    async fn an_old_entry_no_background_read_can_take_is_read_in_front() {
        let (index, _) = old_entry_of_a_departure().await;
        for user in 1000..1000 + MAX_REFRESHES as u64 {
            index.refreshing.insert(user);
        }

        assert_eq!(index.cached_peers_of(7), None);
        assert!(
            !index.cached_elsewhere(7),
            "an old entry no read can refresh does not make the user online"
        );
        assert_eq!(index.peers_of(7).await.unwrap(), Vec::<u64>::new());
    }
}
