//! The embedded storage engines (fjall and redb, and RocksDB when built with
//! the `rocksdb` feature) under Hanmadi's message workload, each through the
//! `Backend` trait, on a real disk with fsync on.
//!
//! Per engine, on a store pre-filled with [`PREFILL_MESSAGES`] messages:
//!
//! - `commit/<engine>/<n>`: durable commits of `n` one-to-one messages
//!   (throughput in messages);
//! - `read/<engine>/history`: the latest 50 messages of a conversation of
//!   ~1,000, newest first; `read/<engine>/inbox`: 50 inbox entries after a
//!   cursor; `read/<engine>/head` and `read/<engine>/dedup_miss`: point gets;
//! - `latency/<engine>/lone_commit`: one message committed after an idle
//!   pause, beside `latency/<engine>/raw_fsync`, an append and fsync to a
//!   plain file on the same disk.
//!
//! Each engine also prints two probes with percentiles: lone commits
//! interleaved with raw fsyncs (fsync time on a shared disk drifts, so both
//! must see the same disk), and 512-message commits timed on the wall clock
//! and on the writer's CPU clock.
//! Results and the command are in `docs/STORAGE.md`.

use std::fs::File;
use std::hint::black_box;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use hanmadi_benches::thread_cpu;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::backend::redb::{RedbBackend, RedbOptions};
use hanmadi_storage::backend::{Backend, Snapshot, Write};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Users messages are spread over.
const USERS: u64 = 10_000;
/// Messages written before any measurement.
const PREFILL_MESSAGES: usize = 200_000;
/// Messages in the conversation whose history is read.
const HOT_MESSAGES: usize = 1_000;
/// Message body length.
const BODY_LEN: usize = 100;
/// The two users of the conversation whose history is read.
const HOT_USERS: (u64, u64) = (0, 1);
/// Commit sizes measured, in messages.
const COMMIT_SIZES: [usize; 3] = [1, 64, 512];
/// Pairs read per range read.
const PAGE: usize = 50;
/// Idle pause before each lone commit.
const IDLE: Duration = Duration::from_millis(1);
/// Samples of the latency probe, per kind.
const PROBE_SAMPLES: usize = 300;
/// 512-message commits of the batch probe.
const BATCH_PROBE_COMMITS: usize = 40;

/// A one-to-one conversation id: the two users, smaller first.
fn conversation(a: u64, b: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&a.min(b).to_be_bytes());
    id[8..].copy_from_slice(&a.max(b).to_be_bytes());
    id
}

/// The concatenation of `parts`, as one key.
fn key(parts: &[&[u8]]) -> Bytes {
    let mut key = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        key.put_slice(part);
    }
    key.freeze()
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX]
}

/// Generates commits shaped like the chat keyspace's appends.
struct Workload {
    rng: StdRng,
    /// Next message id (ids grow, as the router assigns them).
    next_message: u64,
    /// Commits so far; the first 8 bytes of every inbox cursor.
    commits: u64,
    /// Conversations known to have a head, for point reads.
    heads: Vec<[u8; 16]>,
}

