//! Helpers shared by the router's tests: a real embedded store in a temp
//! directory, users, and a delivery sink that records what it was handed.

use std::sync::Arc;

use bytes::Bytes;
use hanmadi_proto::pb;
use hanmadi_proto::prost::Message as _;
use hanmadi_router::{
    Delivery, DeliverySink, LocalPresence, Router, RouterConfig, SendRequest, Target,
};
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::chat::{Cursor, UserRecord};
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};
use parking_lot::Mutex;

/// The engine the tests' stores run on.
pub type Engine = EmbeddedKv<FjallBackend>;
pub type Store = ChatStore<Engine>;

/// One delivery as the sink saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub user: u64,
    pub cursor: Cursor,
    pub message_id: u64,
}

/// Records every delivery and notification.
#[derive(Debug, Default)]
pub struct RecordingSink {
    pub seen: Mutex<Vec<Seen>>,
    pub notified: Mutex<Vec<u64>>,
}

impl DeliverySink for RecordingSink {
    fn deliver(&self, d: &Delivery<'_>) {
        let m = pb::Message::decode(d.encoded().as_ref()).expect("encoded message decodes");
        assert_eq!(m.message_id, d.message_id());
        let mut seen = self.seen.lock();
        for (user, cursor) in d.recipients() {
            seen.push(Seen {
                user,
                cursor,
                message_id: m.message_id,
            });
        }
    }

    fn notify(&self, user: u64) {
        self.notified.lock().push(user);
    }
}

/// A router over `store` with nobody online and a sink of its own, and the
/// task that ends once it is dropped and its work is written.
pub fn router_on<K: hanmadi_storage::kv::Kv>(
    store: &ChatStore<K>,
    config: RouterConfig,
) -> (Router<K>, tokio::task::JoinHandle<()>) {
    Router::start(
        store.clone(),
        Arc::new(LocalPresence::new()),
        Arc::new(RecordingSink::default()),
        config,
    )
}

pub fn open_store(dir: &std::path::Path) -> Store {
    let backend = FjallBackend::open(dir, FjallOptions::default()).expect("open fjall");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    ChatStore::new(kv, StoreConfig::single_node())
}

pub struct Harness {
    /// Keeps the store's directory alive.
    pub _dir: tempfile::TempDir,
    pub router: Arc<Router<Engine>>,
    pub sink: Arc<RecordingSink>,
    pub presence: Arc<LocalPresence>,
}

pub async fn harness(config: RouterConfig) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let sink = Arc::new(RecordingSink::default());
    let presence = Arc::new(LocalPresence::new());
    let (router, _task) = Router::start(store, presence.clone(), sink.clone(), config);
    Harness {
        _dir: dir,
        router: Arc::new(router),
        sink,
        presence,
    }
}

/// Creates users `ids` named after their ids.
pub async fn users<K: hanmadi_storage::kv::Kv>(store: &ChatStore<K>, ids: &[u64]) {
    for &id in ids {
        store
            .create_user(
                id,
                &UserRecord {
                    username: format!("user{id}"),
                    ..UserRecord::default()
                },
            )
            .await
            .expect("create user");
    }
}

pub fn text(cmid: &str, to: Target, body: &str) -> SendRequest {
    SendRequest {
        client_msg_id: Bytes::copy_from_slice(cmid.as_bytes()),
        to,
        body: body.to_owned(),
    }
}

/// Reads a user's whole inbox after `after`.
pub async fn inbox(store: &Store, user: u64, after: Option<Cursor>) -> Vec<(Cursor, pb::Message)> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let b = store.sync(user, cursor, 500).await.expect("sync");
        for e in &b.entries {
            out.push((
                e.cursor,
                pb::Message::decode(e.message.as_ref()).expect("decode"),
            ));
        }
        cursor = b.next;
        if !b.has_more {
            return out;
        }
    }
}

/// This test binary, set to run only the ignored test `name` as a child
/// process, with the data directory `dir` in the environment variable
/// `var` (which the child reads through [`child`]).
pub fn child_command(name: &str, var: &str, dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(var, dir);
    command
}

/// In a child process started by [`child_command`]: its data directory;
/// `None` when the test runs by itself.
pub fn child_dir(var: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(var).map(Into::into)
}

/// As [`child_dir`], with a multi-thread runtime to run the child on.
pub fn child(var: &str) -> Option<(std::path::PathBuf, tokio::runtime::Runtime)> {
    let dir = child_dir(var)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    Some((dir, rt))
}
