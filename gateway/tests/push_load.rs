//! 10,000 offline users with one message each: every one is pushed once,
//! with requests in flight and the process's memory within bounds. The
//! figures it prints are in docs/PERFORMANCE.md.

#[allow(dead_code)]
mod push_receiver;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use hanmadi_gateway::push::PushConfig;
use hanmadi_gateway::{Listeners, Server, ServerOptions};
use hanmadi_proto::pb::MessageKind;
use hanmadi_proto::ConversationId;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::chat::{IdSource, NewMessage, UserRecord};
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};
use push_receiver::Receiver;

const USERS: u64 = 10_000;
const MAX_IN_FLIGHT: usize = 32;
const SENDER: u64 = 1;

#[derive(Default)]
struct Ids(AtomicU64);

impl IdSource for Ids {
    fn next_id(&self, head: u64) -> u64 {
        self.0.fetch_max(head, Ordering::SeqCst);
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_offline_users_are_each_pushed_once_within_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FjallBackend::open(dir.path(), FjallOptions::default()).expect("open");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    let store = ChatStore::new(kv, StoreConfig::default());
    let rss_start = status_kib("VmRSS:");

    // Users and their messages through the keyspace, before the node
    // starts: the push phase is measured alone.
    let created = futures::stream::iter(SENDER..=SENDER + USERS)
        .map(|u| {
            let store = store.clone();
            async move {
                let record = UserRecord {
                    username: format!("u{u}"),
                    ..UserRecord::default()
                };
                store.create_user(u, &record).await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    assert!(created.iter().all(Result::is_ok));
    let ids = Ids::default();
    let recipients: Vec<u64> = (SENDER + 1..=SENDER + USERS).collect();
    for chunk in recipients.chunks(500) {
        let batch = chunk
            .iter()
            .map(|&u| NewMessage {
                conversation: ConversationId::direct(SENDER, u),
                sender: SENDER,
                client_msg_id: Bytes::from(format!("m{u}")),
                sent_at: now_ms(),
                kind: MessageKind::Text,
                body: format!("hello {u}"),
                membership: None,
            })
            .collect();
        let appended = store.append(batch, &ids, &|_| false).await;
        assert!(appended.iter().all(Result::is_ok));
    }

    // Each answer takes 5 ms, so requests overlap and the peak shows.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let receiver = Receiver::serve_with(
        listener,
        Box::new(|_, _| 200),
        Duration::from_millis(5),
        false,
    );
    // Peak RSS from here on (Linux: writing 5 to clear_refs resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = Server::start(
        store,
        Listeners {
            http: Some(http),
            ..Listeners::default()
        },
        ServerOptions {
            secret: b"test secret, not for production".to_vec(),
            push: PushConfig {
                webhook: Some(receiver.url("/push")),
                delay: Duration::from_millis(100),
                max_in_flight: MAX_IN_FLIGHT,
                ..PushConfig::default()
            },
            ..ServerOptions::default()
        },
    );
    receiver
        .wait_until("every user pushed", Duration::from_secs(120), |log| {
            log.len() >= USERS as usize
        })
        .await;
    let took = started.elapsed();
    let peak_kib = status_kib("VmHWM:");
    // Anything still due would have gone out by now.
    let metrics = server.metrics().render();
    let log = receiver.requests();
    let mut per_user: HashMap<u64, usize> = HashMap::new();
    for r in &log {
        *per_user.entry(r.user().expect("a user")).or_default() += 1;
        assert_eq!(r.unseen, Some(1));
    }
    assert_eq!(per_user.len(), USERS as usize, "every user pushed");
    assert!(per_user.values().all(|&n| n == 1), "each once");
    let peak = receiver.peak();
    assert!(peak <= MAX_IN_FLIGHT, "{peak} requests in flight at once");
    let counted: usize = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("hanmadi_push_in_flight_peak ")?
                .trim()
                .parse()
                .ok()
        })
        .expect("the node's own peak");
    assert!(
        (peak..=MAX_IN_FLIGHT).contains(&counted),
        "the node counts a peak of {counted}"
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let seeding = mib(rss_before.saturating_sub(rss_start));
    let pushing = mib(peak_kib.saturating_sub(rss_before));
    eprintln!(
        "push load: {USERS} users pushed in {:.1} s ({:.0}/s); peak in flight {peak} \
         (bound {MAX_IN_FLIGHT}); RSS {:.1} MiB at start, {:.1} MiB after seeding \
         (+{seeding:.1}), peak while pushing {:.1} MiB (+{pushing:.1})",
        took.as_secs_f64(),
        USERS as f64 / took.as_secs_f64(),
        mib(rss_start),
        mib(rss_before),
        mib(peak_kib),
    );
    // The push phase writes about as much to the store as seeding did
    // (a job, its schedule and their clearing per user): growth beyond
    // the store's own (memtable, block cache) would be the worker's.
    assert!(
        pushing < 2.0 * seeding + 32.0,
        "RSS grew {pushing:.1} MiB while pushing, {seeding:.1} MiB while seeding"
    );
    server.shutdown().await;
}