impl Workload {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            next_message: 1,
            commits: 0,
            heads: Vec::new(),
        }
    }

    /// Two distinct random users.
    fn pair(&mut self) -> (u64, u64) {
        let sender = self.rng.random_range(0..USERS);
        let mut recipient = self.rng.random_range(0..USERS - 1);
        if recipient >= sender {
            recipient += 1;
        }
        (sender, recipient)
    }

    /// One commit of `messages` messages between random users; when `hot`
    /// is set, message `i` of the commit goes to the hot conversation when
    /// `hot(i)` says so. Returns the writes and the cursors of the hot
    /// messages.
    fn commit(
        &mut self,
        messages: usize,
        hot: impl Fn(usize) -> bool,
    ) -> (Vec<Write>, Vec<[u8; 12]>) {
        let mut writes = Vec::with_capacity(messages * 5);
        let mut hot_cursors = Vec::new();
        self.commits += 1;
        for index in 0..messages {
            let is_hot = hot(index);
            let (sender, recipient) = if is_hot {
                if self.next_message % 2 == 0 {
                    HOT_USERS
                } else {
                    (HOT_USERS.1, HOT_USERS.0)
                }
            } else {
                self.pair()
            };
            let conv = conversation(sender, recipient);
            let message = self.next_message.to_be_bytes();
            self.next_message += 1;
            let mut client_msg_id = [0u8; 16];
            self.rng.fill(&mut client_msg_id);
            // Versionstamp of the commit (8 + 2 bytes) and the message's
            // order inside it (2 bytes).
            let mut cursor = [0u8; 12];
            cursor[..8].copy_from_slice(&self.commits.to_be_bytes());
            cursor[10..].copy_from_slice(&u16::try_from(index).unwrap_or(u16::MAX).to_be_bytes());
            if is_hot {
                hot_cursors.push(cursor);
            }

            // The message row: sender, client_msg_id, sent_at, body, flags.
            let mut row = BytesMut::with_capacity(140);
            row.put_u64(sender);
            row.put_slice(&client_msg_id);
            row.put_u64(1_700_000_000_000 + self.next_message);
            row.put_bytes(b'x', BODY_LEN);
            row.put_u64(0);
            let pointer = key(&[&conv, &message]);

            writes.push(Write::Set(
                key(&[b"m/", &conv, b"/", &message]),
                row.freeze(),
            ));
            writes.push(Write::Set(
                key(&[b"d/", &sender.to_be_bytes(), b"/", &client_msg_id]),
                pointer.clone(),
            ));
            writes.push(Write::Set(
                key(&[b"h/", &conv]),
                Bytes::copy_from_slice(&message),
            ));
            for user in [sender, recipient] {
                writes.push(Write::Set(
                    key(&[b"i/", &user.to_be_bytes(), b"/", &cursor]),
                    pointer.clone(),
                ));
            }
            if self.heads.len() < 4096 {
                self.heads.push(conv);
            }
        }
        (writes, hot_cursors)
    }
}

/// A store under test, with what the read benchmarks need to know about it.
struct Store<B> {
    backend: B,
    workload: Workload,
    /// Cursor of the hot conversation's middle message in user 0's inbox.
    inbox_after: [u8; 12],
}

/// Fills `backend` with [`PREFILL_MESSAGES`] messages in commits of 512,
/// [`HOT_MESSAGES`] of them in the hot conversation, spread evenly.
fn prefill<B: Backend>(backend: B, name: &str) -> Store<B> {
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("{name}: load average {}", load.trim());
    }
    let started = Instant::now();
    let mut workload = Workload::new(7);
    let every = PREFILL_MESSAGES / HOT_MESSAGES;
    let mut hot_cursors = Vec::with_capacity(HOT_MESSAGES);
    let mut written = 0;
    while written < PREFILL_MESSAGES {
        let n = 512.min(PREFILL_MESSAGES - written);
        let base = written;
        let (writes, hot) = workload.commit(n, |i| (base + i) % every == 0);
        hot_cursors.extend(hot);
        written += n;
        let last = written == PREFILL_MESSAGES;
        if let Err(e) = backend.apply(&writes, last) {
            panic!("{name}: prefill failed: {e}");
        }
    }
    println!(
        "{name}: prefilled {PREFILL_MESSAGES} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let inbox_after = hot_cursors[hot_cursors.len() / 2];
    Store {
        backend,
        workload,
        inbox_after,
    }
}

/// Appends a journal-sized record to `file` and makes it durable.
fn raw_append(file: &mut File, data_only: bool) {
    let record = [0xA5u8; 400];
    if let Err(e) = file.write_all(&record) {
        panic!("raw append: {e}");
    }
    let synced = if data_only {
        file.sync_data()
    } else {
        file.sync_all()
    };
    if let Err(e) = synced {
        panic!("raw fsync: {e}");
    }
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i].as_secs_f64() * 1e3
    };
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e3;
    println!(
        "probe {name:<22} ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {mean:.3}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
    );
}

