//! The chat keyspace on the embedded engine, fsync on: batch appends of
//! 1, 64 and 512 one-to-one messages (100-byte bodies, 10,000 users), then
//! history and inbox range reads.
//!
//! `cargo bench -p hanmadi-benches --bench chat_store`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hanmadi_proto::pb::MessageKind;
use hanmadi_proto::ConversationId;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::backend::redb::{RedbBackend, RedbOptions};
use hanmadi_storage::backend::Backend;
use hanmadi_storage::chat::{Cursor, IdSource, NewMessage};
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::kv::{Kv, KvTxn};
use hanmadi_storage::sim::{SimKv, SimOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

const USERS: u64 = 10_000;

/// Increasing ids, enough for a benchmark.
#[derive(Default)]
struct Ids(AtomicU64);

impl IdSource for Ids {
    fn next_id(&self, head: u64) -> u64 {
        let next = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        next.max(head + 1)
    }
}

/// Deterministic pseudo-random users.
struct Users(u64);

impl Users {
    fn pair(&mut self) -> (u64, u64) {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let a = 1 + self.0 % USERS;
        let b = 1 + (a + 1 + (self.0 >> 20) % (USERS - 1)) % USERS;
        (a, b)
    }
}

struct Workload {
    users: Users,
    seq: u64,
    body: String,
}

impl Workload {
    fn new() -> Self {
        Self {
            users: Users(0x9E37_79B9_7F4A_7C15),
            seq: 0,
            body: "x".repeat(100),
        }
    }

    fn batch(&mut self, n: usize) -> Vec<NewMessage> {
        (0..n)
            .map(|_| {
                let (a, b) = self.users.pair();
                self.seq += 1;
                NewMessage {
                    conversation: ConversationId::direct(a, b),
                    sender: a,
                    client_msg_id: Bytes::from(self.seq.to_be_bytes().repeat(2)),
                    sent_at: 1_700_000_000_000 + self.seq,
                    kind: MessageKind::Text,
                    body: self.body.clone(),
                    membership: None,
                }
            })
            .collect()
    }
}

fn online(_: u64) -> bool {
    true
}

fn bench_appends<B: Backend>(c: &mut Criterion, name: &str, open: impl Fn(&std::path::Path) -> B) {
    let rt = hanmadi_benches::runtime();
    let mut g = c.benchmark_group(format!("chat_append/{name}"));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.sample_size(20);
    for batch in [1usize, 64, 512] {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv =
            EmbeddedKv::with_backend(open(dir.path()), EmbeddedOptions::default()).expect("engine");
        let store = ChatStore::new(kv, StoreConfig::default());
        let ids = Ids::default();
        let mut work = Workload::new();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &n| {
            b.iter_custom(|iters| {
                let batches: Vec<_> = (0..iters).map(|_| work.batch(n)).collect();
                rt.block_on(async {
                    let start = Instant::now();
                    for batch in batches {
                        for r in store.append(batch, &ids, &online).await {
                            r.expect("append");
                        }
                    }
                    start.elapsed()
                })
            });
        });
    }
    g.finish();
}

fn bench_reads(c: &mut Criterion) {
    let rt = hanmadi_benches::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FjallBackend::open(dir.path(), FjallOptions::default()).expect("open");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    let store = ChatStore::new(kv, StoreConfig::default());
    let ids = Ids::default();
    let mut work = Workload::new();
    // 200,000 messages over 10,000 users, plus one busy conversation with
    // 1,000 messages and its recipient's inbox.
    let busy = ConversationId::direct(USERS + 1, USERS + 2);
    let mut first_cursor = None;
    rt.block_on(async {
        for i in 0..400 {
            let mut batch = work.batch(500);
            if i % 4 == 0 {
                for (k, m) in batch.iter_mut().take(10).enumerate() {
                    m.conversation = busy;
                    m.sender = USERS + 1;
                    m.client_msg_id = Bytes::from(format!("busy-{i}-{k}"));
                }
            }
            for r in store.append(batch, &ids, &online).await {
                let a = r.expect("append");
                if a.conversation == busy && first_cursor.is_none() {
                    first_cursor = a.cursor(1);
                }
            }
        }
    });
    let first: Cursor = first_cursor.expect("busy conversation has a cursor");
    let mut g = c.benchmark_group("chat_read");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(50));
    g.bench_function("history_latest_50", |b| {
        b.iter(|| {
            rt.block_on(async {
                let page = store.history(busy, None, 0, 50).await.expect("history");
                assert_eq!(page.messages.len(), 50);
            })
        });
    });
    g.bench_function("inbox_50_after_cursor", |b| {
        b.iter(|| {
            rt.block_on(async {
                let batch = store.sync(USERS + 2, Some(first), 50).await.expect("sync");
                assert_eq!(batch.entries.len(), 50);
            })
        });
    });
    g.finish();
}

/// The keyspace and transaction layers alone, over memory (no fsync): what
/// the chat layer costs on top of the backend.
fn appends_in_memory(c: &mut Criterion) {
    let rt = hanmadi_benches::runtime();
    let mut g = c.benchmark_group("chat_append/memory");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    let store = ChatStore::new(SimKv::new(SimOptions::healthy()), StoreConfig::default());
    let ids = Ids::default();
    let mut work = Workload::new();
    g.throughput(Throughput::Elements(512));
    g.bench_function("512", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<_> = (0..iters).map(|_| work.batch(512)).collect();
            rt.block_on(async {
                let start = Instant::now();
                for batch in batches {
                    for r in store.append(batch, &ids, &online).await {
                        r.expect("append");
                    }
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

fn appends(c: &mut Criterion) {
    bench_appends(c, "fjall", |p| {
        FjallBackend::open(p, FjallOptions::default()).expect("open fjall")
    });
    bench_appends(c, "redb", |p| {
        RedbBackend::open(p, RedbOptions::default()).expect("open redb")
    });
}

/// KV-layer commits on the embedded engine (fsync on): transactions of 5,
/// 320 and 2,560 random keys, the write volume of 1, 64 and 512 messages.
fn kv_commits(c: &mut Criterion) {
    let rt = hanmadi_benches::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FjallBackend::open(dir.path(), FjallOptions::default()).expect("open");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    let mut g = c.benchmark_group("kv_commit/fjall");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    let mut users = Users(7);
    let value = [7u8; 60];
    for keys in [5usize, 320, 2560] {
        g.throughput(Throughput::Elements(keys as u64));
        g.bench_with_input(BenchmarkId::from_parameter(keys), &keys, |b, &n| {
            b.iter(|| {
                rt.block_on(async {
                    let mut txn = kv.begin().expect("begin");
                    for _ in 0..n {
                        let (a, b) = users.pair();
                        let mut key = *b"k0000000000000000";
                        key[1..9].copy_from_slice(&a.to_be_bytes());
                        key[9..].copy_from_slice(&b.to_be_bytes());
                        txn.set(&key, &value);
                    }
                    txn.commit().await.expect("commit");
                })
            });
        });
    }
    g.finish();
}

criterion_group!(benches, appends_in_memory, kv_commits, appends, bench_reads);
criterion_main!(benches);
