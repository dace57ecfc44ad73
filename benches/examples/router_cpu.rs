//! Acknowledged 1:1 sends through the router on the embedded engine (fsync
//! on) with a fixed number in flight, reporting the rate and the process's
//! CPU time per message. CPU time is the steadier figure on a shared
//! machine: other processes stretch the wall clock, not the work done.
//!
//! `cargo run --release -p hanmadi-benches --example router_cpu -- IN_FLIGHT MESSAGES [ENGINE]`
//! (defaults: 512 in flight, 200,000 messages, `fjall`). `ENGINE` `rocksdb`
//! runs the same on RocksDB and needs `--features rocksdb`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hanmadi_proto::SharedMessage;
use hanmadi_router::{Delivery, DeliverySink, LocalPresence, Router, RouterConfig};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;

use hanmadi_benches::USERS;

/// Builds every recipient's `Deliver` frame, as the gateway does.
#[derive(Debug, Default)]
struct FrameSink {
    frames: AtomicU64,
}

impl DeliverySink for FrameSink {
    fn deliver(&self, d: &Delivery<'_>) {
        let shared = SharedMessage::from_encoded(d.encoded().clone());
        for (_, cursor) in d.recipients() {
            if let Ok(frame) = shared.deliver_frame(cursor.as_bytes()) {
                std::hint::black_box(frame);
                self.frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn notify(&self, _: u64) {}
}

/// User plus system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here,
    // in clock ticks of 1/100 s.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let in_flight: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let messages: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let engine = args.next().unwrap_or_else(|| "fjall".into());
    let rt = hanmadi_benches::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    match engine.as_str() {
        "fjall" => rt.block_on(run(
            hanmadi_benches::open_store(dir.path()),
            in_flight,
            messages,
        )),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => rt.block_on(run(
            hanmadi_benches::open_rocksdb_store(dir.path()),
            in_flight,
            messages,
        )),
        other => panic!("unknown engine {other:?}: fjall, or rocksdb with --features rocksdb"),
    }
}

async fn run<K: Kv>(store: ChatStore<K>, in_flight: u64, messages: u64) {
    hanmadi_benches::create_users(&store, USERS).await;
    let presence = Arc::new(LocalPresence::new());
    for u in 1..=USERS {
        presence.connect(u);
    }
    let sink = Arc::new(FrameSink::default());
    let (router, _task) = Router::start(store, presence, sink.clone(), RouterConfig::default());
    let router = Arc::new(router);
    let per = messages.div_ceil(in_flight);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    hanmadi_benches::send_direct(&router, in_flight, per).await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let sent = per * in_flight;
    println!(
        "{sent} messages, {in_flight} in flight: {:.0} acked/s, {:.1} µs CPU per message ({:.2} cores), {} deliveries",
        sent as f64 / wall,
        cpu * 1e6 / sent as f64,
        cpu / wall,
        sink.frames.load(Ordering::Relaxed),
    );
}
