//! Crash safety of the embedded engine: a real child process appends with
//! fsync on and is killed with SIGKILL; after reopening, every append that
//! returned `Ok` is present exactly once and every inbox is gapless.
//!
//! The child is this test binary itself, re-run with `--ignored --exact
//! crash_child` and the data directory in `HANMADI_CRASH_DIR`.

#[allow(dead_code)]
mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::chat_suite::{read_inbox, TestIds};
use hanmadi_proto::pb::{self, MessageKind};
use hanmadi_proto::prost::Message as _;
use hanmadi_proto::ConversationId;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::chat::NewMessage;
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

const USERS: u64 = 12;
const WRITERS: u64 = 4;
const ACKS_BEFORE_KILL: usize = 3000;

fn open(dir: &std::path::Path) -> ChatStore<EmbeddedKv<FjallBackend>> {
    let backend = FjallBackend::open(dir, FjallOptions::default()).expect("open fjall");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    ChatStore::new(kv, StoreConfig::default())
}

fn conv_of(writer: u64, i: u64) -> (u64, ConversationId) {
    let sender = 1 + (writer * 3 + i) % USERS;
    let peer = 1 + (sender + 1 + i % (USERS - 1)) % USERS;
    (sender, ConversationId::direct(sender, peer))
}

/// The child: appends until killed, printing one line per acknowledged
/// message once `append` has returned `Ok`.
#[test]
#[ignore = "run by kill_9_loses_no_acknowledged_message as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var("HANMADI_CRASH_DIR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = open(std::path::Path::new(&dir));
        let ids = Arc::new(TestIds::default());
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (store, ids, out) = (store.clone(), Arc::clone(&ids), Arc::clone(&out));
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    let batch: Vec<NewMessage> = (0..1 + i % 8)
                        .map(|k| {
                            let (sender, conv) = conv_of(w, i + k);
                            NewMessage {
                                conversation: conv,
                                sender,
                                client_msg_id: Bytes::from(format!("c{w}-{}", i + k)),
                                sent_at: 1,
                                kind: MessageKind::Text,
                                body: "crash test body".into(),
                                membership: None,
                            }
                        })
                        .collect();
                    let n = batch.len() as u64;
                    let results = store.append(batch, &*ids, &|_| true).await;
                    let mut lines = String::new();
                    for r in results {
                        let a = r.expect("append");
                        lines.push_str(&format!("ACK {}\n", a.message_id));
                    }
                    let mut o = out.lock().expect("stdout lock");
                    o.write_all(lines.as_bytes()).expect("write");
                    o.flush().expect("flush");
                    i += n;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HANMADI_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut reader = BufReader::new(stdout);
    let mut acked: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = String::new();
    while acked.len() < ACKS_BEFORE_KILL {
        line.clear();
        let n = reader.read_line(&mut line).expect("read child output");
        assert!(n > 0, "child exited early after {} acks", acked.len());
        assert!(Instant::now() < deadline, "child too slow");
        if let Some(id) = line.trim().rsplit(' ').next().and_then(|s| s.parse().ok()) {
            acked.push(id);
        }
    }
    child.kill().expect("SIGKILL the child");
    // Acks the child printed before it died still count.
    for rest in reader.lines() {
        let Ok(l) = rest else { break };
        if let Some(id) = l.trim().rsplit(' ').next().and_then(|s| s.parse().ok()) {
            acked.push(id);
        }
    }
    child.wait().expect("reap child");

    let store = open(dir.path());
    // Every stored message, by conversation.
    let mut stored: HashMap<u64, pb::Message> = HashMap::new();
    let mut convs = HashSet::new();
    for w in 0..WRITERS {
        for i in 0..USERS * 4 {
            convs.insert(conv_of(w, i).1);
        }
    }
    let mut cmids = HashSet::new();
    for &c in &convs {
        let mut before = 0;
        loop {
            let page = store.history(c, None, before, 500).await.expect("history");
            for m in &page.messages {
                let m = pb::Message::decode(m.as_ref()).expect("decode");
                assert!(
                    cmids.insert((m.sender, m.client_msg_id.clone())),
                    "a client message id is stored twice"
                );
                before = m.message_id;
                assert!(
                    stored.insert(m.message_id, m).is_none(),
                    "an id is stored twice"
                );
            }
            if !page.has_more {
                break;
            }
        }
    }
    let unique: HashSet<u64> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "acks name distinct messages");
    for id in &acked {
        assert!(stored.contains_key(id), "acknowledged message {id} lost");
    }
    // Gapless inboxes: every stored message of a user's conversations is in
    // their inbox once, in cursor order, and nothing else is.
    let mut last_cursor = None;
    for user in 1..=USERS {
        let inbox = read_inbox(&store, user, None).await;
        let got: Vec<u64> = inbox.iter().map(|(_, m)| m.message_id).collect();
        let got_set: HashSet<u64> = got.iter().copied().collect();
        assert_eq!(
            got.len(),
            got_set.len(),
            "user {user}: duplicate inbox entry"
        );
        let want: HashSet<u64> = stored
            .values()
            .filter(|m| {
                ConversationId::try_from(m.conversation.as_ref())
                    .map(|c| c.peer_of(user).is_some())
                    .unwrap_or(false)
            })
            .map(|m| m.message_id)
            .collect();
        assert_eq!(got_set, want, "user {user}: inbox has a gap");
        for w in inbox.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
        last_cursor = last_cursor.max(inbox.last().map(|(c, _)| *c));
    }
    // The commit counter resumes: new cursors sort after the old ones.
    let ids = TestIds::default();
    let (sender, conv) = conv_of(0, 0);
    let fresh = store
        .append(
            vec![NewMessage {
                conversation: conv,
                sender,
                client_msg_id: Bytes::from_static(b"after-restart"),
                sent_at: 2,
                kind: MessageKind::Text,
                body: "again".into(),
                membership: None,
            }],
            &ids,
            &|_| true,
        )
        .await
        .pop()
        .expect("outcome")
        .expect("append after restart");
    let cursor = fresh.cursor(0).expect("cursor");
    assert!(
        Some(cursor) > last_cursor,
        "cursors keep increasing after restart"
    );
    let conv_max = stored
        .values()
        .filter(|m| ConversationId::try_from(m.conversation.as_ref()).ok() == Some(conv))
        .map(|m| m.message_id)
        .max()
        .unwrap_or(0);
    assert!(
        fresh.message_id > conv_max,
        "ids keep increasing in the conversation"
    );
}
