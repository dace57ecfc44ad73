//! The router on the embedded engine (fsync on): acknowledged 1:1 sends
//! with 1, 64 and 512 senders in flight, and group fan-out to 100 and 1,000
//! members, counting every recipient's `Deliver` frame.
//!
//! `cargo bench -p hanmadi-benches --bench router`; with
//! `HANMADI_BENCH_LINGER_US=N` the appender lingers N µs instead of its
//! default (`0` never lingers), to compare.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hanmadi_proto::SharedMessage;
use hanmadi_router::{Delivery, DeliverySink, LocalPresence, Router, RouterConfig, Target};

use hanmadi_benches::{next_seq, request, send_direct, USERS};

/// Builds each recipient's `Deliver` frame, as the gateway would before
/// queueing it, and counts them.
#[derive(Debug, Default)]
struct CountingSink {
    frames: AtomicU64,
}

impl DeliverySink for CountingSink {
    fn deliver(&self, d: &Delivery<'_>) {
        let shared = SharedMessage::from_encoded(d.encoded().clone());
        let mut n = 0;
        for (_, cursor) in d.recipients() {
            if let Ok(frame) = shared.deliver_frame(cursor.as_bytes()) {
                std::hint::black_box(frame);
                n += 1;
            }
        }
        self.frames.fetch_add(n, Ordering::Relaxed);
    }

    fn notify(&self, _: u64) {}
}

type R =
    Router<hanmadi_storage::embedded::EmbeddedKv<hanmadi_storage::backend::fjall::FjallBackend>>;

fn start(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> (Arc<R>, Arc<CountingSink>) {
    rt.block_on(async {
        let store = hanmadi_benches::open_store(dir);
        hanmadi_benches::create_users(&store, USERS).await;
        let sink = Arc::new(CountingSink::default());
        let presence = Arc::new(LocalPresence::new());
        for u in 1..=USERS {
            presence.connect(u);
        }
        let mut config = RouterConfig::default();
        if let Some(us) = std::env::var("HANMADI_BENCH_LINGER_US")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config.appender.linger = Duration::from_micros(us);
        }
        let (router, _task) = Router::start(store, presence, sink.clone(), config);
        (Arc::new(router), sink)
    })
}

fn sends(c: &mut Criterion) {
    let rt = hanmadi_benches::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (router, _) = start(&rt, dir.path());
    let mut g = c.benchmark_group("router_send");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    for in_flight in [1u64, 64, 512] {
        g.bench_with_input(
            BenchmarkId::new("in_flight", in_flight),
            &in_flight,
            |b, &k| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let per = iters.div_ceil(k);
                        let start = Instant::now();
                        send_direct(&router, k, per).await;
                        // Report the time per message actually sent.
                        start.elapsed().mul_f64(iters as f64 / (per * k) as f64)
                    })
                });
            },
        );
    }
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let rt = hanmadi_benches::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (router, sink) = start(&rt, dir.path());
    let mut g = c.benchmark_group("router_fanout");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.sample_size(10);
    for members in [100u64, 1000] {
        let (group, _) = rt
            .block_on(router.create_group(1, format!("g{members}"), (2..=members).collect()))
            .expect("group");
        // Throughput counts recipient deliveries.
        g.throughput(Throughput::Elements(members));
        g.bench_with_input(BenchmarkId::new("members", members), &members, |b, &m| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let before = sink.frames.load(Ordering::Relaxed);
                    let start = Instant::now();
                    // 16 members post at once, as a busy group does.
                    let per = iters.div_ceil(16);
                    let mut tasks = Vec::new();
                    for s in 0..16u64 {
                        let router = Arc::clone(&router);
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..per {
                                router
                                    .send(1 + s % m, request(next_seq(), Target::Group(group)))
                                    .await
                                    .expect("send");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("sender");
                    }
                    let elapsed = start.elapsed();
                    let frames = sink.frames.load(Ordering::Relaxed) - before;
                    assert_eq!(frames, per * 16 * m, "every member got every message");
                    elapsed.mul_f64(iters as f64 / (per * 16) as f64)
                })
            });
        });
    }
    g.finish();
}

criterion_group!(benches, sends, fanout);
criterion_main!(benches);