/// Durable 512-message commits, timed on the wall clock and on the writing
/// thread's CPU clock: on a shared machine the second tells the engine's own
/// cost from time spent waiting for the disk or for a CPU.
fn probe_batches<B: Backend>(store: &mut Store<B>, name: &str) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..BATCH_PROBE_COMMITS {
        let (writes, _) = store.workload.commit(512, |_| false);
        let (started, cpu_before) = (Instant::now(), thread_cpu());
        if let Err(e) = store.backend.apply(&writes, true) {
            panic!("{name}: commit failed: {e}");
        }
        wall.push(started.elapsed());
        if let (Some(before), Some(after)) = (cpu_before, thread_cpu()) {
            cpu.push(after.saturating_sub(before));
        }
    }
    percentiles(&format!("{name} 512 wall"), wall);
    if !cpu.is_empty() {
        percentiles(&format!("{name} 512 writer cpu"), cpu);
    }
}

/// Lone 1-message commits interleaved with raw fsyncs on the same disk, so
/// both see the same disk weather; prints percentiles.
fn probe<B: Backend>(store: &mut Store<B>, name: &str, dir: &Path) {
    let mut file = match File::create(dir.join("probe.raw")) {
        Ok(file) => file,
        Err(e) => panic!("probe file: {e}"),
    };
    let (mut commits, mut fsyncs, mut fdatasyncs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PROBE_SAMPLES {
        let (writes, _) = store.workload.commit(1, |_| false);
        std::thread::sleep(IDLE);
        let started = Instant::now();
        if let Err(e) = store.backend.apply(&writes, true) {
            panic!("{name}: commit failed: {e}");
        }
        commits.push(started.elapsed());
        std::thread::sleep(IDLE);
        let started = Instant::now();
        raw_append(&mut file, false);
        fsyncs.push(started.elapsed());
        std::thread::sleep(IDLE);
        let started = Instant::now();
        raw_append(&mut file, true);
        fdatasyncs.push(started.elapsed());
    }
    percentiles(&format!("{name} lone commit"), commits);
    percentiles(&format!("{name} raw fsync"), fsyncs);
    percentiles(&format!("{name} raw fdatasync"), fdatasyncs);
}

fn bench_engine<B: Backend>(c: &mut Criterion, name: &str, backend: B, dir: &Path) {
    let mut store = prefill(backend, name);
    let hot = conversation(HOT_USERS.0, HOT_USERS.1);

    let mut read = c.benchmark_group("read");
    read.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let history_begin = key(&[b"m/", &hot, b"/"]);
    let history_end = prefix_end(&history_begin);
    read.bench_function(format!("{name}/history"), |b| {
        b.iter(|| {
            let page = store
                .backend
                .snapshot()
                .range(&history_begin, &history_end, PAGE, true);
            assert_eq!(page.map(|p| p.len()).ok(), Some(PAGE));
        });
    });
    let inbox_prefix = key(&[b"i/", &HOT_USERS.0.to_be_bytes(), b"/"]);
    // Just after the cursor: the cursor itself plus a zero byte.
    let inbox_begin = key(&[&inbox_prefix, &store.inbox_after, &[0]]);
    let inbox_end = prefix_end(&inbox_prefix);
    read.bench_function(format!("{name}/inbox"), |b| {
        b.iter(|| {
            let page = store
                .backend
                .snapshot()
                .range(&inbox_begin, &inbox_end, PAGE, false);
            assert_eq!(page.map(|p| p.len()).ok(), Some(PAGE));
        });
    });
    let heads: Vec<Bytes> = store
        .workload
        .heads
        .iter()
        .map(|conv| key(&[b"h/", conv]))
        .collect();
    let mut i = 0;
    read.bench_function(format!("{name}/head"), |b| {
        b.iter(|| {
            i = (i + 1) % heads.len();
            let value = store.backend.snapshot().get(&heads[i]);
            assert!(matches!(value, Ok(Some(_))));
        });
    });
    let mut rng = StdRng::seed_from_u64(11);
    read.bench_function(format!("{name}/dedup_miss"), |b| {
        b.iter_batched(
            || {
                let mut client_msg_id = [0u8; 16];
                rng.fill(&mut client_msg_id);
                let sender = rng.random_range(0..USERS).to_be_bytes();
                key(&[b"d/", &sender, b"/", &client_msg_id])
            },
            |dedup| {
                let value = store.backend.snapshot().get(&dedup);
                assert!(matches!(value, Ok(None)));
            },
            BatchSize::SmallInput,
        );
    });
    read.finish();

    let mut commit = c.benchmark_group("commit");
    commit
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat);
    for messages in COMMIT_SIZES {
        commit.throughput(Throughput::Elements(messages as u64));
        commit.bench_function(format!("{name}/{messages}"), |b| {
            b.iter_batched(
                || store.workload.commit(messages, |_| false).0,
                |writes| {
                    if let Err(e) = store.backend.apply(black_box(&writes), true) {
                        panic!("{name}: commit failed: {e}");
                    }
                    writes
                },
                BatchSize::PerIteration,
            );
        });
    }
    commit.finish();

    let mut latency = c.benchmark_group("latency");
    latency
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat);
    latency.bench_function(format!("{name}/lone_commit"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (writes, _) = store.workload.commit(1, |_| false);
                std::thread::sleep(IDLE);
                let started = Instant::now();
                if let Err(e) = store.backend.apply(&writes, true) {
                    panic!("{name}: commit failed: {e}");
                }
                total += started.elapsed();
            }
            total
        });
    });
    let mut file = match File::create(dir.join("raw")) {
        Ok(file) => file,
        Err(e) => panic!("raw file: {e}"),
    };
    latency.bench_function(format!("{name}/raw_fsync"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(IDLE);
                let started = Instant::now();
                raw_append(&mut file, false);
                total += started.elapsed();
            }
            total
        });
    });
    latency.finish();

    probe(&mut store, name, dir);
    probe_batches(&mut store, name);
}

