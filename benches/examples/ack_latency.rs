//! Ack latency of 1:1 sends at a fixed rate through the router on the
//! embedded engine (fsync on): p50, p99 and p99.9 from send to ack.
//!
//! `cargo run --release -p hanmadi-benches --example ack_latency -- RATE SECONDS`
//! (defaults: 15,000 messages/s for 5 s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hanmadi_router::{LocalPresence, NoDelivery, Router, RouterConfig, Target};

use hanmadi_benches::{pair, request, USERS};
/// Sends are issued by this many tasks, each on its own schedule.
const SENDERS: u64 = 64;

fn main() {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(15_000);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let rt = hanmadi_benches::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let latencies = rt.block_on(async {
        let store = hanmadi_benches::open_store(dir.path());
        hanmadi_benches::create_users(&store, USERS).await;
        let (router, _task) = Router::start(
            store,
            Arc::new(LocalPresence::new()),
            Arc::new(NoDelivery),
            RouterConfig::default(),
        );
        let router = Arc::new(router);
        let interval = Duration::from_secs_f64(SENDERS as f64 / rate as f64);
        let per_sender = rate * secs / SENDERS;
        let mut tasks = Vec::new();
        let begin = tokio::time::Instant::now();
        for s in 0..SENDERS {
            let router = Arc::clone(&router);
            // Staggered so the senders together send at an even pace, not
            // in bursts of SENDERS.
            let first = begin + interval.mul_f64(s as f64 / SENDERS as f64);
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(first, interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut lat = Vec::with_capacity(per_sender as usize);
                for i in 0..per_sender {
                    ticker.tick().await;
                    let n = s * 1_000_000 + i;
                    let (a, b) = pair(n);
                    let t0 = Instant::now();
                    router
                        .send(a, request(n, Target::User(b)))
                        .await
                        .expect("send");
                    lat.push(t0.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("sender"));
        }
        all
    });
    let mut lat = latencies;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "rate {rate}/s for {secs} s: {} acks, p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        lat.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        lat[lat.len() - 1]
    );
}
