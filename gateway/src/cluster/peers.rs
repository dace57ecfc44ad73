//! The live nodes of the cluster, as this node last read their
//! registrations: who may be notified, and where their links listen.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hanmadi_storage::chat::NodeRecord;

/// A live node other than this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The epoch of its lease: presence entries written under another one
    /// are void.
    pub epoch: u64,
    /// Where its node-to-node link listens (`host:port`; empty: nowhere).
    pub link: String,
}

/// Node id → live peer, replaced whole at each read of the registrations.
#[derive(Debug, Default)]
pub struct Peers {
    live: ArcSwap<HashMap<u64, Peer>>,
}

impl Peers {
    /// Replaces the table with the nodes of `registrations` other than `me`
    /// whose lease is live at `now_ms`. Draining nodes stay: they still
    /// hold connections until their lease ends.
    pub fn update(&self, me: u64, now_ms: u64, registrations: Vec<(u64, NodeRecord)>) {
        let live = registrations
            .into_iter()
            .filter(|(id, r)| *id != me && r.lease_expires_at > now_ms)
            .map(|(id, r)| {
                (
                    id,
                    Peer {
                        epoch: r.epoch,
                        link: r.link,
                    },
                )
            })
            .collect();
        self.live.store(Arc::new(live));
    }

    /// Whether `node` is live under the lease of `epoch`.
    pub fn is_live(&self, node: u64, epoch: u64) -> bool {
        self.live
            .load()
            .get(&node)
            .is_some_and(|p| p.epoch == epoch)
    }

    /// The table as last read.
    pub fn snapshot(&self) -> Arc<HashMap<u64, Peer>> {
        self.live.load_full()
    }
}
