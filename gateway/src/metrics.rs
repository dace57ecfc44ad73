//! Counters the node exposes at `/metrics` (Prometheus text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
    /// Connections closed, by reason.
    pub closes: Family<ReasonLabel, Counter>,
    /// Messages per commit batch.
    pub commit_batch: Histogram,
    /// Seconds from a batch's start to its durable commit.
    pub commit_seconds: Histogram,
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
        let mut m = Self {
            connections: Family::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            socket_writes: Counter::default(),
            deliveries: Counter::default(),
            closes: Family::default(),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
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
        m
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a close.
    pub fn closed(&self, reason: &'static str) {
        self.closes.get_or_create(&ReasonLabel { reason }).inc();
    }
}
