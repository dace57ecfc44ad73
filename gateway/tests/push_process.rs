//! Pushes survive `kill -9` of the real `hanmadi` binary: a push not yet
//! attempted is sent after the restart, and one whose request was in
//! flight when the node died is sent again with the same idempotency key.

mod binary;
#[allow(dead_code)]
mod push_receiver;

use std::path::Path;
use std::time::Duration;

use binary::Serve;
use hanmadi_client::{Client, ClientConfig, Target};
use hanmadi_gateway::auth::TokenIssuer;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::chat::{PushPlatform, UserRecord};
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};
use push_receiver::Receiver;

const SECRET: &str = "push-process-test-secret-0123456789abcdef";
const ALICE: u64 = 1;
const BOB: u64 = 2;
const CAROL: u64 = 3;

/// Users and Bob's and Carol's push devices, before the node starts.
async fn seed(data: &Path) {
    let backend = FjallBackend::open(&data.join("store"), FjallOptions::default()).expect("open");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    let store = ChatStore::new(kv, StoreConfig::default());
    for u in [ALICE, BOB, CAROL] {
        let record = UserRecord {
            username: format!("user{u}"),
            ..UserRecord::default()
        };
        store.create_user(u, &record).await.expect("user");
    }
    for u in [BOB, CAROL] {
        store
            .put_push_device(u, "phone", PushPlatform::Fcm, &format!("token-{u}"), 1)
            .await
            .expect("device");
    }
}

/// A node on `data` pushing to `webhook`, and its TCP address.
fn spawn(data: &Path, webhook: &str) -> (Serve, String) {
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
            "--push-webhook",
            webhook,
            "--push-delay-ms",
            "1000",
            "--push-timeout-ms",
            "1500",
        ],
    );
    let addr = node.listening("tcp");
    (node, addr)
}

async fn connect(addr: &str, user: u64) -> Client {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let token = TokenIssuer::new(SECRET.as_bytes()).issue(user, now, Duration::from_secs(600));
    let (client, _) = Client::connect(ClientConfig::new(addr, token, "laptop"))
        .await
        .expect("connect");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_pending_or_in_flight_at_kill_9_arrive_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path()).await;
    // Carol's first request is never answered: the node dies with it in
    // flight. Every later request is accepted.
    let receiver = Receiver::start(move |body, earlier| {
        if push_receiver::is_user(body, CAROL) && earlier == 0 {
            0
        } else {
            200
        }
    })
    .await;
    let webhook = receiver.url("/push");

    let (mut node, addr) = spawn(dir.path(), &webhook);
    let alice = connect(&addr, ALICE).await;
    alice
        .send(Target::User(CAROL), "in flight")
        .await
        .expect("ack");
    let first = receiver
        .wait_for_user(CAROL, 1, Duration::from_secs(10))
        .await;
    // Bob's push is still a second away when the node dies.
    alice.send(Target::User(BOB), "pending").await.expect("ack");
    node.child.kill().expect("kill -9");
    node.child.wait().expect("reap");
    drop(alice);
    assert!(
        receiver.for_user(BOB).is_empty(),
        "bob's push was not due yet"
    );

    let _node = spawn(dir.path(), &webhook);
    // Carol's job is taken over once its lease (timeout + 2 s) lapses.
    let carol = receiver
        .wait_for_user(CAROL, 2, Duration::from_secs(15))
        .await;
    let key = first[0].key.clone().expect("key");
    assert_eq!(
        carol[1].key.as_deref(),
        Some(key.as_str()),
        "the same key again"
    );
    assert_eq!(carol[1].body, first[0].body, "the same request again");
    assert_eq!(carol[1].status, 200);
    let bob = receiver
        .wait_for_user(BOB, 1, Duration::from_secs(15))
        .await;
    assert_eq!(bob[0].body["preview"], "pending");
    assert_eq!(bob[0].body["devices"][0]["token"], "token-2");
    assert_eq!(bob[0].status, 200);
}
