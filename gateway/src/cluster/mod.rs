//! A node's part in a cluster on FoundationDB (DESIGN §6):
//!
//! - [`membership`]: the node's id from a lease in storage, renewed while
//!   it serves, given up on drain; losing it stops the node.
//! - [`peers`]: the live nodes, as last read from their registrations.
//! - [`presence`]: the presence index, user → nodes holding connections.
//! - [`link`]: the authenticated node-to-node link.
//! - [`delivery`]: notify, then pull; the change feed as the backstop.

pub mod delivery;
pub mod link;
pub mod membership;
pub mod peers;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;
use tokio_util::sync::CancellationToken;

pub use membership::{join, LeaseTiming};

/// Reads the node registrations into `peers` every `every`, and when they
/// look stale (at most every [`STALE_READ_GAP`]), until `shutdown`.
pub async fn run_peers<K: Kv>(
    store: ChatStore<K>,
    me: u64,
    peers: Arc<peers::Peers>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = peers.stale() => {}
            () = shutdown.cancelled() => return,
        }
        match store.nodes().await {
            Ok(registrations) => peers.update(me, crate::now_ms(), registrations),
            Err(e) => tracing::warn!(error = %e, "reading node registrations failed"),
        }
        // Entries that keep looking stale must not turn into a read per
        // lookup.
        tokio::select! {
            () = tokio::time::sleep(STALE_READ_GAP.min(every)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The shortest gap between two reads of the node registrations.
pub const STALE_READ_GAP: Duration = Duration::from_millis(250);
