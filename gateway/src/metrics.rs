//! Counters the node exposes at `/metrics` (Prometheus text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label of per-transport series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `tcp`, `tls`, `ws` or `wss`.
    pub transport: &'static str,
}

/// Label of closes by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why the connection closed.
    pub reason: &'static str,
}

/// Every counter of the node.
#[derive(Debug)]
pub struct Metrics {
    /// Live connections by transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Frames read from clients.
    pub frames_in: Counter,
    /// Frames written to clients.
    pub frames_out: Counter,
    /// Socket write calls (frames out / socket writes = batching).
    pub socket_writes: Counter,
    /// `Deliver` frames queued to connections.
    pub deliveries: Counter,
    /// Pages of inboxes connections read to deliver (resyncs, and on a
    /// cluster the deliveries that could not follow the last one written).
    pub inbox_pulls: Counter,
    /// Change-feed entries a cluster node read: the backstop under its
    /// links (docs/CLUSTER.md).
    pub feed_entries: Counter,
    /// Connections closed, by reason.
    pub closes: Family<ReasonLabel, Counter>,
    /// Messages per commit batch.
    pub commit_batch: Histogram,
    /// Seconds from a batch's start to its durable commit.
    pub commit_seconds: Histogram,
    /// Push requests the gateway accepted (2xx).
    pub push_sent: Counter,
    /// Push attempts that failed and will be retried.
    pub push_retried: Counter,
    /// Push requests given up, by reason.
    pub push_dropped: Family<ReasonLabel, Counter>,
    /// Seconds one push request took, answered or not.
    pub push_seconds: Histogram,
    /// Push requests in flight now.
    pub push_in_flight: Gauge,
    /// Most push requests that were ever in flight at once.
    pub push_in_flight_peak: Gauge,
    push_peak: std::sync::atomic::AtomicI64,
    /// Open node-to-node links (a cluster node).
    pub cluster_links: Gauge,
    /// Connections to the node-to-node port refused: a failed handshake
    /// (no proof of the cluster's secret, a relayed one, a deadline), or
    /// too many handshakes in progress.
    pub cluster_links_refused: Counter,
    /// Events queued to node-to-node links.
    pub cluster_events_sent: Counter,
    /// Events dropped for want of an open link or room in its queue (the
    /// change feed carries them).
    pub cluster_events_dropped: Counter,
    /// The process's resident set, read from `/proc` at each scrape.
    process_rss: Gauge,
    /// CPU time the process has used, user and system, read from `/proc`
    /// at each scrape; load tools divide its growth by the messages moved.
    process_cpu: Gauge<f64, AtomicU64>,
    /// The embedded store's memory, read at each scrape (none on
    /// FoundationDB, whose memory lives in its own processes).
    store_memory: Option<StoreMemoryProbe>,
    store_cache: Gauge,
    store_cache_capacity: Gauge,
    store_write_buffer: Gauge,
    /// The export registry: it holds handles to the same series as the
    /// fields above.
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh counters, registered for export.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// As [`Metrics::new`], exporting the store's memory too: `probe` is
    /// read at each scrape.
    pub fn with_store_memory(probe: StoreMemoryProbe) -> Self {
        Self::build(Some(probe))
    }

