//! The node-wide budget of page reads: how many bytes per second `Sync`
//! and `History` pages may read, all connections and HTTP requests
//! together.
//!
//! Each connection's token bucket already charges a page by its size, but
//! a thousand connections each within its own allowance can still make a
//! node do nothing but read: looping `Sync` over full inboxes from 1,000
//! connections read about 950 MB/s here and starved every live delivery.
//! Pages therefore also draw on one shared bucket. A page waits while the
//! bucket is empty and is charged what it read afterwards (its size is
//! known only then), so a burst of readers drives the bucket below zero
//! and the next readers wait until it has refilled: the rate holds on
//! average, and a page is never refused, only delayed. Sends and live
//! deliveries do not draw on it, pulls of notified commits
//! ([`crate::Router::pull`]) included.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Page bytes per second a node reads by default (`--page-bytes-per-sec`):
/// about a tenth of a core here, and enough for 10,000 reconnecting clients with 20 KB of
/// backlog each to catch up in about three seconds.
pub const DEFAULT_PAGE_BYTES_PER_SEC: u64 = 64 * 1024 * 1024;

/// The shared bucket.
#[derive(Debug)]
pub struct PageBudget {
    /// Bytes per second.
    rate: f64,
    /// Most bytes saved up while nobody reads: one second's worth.
    burst: f64,
    /// Bytes available (below zero: owed), as of the instant beside it.
    state: Mutex<(f64, Instant)>,
}

impl PageBudget {
    /// A budget of `bytes_per_sec` (at least 1).
    #[must_use]
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self {
            rate,
            burst: rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Waits until the bucket holds something.
    pub async fn ready(&self) {
        loop {
            let owed = {
                let mut state = self.state.lock();
                let available = self.refill(&mut state);
                if available > 0.0 {
                    return;
                }
                -available
            };
            // One byte more than is owed, so the wait ends with the bucket
            // above zero.
            tokio::time::sleep(Duration::from_secs_f64((owed + 1.0) / self.rate)).await;
        }
    }

    /// Charges `bytes` read.
    pub fn charge(&self, bytes: usize) {
        let mut state = self.state.lock();
        self.refill(&mut state);
        state.0 -= bytes as f64;
    }

    fn refill(&self, state: &mut (f64, Instant)) -> f64 {
        let now = Instant::now();
        let elapsed = now.duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.rate).min(self.burst);
        state.1 = now;
        state.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_waits_while_the_bucket_is_owed() {
        let budget = PageBudget::new(1_000_000);
        // A full bucket lets the first reader through at once.
        tokio::time::timeout(Duration::from_millis(50), budget.ready())
            .await
            .expect("a full bucket does not wait");
        // Two seconds' worth read: the next reader waits about a second
        // (the bucket refills to zero, then past it).
        budget.charge(2_000_000);
        let started = Instant::now();
        budget.ready().await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "waited only {waited:?} for a bucket a second in debt"
        );
    }
}
