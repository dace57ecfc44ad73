//! The chat keyspace's behavioural suite on the embedded engine (fjall,
//! fsync on).

#[allow(dead_code)]
mod common;

use common::chat_suite as suite;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};

fn store() -> (tempfile::TempDir, ChatStore<EmbeddedKv<FjallBackend>>) {
    store_with(StoreConfig::default())
}

fn store_with(config: StoreConfig) -> (tempfile::TempDir, ChatStore<EmbeddedKv<FjallBackend>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FjallBackend::open(dir.path(), FjallOptions::default()).expect("open fjall");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    (dir, ChatStore::new(kv, config))
}

/// The checks that append from one task at a time, on a single writer
/// (heads in memory, snapshot reads, batches planned ahead).
macro_rules! single_writer_tests {
    ($($name:ident => $call:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, store) = store_with(StoreConfig::single_node());
            #[allow(clippy::redundant_closure_call)]
            ($call)(store).await;
        }
    )*};
}

single_writer_tests!(
    single_writer_exactly_once_sends => suite::exactly_once_sends,
    single_writer_history_from_joined_at => suite::history_from_joined_at,
    single_writer_membership_rules => suite::membership_rules,
    single_writer_push_pending_collapses_bursts => suite::push_pending_collapses_bursts,
    single_writer_read_marks_and_unread => suite::read_marks_and_unread,
    single_writer_pipelined_batches => suite::pipelined_batches_keep_every_rule,
);

macro_rules! embedded_tests {
    ($($name:ident => $call:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, store) = store();
            #[allow(clippy::redundant_closure_call)]
            ($call)(store).await;
        }
    )*};
}

embedded_tests!(
    inbox_after_any_cursor => |s| suite::inbox_after_any_cursor(s, 4, 40, 1),
    faults_lose_and_duplicate_nothing => suite::faults_lose_and_duplicate_nothing,
    exactly_once_sends => suite::exactly_once_sends,
    usernames_stay_unique => suite::usernames_stay_unique,
    history_from_joined_at => suite::history_from_joined_at,
    trimmed_cursor_expires => suite::trimmed_cursor_expires,
    push_pending_collapses_bursts => suite::push_pending_collapses_bursts,
    read_marks_and_unread => suite::read_marks_and_unread,
    pages_stop_at_their_byte_budget => suite::pages_stop_at_their_byte_budget,
    blocks => suite::blocks,
    membership_rules => suite::membership_rules,
    node_leases => suite::node_leases,
    change_feed => suite::change_feed,
    reads_at_a_known_commit => suite::reads_at_a_known_commit,
    chained_deliveries_name_the_entry_before => suite::chained_deliveries_name_the_entry_before,
    chained_group_deliveries_name_the_entry_before => suite::chained_group_deliveries_name_the_entry_before,
);

/// A single writer learns a conversation's head from its last stored
/// message: reopened with nothing in memory, it goes on after the last id
/// of a conversation that has messages, and starts a new one from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_single_writer_continues_after_each_conversations_last_message() {
    use bytes::Bytes;
    use hanmadi_proto::pb::MessageKind;
    use hanmadi_proto::ConversationId;
    use hanmadi_storage::chat::{IdSource, NewMessage};

    fn message(conversation: ConversationId, sender: u64, n: u64) -> NewMessage {
        NewMessage {
            conversation,
            sender,
            client_msg_id: Bytes::from(format!("m-{n}")),
            sent_at: n,
            kind: MessageKind::Text,
            body: format!("message {n}"),
            membership: None,
        }
    }
    async fn append_one(
        store: &ChatStore<EmbeddedKv<FjallBackend>>,
        ids: &suite::TestIds,
        m: NewMessage,
    ) -> u64 {
        store
            .append(vec![m], ids, &|_| true)
            .await
            .pop()
            .expect("an outcome")
            .expect("appended")
            .message_id
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        let backend = FjallBackend::open(dir.path(), FjallOptions::default()).expect("open");
        let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
        ChatStore::new(kv, StoreConfig::single_node())
    };
    let talked = ConversationId::direct(3, 7);
    let last = {
        let store = open();
        // Ids from far above where the reopened store's source starts, so
        // only the stored head can carry the next id past them.
        let ids = suite::TestIds::default();
        ids.next_id(1_000_000);
        let mut last = 0;
        for n in 0..5 {
            last = append_one(&store, &ids, message(talked, 3, n)).await;
        }
        last
    };
    let store = open();
    let ids = suite::TestIds::default();
    let next = append_one(&store, &ids, message(talked, 7, 10)).await;
    assert!(
        next > last,
        "id {next} after {last} in a known conversation"
    );
    let new = ConversationId::direct(3, 8);
    let first = append_one(&store, &ids, message(new, 3, 11)).await;
    assert!(first > 0);
    let history = store.history(new, None, 0, 10).await.expect("history");
    assert_eq!(
        history.messages.len(),
        1,
        "a new conversation holds its one message"
    );
}
