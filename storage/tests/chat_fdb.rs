//! The chat keyspace's behavioural suite on FoundationDB.
//!
//! Runs when the crate is built with feature `foundationdb` and
//! `FDB_CLUSTER_FILE` names an existing cluster file; otherwise every test
//! says it skipped and passes. Checks use ids of their own, so runs can share
//! a cluster.

#[cfg(feature = "foundationdb")]
#[allow(dead_code)]
mod common;

/// Prints why a test did not run, on both streams so it shows with and
/// without output capture.
fn skip(reason: &str) {
    eprintln!("{reason}");
    println!("{reason}");
}

#[cfg(feature = "foundationdb")]
fn store() -> Option<hanmadi_storage::ChatStore<hanmadi_storage::fdb::FdbKv>> {
    let path = std::env::var("FDB_CLUSTER_FILE").ok()?;
    if !std::path::Path::new(&path).is_file() {
        return None;
    }
    let kv = hanmadi_storage::fdb::FdbKv::open(Some(&path)).expect("open the FoundationDB cluster");
    Some(hanmadi_storage::ChatStore::new(
        kv,
        hanmadi_storage::StoreConfig::for_cluster(),
    ))
}

macro_rules! chat_fdb_tests {
    ($($name:ident => $call:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            #[cfg(feature = "foundationdb")]
            match store() {
                #[allow(clippy::redundant_closure_call)]
                Some(store) => ($call)(store).await,
                None => skip("skipped: no FoundationDB cluster"),
            }
            #[cfg(not(feature = "foundationdb"))]
            skip("skipped: no FoundationDB cluster (built without the foundationdb feature)");
        }
    )*};
}

chat_fdb_tests!(
    inbox_after_any_cursor => |s| common::chat_suite::inbox_after_any_cursor(s, 4, 30, 1),
    faults_lose_and_duplicate_nothing => common::chat_suite::faults_lose_and_duplicate_nothing,
    exactly_once_sends => common::chat_suite::exactly_once_sends,
    usernames_stay_unique => common::chat_suite::usernames_stay_unique,
    history_from_joined_at => common::chat_suite::history_from_joined_at,
    trimmed_cursor_expires => common::chat_suite::trimmed_cursor_expires,
    push_pending_collapses_bursts => common::chat_suite::push_pending_collapses_bursts,
    read_marks_and_unread => common::chat_suite::read_marks_and_unread,
    pages_stop_at_their_byte_budget => common::chat_suite::pages_stop_at_their_byte_budget,
    blocks => common::chat_suite::blocks,
    membership_rules => common::chat_suite::membership_rules,
    node_leases => common::chat_suite::node_leases,
    change_feed => common::chat_suite::change_feed,
    reads_at_a_known_commit => common::chat_suite::reads_at_a_known_commit,
    chained_deliveries_name_the_entry_before => common::chat_suite::chained_deliveries_name_the_entry_before,
    chained_group_deliveries_name_the_entry_before => common::chat_suite::chained_group_deliveries_name_the_entry_before,
);
