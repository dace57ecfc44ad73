//! Counters, latency histograms and the per-second time series.
//!
//! Latencies are microseconds in HdrHistograms. Recorders write into
//! sharded interval histograms under short locks; once a second the
//! ticker moves each interval into the run's totals and into the time
//! series, so the progress line and the plots see per-second figures.
//! Latency counts from when a send was *due* by the open-loop schedule,
//! not from when it went out, so a server that stalls the sender is
//! charged for the wait (coordinated omission, as wrk2 corrects it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

/// Shards of the interval histograms: enough that recorders on different
/// threads rarely meet on one lock.
const SHARDS: usize = 16;

/// Largest latency recorded, in µs (one minute); longer ones are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What a send ended with, beyond its ack.
#[derive(Debug, Clone, Copy)]
pub enum SendFailure {
    /// `RATE_LIMITED`.
    RateLimited,
    /// `SERVER_BUSY` (or HTTP 503).
    Busy,
    /// No answer in time.
    Timeout,
    /// Anything else.
    Other,
}

/// The pair of histograms each interval keeps.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Due → ack.
    pub ack: Histogram<u64>,
    /// Due → delivered to a recipient.
    pub deliver: Histogram<u64>,
}

impl Latencies {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
        Self {
            ack: h(),
            deliver: h(),
        }
    }

    fn reset(&mut self) {
        self.ack.reset();
        self.deliver.reset();
    }

    fn add(&mut self, other: &Self) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.ack.add(&other.ack);
        let _ = self.deliver.add(&other.deliver);
    }
}

/// One second of the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Second {
    /// Seconds since traffic began.
    pub t: f64,
    /// Sends that went out in this second.
    pub sent: u64,
    /// Acks received.
    pub acked: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Failed sends.
    pub errors: u64,
    /// Send→deliver p50 and p99, ms (0 when nothing arrived).
    pub deliver_p50_ms: f64,
    /// See `deliver_p50_ms`.
    pub deliver_p99_ms: f64,
    /// Send→ack p99, ms.
    pub ack_p99_ms: f64,
    /// The server's resident set at the end of the second, MiB (0 when it
    /// could not be read).
    pub server_rss_mib: f64,
    /// Cores the server used in the second.
    pub server_cores: f64,
}

/// Everything a run counts, shared by every task of the run.
#[derive(Debug)]
pub struct Stats {
    /// When traffic began; bodies carry microseconds since this.
    pub epoch: Instant,
    /// Sends that went out.
    pub sent: AtomicU64,
    /// Sends acknowledged.
    pub acked: AtomicU64,
    /// Deliveries of this run's messages.
    pub delivered: AtomicU64,
    /// `RATE_LIMITED` refusals.
    pub rate_limited: AtomicU64,
    /// `SERVER_BUSY` refusals.
    pub busy: AtomicU64,
    /// Sends with no answer in time.
    pub timeouts: AtomicU64,
    /// Other failed sends.
    pub other_errors: AtomicU64,
    /// Connections that ended unexpectedly.
    pub disconnects: AtomicU64,
    /// Sends due but held back by the in-flight cap when they were due.
    pub held: AtomicU64,
    /// Whether latencies count (false during the warm-up and the drain).
    pub measuring: AtomicBool,
    shards: Vec<Mutex<Latencies>>,
    totals: Mutex<Latencies>,
    series: Mutex<Vec<Second>>,
    last: Mutex<[u64; 4]>,
}

impl Stats {
    /// Fresh counters; the epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            other_errors: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            held: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            shards: (0..SHARDS).map(|_| Mutex::new(Latencies::new())).collect(),
            totals: Mutex::new(Latencies::new()),
            series: Mutex::new(Vec::new()),
            last: Mutex::new([0; 4]),
        }
    }

    /// Microseconds since the epoch.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// An ack arrived for a send due at `due_us`.
    pub fn record_ack(&self, shard: usize, due_us: u64) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        if self.measuring.load(Ordering::Relaxed) {
            let us = self
                .now_us()
                .saturating_sub(due_us)
                .clamp(1, MAX_LATENCY_US);
            let _ = self.shards[shard % SHARDS].lock().ack.record(us);
        }
    }

    /// A delivery arrived of a message due at `due_us`.
    pub fn record_delivery(&self, shard: usize, due_us: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if self.measuring.load(Ordering::Relaxed) {
            let us = self
                .now_us()
                .saturating_sub(due_us)
                .clamp(1, MAX_LATENCY_US);
            let _ = self.shards[shard % SHARDS].lock().deliver.record(us);
        }
    }

    /// A send failed.
    pub fn record_failure(&self, failure: SendFailure) {
        let counter = match failure {
            SendFailure::RateLimited => &self.rate_limited,
            SendFailure::Busy => &self.busy,
            SendFailure::Timeout => &self.timeouts,
            SendFailure::Other => &self.other_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed sends of every kind.
    pub fn errors(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
            + self.busy.load(Ordering::Relaxed)
            + self.timeouts.load(Ordering::Relaxed)
            + self.other_errors.load(Ordering::Relaxed)
    }

    /// Closes one second: moves the intervals into the totals and appends
    /// to the time series, which it returns the newest entry of.
    pub fn tick(&self) -> Second {
        let mut interval = Latencies::new();
        for shard in &self.shards {
            let mut s = shard.lock();
            interval.add(&s);
            s.reset();
        }
        self.totals.lock().add(&interval);
        let now = [
            self.sent.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.errors(),
        ];
        let mut last = self.last.lock();
        let second = Second {
            t: self.epoch.elapsed().as_secs_f64(),
            sent: now[0] - last[0],
            acked: now[1] - last[1],
            delivered: now[2] - last[2],
            errors: now[3] - last[3],
            deliver_p50_ms: ms(&interval.deliver, 0.5),
            deliver_p99_ms: ms(&interval.deliver, 0.99),
            ack_p99_ms: ms(&interval.ack, 0.99),
            server_rss_mib: 0.0,
            server_cores: 0.0,
        };
        *last = now;
        self.series.lock().push(second);
        second
    }

    /// Adds the server's memory and CPU to the newest second.
    pub fn annotate_server(&self, rss_mib: f64, cores: f64) {
        if let Some(last) = self.series.lock().last_mut() {
            last.server_rss_mib = rss_mib;
            last.server_cores = cores;
        }
    }

    /// The run's latency totals so far.
    pub fn totals(&self) -> Latencies {
        self.totals.lock().clone()
    }

    /// Forgets the totals (a new `--find-max` step starts).
    pub fn reset_totals(&self) {
        self.totals.lock().reset();
    }

    /// The time series so far.
    pub fn series(&self) -> Vec<Second> {
        self.series.lock().clone()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// The `q` quantile of `h` in milliseconds (0 for an empty histogram).
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `h`'s maximum in milliseconds.
pub fn max_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.max() as f64 / 1000.0
    }
}

/// A duration in whole microseconds.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
