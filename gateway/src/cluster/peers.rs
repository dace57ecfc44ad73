//! The live nodes of the cluster, as this node last read their
//! registrations: who may be notified, and where their links listen.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hanmadi_storage::chat::NodeRecord;
use tokio::sync::Notify;

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
///
/// The table is read every lease renewal period, and sooner when a
/// presence entry names a node it does not hold ([`Peers::is_live`]): a
/// node that just joined already holds connections, and until this node
/// links to it, notices for them wait for the change feed's backstop.
#[derive(Debug, Default)]
pub struct Peers {
    live: ArcSwap<HashMap<u64, Peer>>,
    /// Node id → the epoch of its registration, live or lapsed: entries a
    /// dead node left behind name an epoch this already holds, and do not
    /// make the table look stale.
    epochs: ArcSwap<HashMap<u64, u64>>,
    /// Fires when a read changed the table: links are dialed at once.
    changed: Notify,
    /// Fires when the table looks stale: it is read again at once.
    stale: Notify,
}

impl Peers {
    /// Replaces the table with the nodes of `registrations` other than `me`
    /// whose lease is live at `now_ms`. Draining nodes stay: they still
    /// hold connections until their lease ends.
    pub fn update(&self, me: u64, now_ms: u64, registrations: Vec<(u64, NodeRecord)>) {
        let epochs = registrations
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, r)| (*id, r.epoch))
            .collect();
        self.epochs.store(Arc::new(epochs));
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
            .collect::<HashMap<_, _>>();
        if **self.live.load() != live {
            self.live.store(Arc::new(live));
            self.changed.notify_one();
        }
    }

    /// Whether `node` is live under the lease of `epoch`. A node whose
    /// registration the last read did not find, or found under an older
    /// lease, may have joined since: the table is then read again soon.
    pub fn is_live(&self, node: u64, epoch: u64) -> bool {
        if self
            .live
            .load()
            .get(&node)
            .is_some_and(|p| p.epoch == epoch)
        {
            return true;
        }
        if self
            .epochs
            .load()
            .get(&node)
            .is_none_or(|&known| known < epoch)
        {
            self.stale.notify_one();
        }
        false
    }

    /// Waits until a read changes the table.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Waits until the table looks stale.
    pub async fn stale(&self) {
        self.stale.notified().await;
    }

    /// The table as last read.
    pub fn snapshot(&self) -> Arc<HashMap<u64, Peer>> {
        self.live.load_full()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(epoch: u64, expires: u64) -> NodeRecord {
        NodeRecord {
            epoch,
            lease_expires_at: expires,
            link: "127.0.0.1:1".to_owned(),
            ..NodeRecord::default()
        }
    }

    #[tokio::test]
    async fn a_read_that_changes_the_table_wakes_the_dialer_once() {
        let peers = Peers::default();
        peers.update(1, 100, vec![(1, record(1, 200)), (2, record(4, 200))]);
        // The change left a permit: this returns at once.
        peers.changed().await;
        // The same table again: no permit.
        peers.update(1, 100, vec![(2, record(4, 200))]);
        let again = tokio::time::timeout(Duration::from_millis(20), peers.changed()).await;
        assert!(again.is_err(), "an unchanged table woke the dialer");
        assert!(peers.is_live(2, 4));
        assert!(!peers.is_live(1, 1), "this node is not its own peer");
    }

    #[tokio::test]
    async fn an_entry_of_an_unknown_node_or_newer_lease_asks_for_a_read() {
        let peers = Peers::default();
        peers.update(1, 100, vec![(2, record(4, 200))]);
        // An entry under an older lease is void, and no reason to read.
        assert!(!peers.is_live(2, 3));
        let stale = tokio::time::timeout(Duration::from_millis(20), peers.stale()).await;
        assert!(stale.is_err(), "an old lease's entry asked for a read");
        // A newer lease than the table holds: the node restarted.
        assert!(!peers.is_live(2, 5));
        peers.stale().await;
        // A node the table does not hold: it may have just joined.
        assert!(!peers.is_live(3, 1));
        peers.stale().await;
        // A dead node's entries, under the epoch of its lapsed lease: no
        // read, however often they are looked at.
        peers.update(1, 300, vec![(2, record(4, 200))]);
        assert!(!peers.is_live(2, 4));
        let stale = tokio::time::timeout(Duration::from_millis(20), peers.stale()).await;
        assert!(stale.is_err(), "a dead node's entry asked for a read");
    }
}
