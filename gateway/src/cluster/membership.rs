//! The node's lease on its id.
//!
//! [`join`] takes an id before the node serves ([`ChatStore::acquire_node`]);
//! [`spawn_renewals`] keeps the lease alive and the node's registration
//! (endpoints, connection count, draining) current for discovery, and
//! gives the id up when the node drains.
//!
//! A node that cannot renew stops: when its lease is lost (another node
//! took the id) or when renewals keep failing until the lease would have
//! lapsed by this node's own monotonic clock, it cancels `lost`, which the
//! binary turns into a drain and an error exit. Correctness does not rest
//! on that: every commit of the holder checks the id's epoch in its own
//! transaction, so a node whose id was taken commits nothing more, however
//! late it notices.

use std::sync::Arc;
use std::time::Duration;

use hanmadi_storage::chat::{NodeLease, NodeRecord};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::{ChatStore, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a lease lasts and how often it is renewed.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// A lease not renewed for this long lapses, and another node may take
    /// the id.
    pub expiry: Duration,
    /// How often the holder renews; several renewals fit in one expiry.
    pub renew_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            expiry: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// Takes a node id for `record`.
///
/// # Errors
///
/// [`StoreError::NoFreeNodeId`] when every id is held, or a storage failure.
pub async fn join<K: Kv>(
    store: &ChatStore<K>,
    record: &NodeRecord,
    timing: LeaseTiming,
) -> Result<NodeLease, StoreError> {
    let lease = store
        .acquire_node(record, crate::now_ms(), timing.expiry)
        .await?;
    tracing::info!(
        node_id = lease.node_id,
        epoch = lease.epoch,
        "joined the cluster"
    );
    Ok(lease)
}

/// Renews `lease` every `timing.renew_every` with the record `describe`
/// gives at that moment, until `shutdown`; then releases the id. Cancels
/// `lost` if the lease is lost or lapses first.
pub fn spawn_renewals<K, F>(
    tracker: &TaskTracker,
    store: ChatStore<K>,
    lease: NodeLease,
    timing: LeaseTiming,
    describe: F,
    shutdown: CancellationToken,
    lost: CancellationToken,
) where
    K: Kv,
    F: Fn() -> NodeRecord + Send + Sync + 'static,
{
    let describe = Arc::new(describe);
    tracker.spawn(async move {
        // The lease was written when `join` committed, at the latest now.
        let mut valid_until = Instant::now() + timing.expiry;
        let mut tick = tokio::time::interval(timing.renew_every);
        // After a slow renewal, one renewal follows at once, not one for
        // every period it missed.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // Renewals that failed fast leave the lapse to be noticed
                // here, when it happens, not at the next tick.
                () = tokio::time::sleep_until(valid_until) => {}
                () = shutdown.cancelled() => break,
            }
            let attempt = Instant::now();
            let record = describe();
            // A slow renewal may take until the lease would lapse: giving
            // up on it sooner and trying again gains nothing, and a node
            // whose store answers slowly should not stop while its lease
            // still holds.
            let renewal = tokio::time::timeout_at(
                valid_until,
                store.renew_node(&lease, &record, crate::now_ms(), timing.expiry),
            )
            .await;
            match renewal {
                Ok(Ok(_)) => valid_until = attempt + timing.expiry,
                Ok(Err(StoreError::LeaseLost { node_id })) => {
                    tracing::error!(node_id, "another node took this node's id; stopping");
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
                Err(_) => tracing::warn!("lease renewal timed out"),
            }
            if Instant::now() >= valid_until {
                tracing::error!(
                    node_id = lease.node_id,
                    "the lease lapsed without a renewal; stopping"
                );
                lost.cancel();
                return;
            }
        }
        if let Err(e) = store.release_node(&lease).await {
            tracing::warn!(error = %e, "could not release the node id");
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hanmadi_storage::sim::{Faults, SimKv, SimOptions};
    use hanmadi_storage::StoreConfig;

    #[tokio::test(start_paused = true)]
    async fn a_node_whose_renewals_keep_failing_stops_when_its_lease_would_lapse() {
        let store = ChatStore::new(
            SimKv::new(SimOptions::healthy()),
            StoreConfig::for_cluster(),
        );
        let timing = LeaseTiming {
            expiry: Duration::from_secs(2),
            renew_every: Duration::from_millis(400),
        };
        let lease = join(&store, &NodeRecord::default(), timing).await.unwrap();
        let joined = Instant::now();
        // Every commit from now on conflicts: renewals retry, back off and
        // never land.
        store.kv().set_faults(Faults {
            conflict: 1.0,
            ..Faults::none()
        });
        let (tracker, shutdown, lost) = (
            TaskTracker::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        spawn_renewals(
            &tracker,
            store,
            lease,
            timing,
            NodeRecord::default,
            shutdown,
            lost.clone(),
        );
        lost.cancelled().await;
        let stopped = joined.elapsed();
        assert!(
            stopped >= timing.expiry && stopped <= timing.expiry + Duration::from_millis(10),
            "stopped {stopped:?} after joining, with a {:?} lease",
            timing.expiry
        );
    }
}
