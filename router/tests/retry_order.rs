//! A single writer plans its next batch while the one before commits. When
//! that commit fails and is tried again, the next batch may be planned in
//! between, with ids below the ones the retry then takes: it must be
//! planned again, after them, or a conversation's ids would go backwards in
//! commit order (clients see messages out of order).

#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::text;
use hanmadi_proto::pb;
use hanmadi_proto::prost::Message as _;
use hanmadi_proto::ConversationId;
use hanmadi_router::{RouterConfig, Target};
use hanmadi_storage::sim::{Faults, SimKv, SimOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

const USERS: [u64; 6] = [1, 2, 3, 4, 5, 6];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_rise_in_commit_order_when_commits_fail_and_are_retried() {
    for seed in 0..3 {
        let kv = SimKv::new(SimOptions::healthy());
        // As `hanmadi serve` runs the embedded engine: one writer.
        let store = ChatStore::new(kv.clone(), StoreConfig::single_node());
        common::users(&store, &USERS).await;
        kv.set_faults(Faults {
            conflict: 0.2,
            delay: 0.3,
            ..Faults::none()
        });
        let (router, task) = common::router_on(&store, RouterConfig::default());
        let router = Arc::new(router);
        // Every sender writes to every other user: consecutive batches share
        // conversations.
        let senders: Vec<_> = USERS
            .iter()
            .map(|&sender| {
                let router = Arc::clone(&router);
                tokio::spawn(async move {
                    for i in 0..150usize {
                        let to = USERS[(sender as usize + i) % USERS.len()];
                        let cmid = format!("{seed}-{sender}-{i}");
                        // A send whose retries ran out is an error its
                        // client would retry; what is stored is checked.
                        let _ = router
                            .send(sender, text(&cmid, Target::User(to), "hi"))
                            .await;
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.expect("sender");
        }
        drop(Arc::into_inner(router).expect("sole owner"));
        task.await.expect("router task");
        assert!(
            kv.fault_counts().conflicts.load(Ordering::Relaxed) > 0,
            "seed {seed}: no commit failed, the test proves nothing"
        );
        kv.set_faults(Faults::none());

        for &user in &USERS {
            let mut last: HashMap<ConversationId, u64> = HashMap::new();
            let mut after = None;
            loop {
                let page = store.sync(user, after, 500).await.expect("sync");
                for entry in &page.entries {
                    let m = pb::Message::decode(entry.message.as_ref()).expect("message");
                    let c = ConversationId::try_from(m.conversation.as_ref()).expect("conv");
                    let before = last.insert(c, m.message_id).unwrap_or(0);
                    assert!(
                        m.message_id > before,
                        "seed {seed}, user {user}: id {} committed after {before} in {c}",
                        m.message_id
                    );
                }
                after = page.next;
                if !page.has_more {
                    break;
                }
            }
        }
    }
}
