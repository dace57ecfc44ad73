//! Who has a live connection: the presence index (DESIGN §3.4, §6).

use dashmap::DashMap;

/// The presence index as the router sees it. On one node the gateway's
/// connection registry is the index; in a cluster it is backed by the
/// `presence` subspace and node leases.
pub trait Presence: Send + Sync + 'static {
    /// Whether `user` has at least one live connection anywhere.
    fn is_online(&self, user: u64) -> bool;
}

/// A presence index in memory, for one node: connection counts per user.
#[derive(Debug, Default)]
pub struct LocalPresence {
    connections: DashMap<u64, u32>,
}

impl LocalPresence {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a new connection of `user`.
    pub fn connect(&self, user: u64) {
        *self.connections.entry(user).or_insert(0) += 1;
    }

    /// Records a closed connection of `user`.
    pub fn disconnect(&self, user: u64) {
        // remove_if keeps the check and the removal under one shard lock.
        if let Some(mut n) = self.connections.get_mut(&user) {
            *n = n.saturating_sub(1);
        }
        self.connections.remove_if(&user, |_, n| *n == 0);
    }

    /// Live connections of `user`.
    pub fn connections(&self, user: u64) -> u32 {
        self.connections.get(&user).map_or(0, |n| *n)
    }
}

impl Presence for LocalPresence {
    fn is_online(&self, user: u64) -> bool {
        self.connections.contains_key(&user)
    }
}
