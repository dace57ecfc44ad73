//! Shared helpers for Hanmadi benchmarks and measurement examples.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hanmadi_router::{Router, SendRequest, Target};
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::backend::Backend;
use hanmadi_storage::chat::UserRecord;
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::{ChatStore, StoreConfig};

/// The node's allocator (see the `hanmadi` binary), so that benchmarks
/// of the node's paths pay what the node pays for each allocation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Users the router benchmarks create and send between.
pub const USERS: u64 = 10_000;

/// The `n`-th sender and recipient of the router benchmarks: two different
/// users of `1..=USERS`, spread at random, so nearly every message of a
/// run opens a conversation of its own.
pub fn pair(n: u64) -> (u64, u64) {
    let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let a = 1 + x % USERS;
    let b = 1 + (a + (x >> 32) % (USERS - 1)) % USERS;
    (a, b)
}

/// A send of 100 bytes to `to`, its `client_msg_id` made from `n`.
pub fn request(n: u64, to: Target) -> SendRequest {
    SendRequest {
        client_msg_id: Bytes::from(n.to_be_bytes().to_vec()),
        to,
        body: "x".repeat(100),
    }
}

/// A number no earlier call in this process returned: each send's
/// `client_msg_id`, so that none is taken for a retry of another.
pub fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Sends `senders × per` 1:1 messages through `router` between the pairs
/// of [`pair`], `senders` tasks each sending one message after another,
/// and returns once every one is acknowledged.
///
/// # Panics
///
/// When a send fails.
pub async fn send_direct<K: Kv>(router: &Arc<Router<K>>, senders: u64, per: u64) {
    let mut tasks = Vec::with_capacity(usize::try_from(senders).unwrap_or(0));
    for _ in 0..senders {
        let router = Arc::clone(router);
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let n = next_seq();
                let (a, b) = pair(n);
                router
                    .send(a, request(n, Target::User(b)))
                    .await
                    .expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
}

/// The runtime every benchmark uses: two workers, as many as the benchmark
/// machine has cores.
///
/// # Panics
///
/// When the runtime cannot start.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The chat store the benchmarks use: the embedded engine on fjall in
/// `dir`, fsync on.
///
/// # Panics
///
/// When the store cannot be opened (a benchmark cannot go on without it).
pub fn open_store(dir: &Path) -> ChatStore<EmbeddedKv<FjallBackend>> {
    store_on(FjallBackend::open(dir, FjallOptions::default()).expect("open fjall"))
}

/// One node's chat store over `backend`, fsync on.
fn store_on<B: Backend>(backend: B) -> ChatStore<EmbeddedKv<B>> {
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    ChatStore::new(kv, StoreConfig::single_node())
}

/// The same store on RocksDB instead of fjall, for comparing the engines
/// (`docs/STORAGE.md`).
///
/// # Panics
///
/// When the store cannot be opened.
#[cfg(feature = "rocksdb")]
pub fn open_rocksdb_store(
    dir: &Path,
) -> ChatStore<EmbeddedKv<hanmadi_storage::backend::rocksdb::RocksdbBackend>> {
    use hanmadi_storage::backend::rocksdb::{RocksdbBackend, RocksdbOptions};
    store_on(RocksdbBackend::open(dir, RocksdbOptions::default()).expect("open rocksdb"))
}

/// Creates users `1..=n` (named `u<id>`), 256 sign-ups at a time so the
/// engine groups their commits.
///
/// # Panics
///
/// When a sign-up fails.
pub async fn create_users<K: Kv>(store: &ChatStore<K>, n: u64) {
    let users: Vec<u64> = (1..=n).collect();
    for chunk in users.chunks(256) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&u| {
                let store = store.clone();
                tokio::spawn(async move {
                    let rec = UserRecord {
                        username: format!("u{u}"),
                        ..UserRecord::default()
                    };
                    store.create_user(u, &rec).await.expect("create user");
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("sign-up task");
        }
    }
}

/// CPU time the calling thread has used, from Linux's schedstat; `None`
/// elsewhere.
pub fn thread_cpu() -> Option<Duration> {
    schedstat_cpu(Path::new("/proc/thread-self/schedstat"))
}

/// CPU time the live threads of this process have used, from Linux's
/// schedstat; `None` elsewhere. A thread that ends takes its time with
/// it: measure across threads that live throughout.
pub fn live_threads_cpu() -> Option<Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| schedstat_cpu(&t.path().join("schedstat")))
            .sum(),
    )
}

/// The first field of a schedstat file: nanoseconds on a CPU.
fn schedstat_cpu(path: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}
