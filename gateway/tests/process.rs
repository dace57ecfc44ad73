//! The real `hanmadi` binary under load: `kill -9` loses no acknowledged
//! message; SIGTERM drains — every acknowledged message persisted, clients
//! told to reconnect, exit within 5 s.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod binary;

use binary::Serve;
use hanmadi_client::{Client, ClientConfig, ClientError, Event, Target};
use hanmadi_gateway::auth::TokenIssuer;
use hanmadi_proto::ConversationId;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::chat::UserRecord;
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};
use parking_lot::Mutex;

const SECRET: &str = "process-test-secret-0123456789abcdef";
const USERS: u64 = 6;

fn open_store(data: &Path) -> ChatStore<EmbeddedKv<FjallBackend>> {
    let backend = FjallBackend::open(&data.join("store"), FjallOptions::default()).expect("open");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    ChatStore::new(kv, StoreConfig::single_node())
}

/// Creates the users before the node starts (the HTTP API is not needed).
async fn seed(data: &Path) {
    let store = open_store(data);
    for u in 1..=USERS {
        store
            .create_user(
                u,
                &UserRecord {
                    username: format!("user{u}"),
                    ..UserRecord::default()
                },
            )
            .await
            .expect("user");
    }
}

/// A node on `data`, serving raw TCP only, and its address.
fn spawn(data: &Path) -> (Serve, String) {
    let node = Serve::start(
        data,
        &[
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "off",
            "--https",
            "off",
            "--secret",
            SECRET,
            "--rate-per-sec",
            "100000",
            "--rate-burst",
            "100000",
        ],
    );
    let addr = node.listening("tcp");
    (node, addr)
}

fn token(user: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    TokenIssuer::new(SECRET.as_bytes()).issue(user, now, Duration::from_secs(600))
}

type Acks = Arc<Mutex<Vec<(ConversationId, u64)>>>;

/// Each sender's task, which ends with the error that stopped it, and the
/// deliveries of its connection.
type Senders = Vec<(
    tokio::task::JoinHandle<Option<ClientError>>,
    hanmadi_client::Deliveries,
)>;

/// Senders that send until their connection fails, recording every ack.
async fn load(addr: &str, acks: Acks) -> Senders {
    let mut tasks = Vec::new();
    for u in 1..=USERS {
        let (client, deliveries) = Client::connect(ClientConfig::new(addr, token(u), "load"))
            .await
            .expect("connect");
        let acks = Arc::clone(&acks);
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                let to = 1 + (u + i) % USERS;
                match client.send(Target::User(to), format!("m{i}")).await {
                    Ok(ack) => {
                        let c = ack
                            .conversation
                            .as_ref()
                            .and_then(|c| ConversationId::try_from(c).ok())
                            .expect("ack names its conversation");
                        acks.lock().push((c, ack.message_id));
                    }
                    Err(e) => return Some(e),
                }
                i += 1;
            }
        });
        tasks.push((task, deliveries));
    }
    tasks
}

/// Every acknowledged message is stored exactly once.
async fn check_persisted(data: &Path, acks: &[(ConversationId, u64)]) {
    let store = open_store(data);
    let mut stored = std::collections::HashMap::new();
    let convs: std::collections::HashSet<ConversationId> = acks.iter().map(|(c, _)| *c).collect();
    for c in convs {
        let mut before = 0;
        loop {
            let page = store.history(c, None, before, 1000).await.expect("history");
            for m in &page.messages {
                let m = <hanmadi_proto::pb::Message as hanmadi_proto::prost::Message>::decode(
                    m.as_ref(),
                )
                .expect("decode");
                before = m.message_id;
                *stored.entry(m.message_id).or_insert(0) += 1;
            }
            if !page.has_more {
                break;
            }
        }
    }
    for (_, id) in acks {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "acknowledged message {id} stored once"
        );
    }
}

async fn wait_for_acks(acks: &Acks, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().len() < n {
        assert!(Instant::now() < deadline, "load too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node on fresh, seeded data, under load until `n` sends were acked:
/// its data directory, the node, the acks and the senders.
async fn under_load(n: usize) -> (tempfile::TempDir, Serve, Acks, Senders) {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path()).await;
    let (node, addr) = spawn(dir.path());
    let acks: Acks = Arc::default();
    let senders = load(&addr, Arc::clone(&acks)).await;
    wait_for_acks(&acks, n).await;
    (dir, node, acks, senders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    let (dir, mut node, acks, senders) = under_load(1500).await;
    node.child.kill().expect("SIGKILL");
    node.child.wait().expect("reap");
    for (t, _) in senders {
        assert!(
            t.await.expect("sender").is_some(),
            "sends fail once the node is gone"
        );
    }
    let acked = acks.lock().clone();
    // Restart on the same data: the node serves again, and history holds
    // every acknowledged message once.
    let (mut again, addr) = spawn(dir.path());
    let (client, _d) = Client::connect(ClientConfig::new(&addr, token(1), "check"))
        .await
        .expect("reconnect after restart");
    client.ping().await.expect("restarted node answers");
    client.close().await;
    again.child.kill().expect("stop");
    again.child.wait().expect("reap");
    check_persisted(dir.path(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains() {
    let (dir, mut node, acks, senders) = under_load(1000).await;
    let pid = node.pid();
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || node.child.wait())
        .await
        .expect("join")
        .expect("wait");
    let took = started.elapsed();
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(took < Duration::from_secs(5), "exited in {took:?}");
    for (t, mut deliveries) in senders {
        assert!(
            t.await.expect("sender").is_some(),
            "sends end with an error"
        );
        // The last event names the reconnect code.
        let mut last = None;
        while let Some(e) = deliveries.recv().await {
            last = Some(e);
        }
        match last {
            Some(Event::Closed {
                error: Some(ClientError::Server(e)),
            }) => assert_eq!(
                e.code,
                hanmadi_proto::ErrorCode::ServerDraining as i32,
                "closed with the reconnect-elsewhere code"
            ),
            other => panic!("expected the draining code, got {other:?}"),
        }
    }
    let acked = acks.lock().clone();
    check_persisted(dir.path(), &acked).await;
}

/// A store this build was compiled without is refused at start, naming the
/// feature that carries it, before the node listens anywhere.
#[test]
fn a_store_left_out_of_the_build_is_refused_by_name() {
    let mut missing = Vec::new();
    if cfg!(not(feature = "rocksdb")) {
        missing.push(("rocksdb", "feature `rocksdb`"));
    }
    if cfg!(not(feature = "foundationdb")) {
        missing.push(("fdb", "feature `foundationdb`"));
    }
    for (store, feature) in missing {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(env!("CARGO_BIN_EXE_hanmadi"))
            .args(["serve", "--store", store, "--secret", SECRET])
            .args(["--tcp", "127.0.0.1:0", "--tls", "off"])
            .args(["--http", "127.0.0.1:0", "--https", "off"])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run hanmadi");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--store {store} started: {stderr}");
        assert!(stderr.contains(feature), "--store {store}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "--store {store} listened before refusing"
        );
    }
}
