//! Delivery acks and read marks are coalesced per key and written in
//! batches: a flood of them costs a handful of commits, the newest value of
//! each key is what is stored, and a full queue holds senders back instead
//! of growing or dropping.

#[allow(dead_code)]
mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hanmadi_proto::ConversationId;
use hanmadi_router::{ReceiptsConfig, Router, RouterConfig};
use hanmadi_storage::chat::{Cursor, CURSOR_LEN};
use hanmadi_storage::sim::{SimKv, SimOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

/// A cursor that sorts by `n`.
fn cursor(n: u32) -> Vec<u8> {
    let mut c = Cursor([0u8; CURSOR_LEN]);
    c.0[..4].copy_from_slice(&n.to_be_bytes());
    c.0.to_vec()
}

fn start(
    store: &ChatStore<SimKv>,
    receipts: ReceiptsConfig,
) -> (Router<SimKv>, tokio::task::JoinHandle<()>) {
    common::router_on(
        store,
        RouterConfig {
            receipts,
            ..RouterConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_and_read_flood_costs_a_few_commits_and_keeps_the_newest() {
    let kv = SimKv::new(SimOptions::healthy());
    let store = ChatStore::new(kv.clone(), StoreConfig::single_node());
    common::users(&store, &[1, 2]).await;
    let (router, task) = start(&store, ReceiptsConfig::default());
    let conversation = ConversationId::direct(1, 2);
    let before = kv.fault_counts().commits.load(Ordering::Relaxed);

    const FLOOD: u32 = 5_000;
    for n in 1..=FLOOD {
        router.ack(2, "phone", &cursor(n)).await.expect("ack");
        router
            .read(2, conversation, u64::from(n))
            .await
            .expect("read");
    }
    // Dropping the router writes what is pending and ends its task.
    drop(router);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the router's task ends")
        .expect("task");

    let commits = kv.fault_counts().commits.load(Ordering::Relaxed) - before;
    assert!(
        commits < 200,
        "{} receipts took {commits} commits",
        2 * FLOOD
    );
    let stored = store.delivered(2, "phone").await.expect("delivered");
    assert_eq!(stored.map(|c| c.0.to_vec()), Some(cursor(FLOOD)));
    let mark = store.read_mark(2, conversation).await.expect("read mark");
    assert_eq!(mark, u64::from(FLOOD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_receipt_queue_holds_senders_back_and_loses_nothing() {
    let kv = SimKv::new(SimOptions::healthy());
    let store = ChatStore::new(kv.clone(), StoreConfig::single_node());
    let users: Vec<u64> = (1..=200).collect();
    common::users(&store, &users).await;
    let (router, task) = start(
        &store,
        ReceiptsConfig {
            max_pending: 4,
            linger: Duration::from_millis(5),
        },
    );
    let router = Arc::new(router);
    // 200 devices at once against room for 4: most wait for a batch.
    let acks: Vec<_> = users
        .iter()
        .map(|&user| {
            let router = Arc::clone(&router);
            tokio::spawn(async move {
                let cursor = cursor(u32::try_from(user).expect("small"));
                router.ack(user, "laptop", &cursor).await.expect("ack");
            })
        })
        .collect();
    for ack in acks {
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .expect("an ack waits for room, not forever")
            .expect("ack task");
    }
    drop(Arc::into_inner(router).expect("only owner"));
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the router's task ends")
        .expect("task");
    for &user in &users {
        let stored = store.delivered(user, "laptop").await.expect("delivered");
        assert_eq!(
            stored.map(|c| c.0.to_vec()),
            Some(cursor(u32::try_from(user).expect("small"))),
            "user {user}"
        );
    }
}