    fn build(store_memory: Option<StoreMemoryProbe>) -> Self {
        let mut m = Self {
            connections: Family::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            socket_writes: Counter::default(),
            deliveries: Counter::default(),
            inbox_pulls: Counter::default(),
            feed_entries: Counter::default(),
            closes: Family::default(),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            push_sent: Counter::default(),
            push_retried: Counter::default(),
            push_dropped: Family::default(),
            push_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            push_in_flight: Gauge::default(),
            push_in_flight_peak: Gauge::default(),
            push_peak: std::sync::atomic::AtomicI64::new(0),
            cluster_links: Gauge::default(),
            cluster_links_refused: Counter::default(),
            cluster_events_sent: Counter::default(),
            cluster_events_dropped: Counter::default(),
            process_rss: Gauge::default(),
            process_cpu: Gauge::default(),
            store_memory,
            store_cache: Gauge::default(),
            store_cache_capacity: Gauge::default(),
            store_write_buffer: Gauge::default(),
            registry: Registry::with_prefix("hanmadi"),
        };
        let r = &mut m.registry;
        r.register("connections", "Live connections", m.connections.clone());
        r.register("frames_in", "Frames read from clients", m.frames_in.clone());
        r.register(
            "frames_out",
            "Frames written to clients",
            m.frames_out.clone(),
        );
        r.register(
            "socket_writes",
            "Socket write calls",
            m.socket_writes.clone(),
        );
        r.register("deliveries", "Deliver frames queued", m.deliveries.clone());
        r.register(
            "inbox_pulls",
            "Inbox pages read by connections to deliver",
            m.inbox_pulls.clone(),
        );
        r.register(
            "feed_entries",
            "Change-feed entries read by this cluster node",
            m.feed_entries.clone(),
        );
        r.register("closes", "Connections closed, by reason", m.closes.clone());
        r.register(
            "commit_batch_messages",
            "Messages per commit",
            m.commit_batch.clone(),
        );
        r.register(
            "commit_seconds",
            "Time to commit a batch durably",
            m.commit_seconds.clone(),
        );
        r.register("push_sent", "Push requests accepted", m.push_sent.clone());
        r.register(
            "push_retried",
            "Push attempts that failed and will be retried",
            m.push_retried.clone(),
        );
        r.register(
            "push_dropped",
            "Push requests given up, by reason",
            m.push_dropped.clone(),
        );
        r.register(
            "push_seconds",
            "Time one push request took",
            m.push_seconds.clone(),
        );
        r.register(
            "push_in_flight",
            "Push requests in flight",
            m.push_in_flight.clone(),
        );
        r.register(
            "push_in_flight_peak",
            "Most push requests in flight at once",
            m.push_in_flight_peak.clone(),
        );
        r.register(
            "cluster_links",
            "Open node-to-node links",
            m.cluster_links.clone(),
        );
        r.register(
            "cluster_links_refused",
            "Connections to the node-to-node port refused",
            m.cluster_links_refused.clone(),
        );
        r.register(
            "cluster_events_sent",
            "Events queued to node-to-node links",
            m.cluster_events_sent.clone(),
        );
        r.register(
            "cluster_events_dropped",
            "Events dropped for want of an open link or queue room",
            m.cluster_events_dropped.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident set size of the process",
            m.process_rss.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "User and system CPU time of the process",
            m.process_cpu.clone(),
        );
        if m.store_memory.is_some() {
            r.register(
                "store_cache_bytes",
                "Bytes of table blocks in the embedded store's cache",
                m.store_cache.clone(),
            );
            r.register(
                "store_cache_capacity_bytes",
                "The embedded store's cache cap (--store-cache-mb)",
                m.store_cache_capacity.clone(),
            );
            r.register(
                "store_write_buffer_bytes",
                "Bytes in the embedded store's memtables, active and sealed",
                m.store_write_buffer.clone(),
            );
        }
        m
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        if let Some(usage) = ProcessUsage::read() {
            self.process_rss.set(usage.rss_bytes);
            self.process_cpu.set(usage.cpu_seconds);
        }
        if let Some(probe) = &self.store_memory {
            let now = probe.read();
            self.store_cache.set(gauge_value(now.cache_bytes));
            self.store_cache_capacity
                .set(gauge_value(now.cache_capacity_bytes));
            self.store_write_buffer
                .set(gauge_value(now.write_buffer_bytes));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a push request given up.
    pub fn push_dropped(&self, reason: &'static str) {
        self.push_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a push request starting, and keeps the peak.
    pub fn push_in_flight_started(&self) {
        let now = self.push_in_flight.inc() + 1;
        let peak = self
            .push_peak
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed)
            .max(now);
        self.push_in_flight_peak.set(peak);
    }

    /// Counts a close.
    pub fn closed(&self, reason: &'static str) {
        self.closes.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// What the embedded store holds in memory (see
/// `hanmadi_storage::backend::fjall::FjallMemory`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreMemory {
    /// Table blocks in the cache.
    pub cache_bytes: u64,
    /// The cache's cap.
    pub cache_capacity_bytes: u64,
    /// Memtables, active and sealed.
    pub write_buffer_bytes: u64,
}

/// Reads the store's memory at a scrape.
#[derive(Clone)]
pub struct StoreMemoryProbe(std::sync::Arc<dyn Fn() -> StoreMemory + Send + Sync>);

impl StoreMemoryProbe {
    /// A probe that calls `read`.
    pub fn new(read: impl Fn() -> StoreMemory + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(read))
    }

    /// What the store holds now.
    pub fn read(&self) -> StoreMemory {
        (self.0)()
    }
}

impl std::fmt::Debug for StoreMemoryProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMemoryProbe")
    }
}

/// A byte count as a gauge value (saturating; no store holds 8 EiB).
fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// What `/proc` says of this process.
#[derive(Debug, Clone, Copy)]
struct ProcessUsage {
    rss_bytes: i64,
    cpu_seconds: f64,
}

impl ProcessUsage {
    /// Linux reports CPU times in USER_HZ ticks, fixed at 100 per second
    /// by its ABI whatever the kernel's own tick rate.
    const TICKS_PER_SECOND: f64 = 100.0;
    /// `/proc/self/statm` counts pages; 4 KiB on every platform this runs on.
    const PAGE_BYTES: i64 = 4096;

    /// `None` where `/proc` is missing (not Linux) or unreadable.
    fn read() -> Option<Self> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let rss_pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name is parenthesised and may hold spaces: count the
        // fields after its closing parenthesis. utime and stime are fields
        // 14 and 15 of the line, so 12th and 13th after the name.
        let mut after_name = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let utime: u64 = after_name.nth(11)?.parse().ok()?;
        let stime: u64 = after_name.next()?.parse().ok()?;
        Some(Self {
            rss_bytes: rss_pages * Self::PAGE_BYTES,
            cpu_seconds: (utime + stime) as f64 / Self::TICKS_PER_SECOND,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_process_usage() {
        let text = Metrics::new().render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(-1.0)
        };
        assert!(
            value("hanmadi_process_resident_memory_bytes ") > 1_000_000.0,
            "{text}"
        );
        assert!(value("hanmadi_process_cpu_seconds ") >= 0.0, "{text}");
    }
}
