//! The chat keyspace's behavioural suite on the simulated engine, healthy
//! and with faults injected (conflicts, `commit_unknown_result` after
//! commits that applied and that did not).

#[allow(dead_code)]
mod common;

use std::sync::atomic::Ordering;

use common::chat_suite as suite;
use hanmadi_proto::ConversationId;
use hanmadi_storage::sim::{Faults, SimKv, SimOptions};
use hanmadi_storage::{ChatStore, StoreConfig, StoreError};

fn healthy() -> ChatStore<SimKv> {
    ChatStore::new(SimKv::new(SimOptions::healthy()), StoreConfig::default())
}

fn faulty(seed: u64, config: StoreConfig) -> (SimKv, ChatStore<SimKv>) {
    let kv = SimKv::new(SimOptions::faulty(seed));
    (kv.clone(), ChatStore::new(kv, config))
}

#[tokio::test]
async fn inbox_after_any_cursor() {
    suite::inbox_after_any_cursor(healthy(), 4, 40, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_after_any_cursor_with_faults() {
    for seed in 0..3 {
        let (kv, store) = faulty(seed, StoreConfig::default());
        suite::inbox_after_any_cursor(store, 4, 40, seed).await;
        assert!(
            kv.fault_counts().unknown_applied.load(Ordering::Relaxed) > 0,
            "seed {seed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_after_any_cursor_split_by_conversation_with_faults() {
    let (_, store) = faulty(7, StoreConfig::for_cluster());
    suite::inbox_after_any_cursor(store, 4, 40, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_and_duplicate_nothing() {
    for seed in 10..13 {
        let (kv, store) = faulty(seed, StoreConfig::default());
        suite::faults_lose_and_duplicate_nothing(store).await;
        let c = kv.fault_counts();
        assert!(
            c.unknown_applied.load(Ordering::Relaxed) > 0,
            "seed {seed}: no applied-unknown fault"
        );
        assert!(
            c.conflicts.load(Ordering::Relaxed) > 0,
            "seed {seed}: no conflict"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_and_duplicate_nothing_split_by_conversation() {
    let (_, store) = faulty(21, StoreConfig::for_cluster());
    suite::faults_lose_and_duplicate_nothing(store).await;
}

#[tokio::test]
async fn exactly_once_sends() {
    suite::exactly_once_sends(healthy()).await;
    suite::exactly_once_sends(faulty(3, StoreConfig::default()).1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_stay_unique() {
    suite::usernames_stay_unique(healthy()).await;
    suite::usernames_stay_unique(faulty(4, StoreConfig::default()).1).await;
}

#[tokio::test]
async fn history_from_joined_at() {
    suite::history_from_joined_at(healthy()).await;
    suite::history_from_joined_at(faulty(5, StoreConfig::default()).1).await;
}

#[tokio::test]
async fn trimmed_cursor_expires() {
    suite::trimmed_cursor_expires(healthy()).await;
    suite::trimmed_cursor_expires(faulty(6, StoreConfig::default()).1).await;
}

#[tokio::test]
async fn push_pending_collapses_bursts() {
    suite::push_pending_collapses_bursts(healthy()).await;
}

#[tokio::test]
async fn read_marks_and_unread() {
    suite::read_marks_and_unread(healthy()).await;
    suite::read_marks_and_unread(faulty(8, StoreConfig::default()).1).await;
}

#[tokio::test]
async fn pages_stop_at_their_byte_budget() {
    suite::pages_stop_at_their_byte_budget(healthy()).await;
    suite::pages_stop_at_their_byte_budget(faulty(9, StoreConfig::default()).1).await;
}

#[tokio::test]
async fn membership_rules() {
    suite::membership_rules(healthy()).await;
    suite::membership_rules(faulty(9, StoreConfig::default()).1).await;
}

#[tokio::test]
async fn node_leases() {
    suite::node_leases(healthy()).await;
    suite::node_leases(faulty(10, StoreConfig::default()).1).await;
}

#[tokio::test]
async fn change_feed() {
    suite::change_feed(healthy()).await;
    suite::change_feed(faulty(11, StoreConfig::default()).1).await;
}

#[tokio::test]
async fn reads_at_a_known_commit() {
    suite::reads_at_a_known_commit(healthy()).await;
    suite::reads_at_a_known_commit(faulty(12, StoreConfig::for_cluster()).1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_deliveries_name_the_entry_before() {
    suite::chained_deliveries_name_the_entry_before(healthy()).await;
    for seed in 0..3 {
        suite::chained_deliveries_name_the_entry_before(faulty(seed, StoreConfig::for_cluster()).1)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_group_deliveries_name_the_entry_before() {
    suite::chained_group_deliveries_name_the_entry_before(healthy()).await;
    for seed in 0..3 {
        suite::chained_group_deliveries_name_the_entry_before(
            faulty(seed, StoreConfig::for_cluster()).1,
        )
        .await;
    }
}

#[tokio::test]
async fn blocks() {
    suite::blocks(healthy()).await;
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// For any seed (workload and faults) and number of concurrent writers,
    /// every inbox read after any of its cursors returns exactly the later
    /// entries, in commit order.
    #[test]
    fn inbox_after_any_cursor_property(seed in 0u64..u64::MAX, writers in 1usize..6, per_writer in 1usize..30) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (_, store) = faulty(seed, StoreConfig::default());
            suite::inbox_after_any_cursor(store, writers, per_writer, seed).await;
        });
    }
}

/// An append whose last attempt may have committed (its commit applied, then
/// reported an unknown result, and no attempt was left) fails, but names the
/// recipients that must pull it; the sender's retry is answered with the
/// stored message, and the recipients' inboxes hold it once.
#[tokio::test]
async fn an_append_that_may_have_committed_names_its_recipients() {
    for split in [false, true] {
        let kv = SimKv::new(SimOptions::healthy());
        let config = StoreConfig {
            append_attempts: 1,
            ..if split {
                StoreConfig::for_cluster()
            } else {
                StoreConfig::default()
            }
        };
        let store = ChatStore::new(kv.clone(), config);
        let ids = suite::TestIds::default();
        let base = suite::fresh_base();
        let (a, b) = (base, base + 1);
        let conv = ConversationId::direct(a, b);
        kv.set_faults(Faults {
            unknown_applied: 1.0,
            ..Faults::none()
        });
        let out = store
            .append(vec![suite::text(conv, a, "m1", "hello")], &ids, &|_| false)
            .await;
        match &out[0] {
            Err(e @ StoreError::MaybeStored { recipients, .. }) => {
                assert!(e.is_retryable());
                let mut r = recipients.clone();
                r.sort_unstable();
                assert_eq!(r, vec![a, b]);
            }
            other => panic!("split {split}: expected MaybeStored, got {other:?}"),
        }
        kv.set_faults(Faults::none());
        let retry = store
            .append(vec![suite::text(conv, a, "m1", "hello")], &ids, &|_| false)
            .await
            .pop()
            .expect("one outcome")
            .expect("retry");
        assert!(retry.duplicate);
        assert!(
            !retry.message.is_empty(),
            "the retry's ack carries the message"
        );
        let inbox = suite::read_inbox(&store, b, None).await;
        assert_eq!(inbox.len(), 1);
        assert_eq!(kv.fault_counts().unknown_applied.load(Ordering::Relaxed), 1);
    }
}
