//! A send whose commit may have applied, though its sender got an error,
//! still reaches its recipients: they are told to pull, and the sender's
//! retry is acknowledged with the stored message.

#[allow(dead_code)]
mod common;

use std::sync::Arc;

use common::{text, RecordingSink};
use hanmadi_proto::pb;
use hanmadi_proto::prost::Message as _;
use hanmadi_proto::ConversationId;
use hanmadi_router::{LocalPresence, Router, RouterConfig, RouterError, Target};
use hanmadi_storage::chat::UserRecord;
use hanmadi_storage::sim::{Faults, SimKv, SimOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_of_a_maybe_committed_send_are_told_to_pull() {
    let kv = SimKv::new(SimOptions::healthy());
    let store = ChatStore::new(
        kv.clone(),
        StoreConfig {
            append_attempts: 1,
            ..StoreConfig::default()
        },
    );
    for id in [1u64, 2] {
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
    let sink = Arc::new(RecordingSink::default());
    let (router, _task) = Router::start(
        store.clone(),
        Arc::new(LocalPresence::new()),
        sink.clone(),
        RouterConfig::default(),
    );
    // Every commit from here applies, then reports an unknown result.
    kv.set_faults(Faults {
        unknown_applied: 1.0,
        ..Faults::none()
    });
    let err = router
        .send(1, text("m1", Target::User(2), "hello"))
        .await
        .expect_err("no attempt left to learn the outcome");
    assert!(
        matches!(err, RouterError::Store(ref e) if e.is_retryable()),
        "{err:?}"
    );
    let mut notified = sink.notified.lock().clone();
    notified.sort_unstable();
    assert_eq!(notified, vec![1, 2], "both inboxes got an entry");
    assert!(sink.seen.lock().is_empty());

    kv.set_faults(Faults::none());
    let ack = router
        .send(1, text("m1", Target::User(2), "hello"))
        .await
        .expect("the retry is acknowledged");
    assert_eq!(ack.conversation, ConversationId::direct(1, 2));
    let inbox = store.sync(2, None, 10).await.expect("sync");
    assert_eq!(inbox.entries.len(), 1);
    let stored = pb::Message::decode(inbox.entries[0].message.as_ref()).expect("decode");
    assert_eq!(stored.message_id, ack.message_id);
}