fn tempdir(name: &str) -> tempfile::TempDir {
    match tempfile::Builder::new()
        .prefix(&format!("hanmadi-{name}-"))
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    }
}

/// The engines run one after the other, each on its own directory, and the
/// first is closed before the second starts, so one's background work
/// (fjall's flushes and compactions) does not slow the other.
fn engines(c: &mut Criterion) {
    {
        let dir = tempdir("fjall");
        let backend = match FjallBackend::open(&dir.path().join("db"), FjallOptions::default()) {
            Ok(backend) => backend,
            Err(e) => panic!("fjall: {e}"),
        };
        bench_engine(c, "fjall", backend, dir.path());
    }
    {
        let dir = tempdir("redb");
        let backend = match RedbBackend::open(&dir.path().join("db"), RedbOptions::default()) {
            Ok(backend) => backend,
            Err(e) => panic!("redb: {e}"),
        };
        bench_engine(c, "redb", backend, dir.path());
    }
    #[cfg(feature = "rocksdb")]
    {
        use hanmadi_storage::backend::rocksdb::{RocksdbBackend, RocksdbOptions};
        let dir = tempdir("rocksdb");
        let backend = match RocksdbBackend::open(&dir.path().join("db"), RocksdbOptions::default())
        {
            Ok(backend) => backend,
            Err(e) => panic!("rocksdb: {e}"),
        };
        bench_engine(c, "rocksdb", backend, dir.path());
    }
}

criterion_group!(benches, engines);
criterion_main!(benches);
