//! The chat keyspace's behavioural suite, written once and run on every
//! engine. Each check takes a fresh-enough store and works with user, group
//! and name ids of its own, so checks can share one FoundationDB cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hanmadi_proto::pb::{self, MessageKind};
use hanmadi_proto::prost::Message as _;
use hanmadi_proto::ConversationId;
use hanmadi_storage::chat::{
    Appended, Before, Cursor, FeedEvent, IdSource, MembershipChange, NewMessage, Role, UserRecord,
    CHAINED_MEMBERS_MAX,
};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::{ChatStore, StoreError};

/// Ids that increase across the process and pass every head.
#[derive(Debug, Default)]
pub struct TestIds(AtomicU64);

impl IdSource for TestIds {
    fn next_id(&self, head: u64) -> u64 {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = cur.max(head) + 1;
            match self
                .0
                .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// A range of ids no other check (or run) uses.
pub fn fresh_base() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = u64::from(rand::random::<u32>()) << 24;
    (run | (NEXT.fetch_add(1, Ordering::Relaxed) << 12)) + 1
}

fn nobody_online(_: u64) -> bool {
    false
}

pub fn text(conv: ConversationId, sender: u64, cmid: &str, body: &str) -> NewMessage {
    NewMessage {
        conversation: conv,
        sender,
        client_msg_id: Bytes::copy_from_slice(cmid.as_bytes()),
        sent_at: 1_700_000_000_000,
        kind: MessageKind::Text,
        body: body.to_owned(),
        membership: None,
    }
}

/// Appends one message (nobody online) and returns its outcome.
async fn append_one<K: Kv>(
    store: &ChatStore<K>,
    ids: &dyn IdSource,
    msg: NewMessage,
) -> Result<Appended, StoreError> {
    append_as(store, ids, msg, &nobody_online).await
}

/// Appends one message, `online` saying who has a live connection, and
/// returns its outcome.
async fn append_as<K: Kv>(
    store: &ChatStore<K>,
    ids: &dyn IdSource,
    msg: NewMessage,
    online: &(dyn Fn(u64) -> bool + Sync),
) -> Result<Appended, StoreError> {
    store
        .append(vec![msg], ids, online)
        .await
        .pop()
        .expect("one outcome per message")
}

fn decode(bytes: &[u8]) -> pb::Message {
    pb::Message::decode(bytes).expect("stored message decodes")
}

/// Reads a user's whole inbox from `after`, page by page.
pub async fn read_inbox<K: Kv>(
    store: &ChatStore<K>,
    user: u64,
    after: Option<Cursor>,
) -> Vec<(Cursor, pb::Message)> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let batch = store.sync(user, cursor, 7).await.expect("sync");
        for e in &batch.entries {
            out.push((e.cursor, decode(&e.message)));
        }
        cursor = batch.next;
        if !batch.has_more {
            return out;
        }
    }
}

pub async fn create_group<K: Kv>(
    store: &ChatStore<K>,
    ids: &TestIds,
    group: u64,
    owner: u64,
    members: &[u64],
) {
    let msg = NewMessage {
        membership: Some(MembershipChange::Create {
            name: format!("group {group}"),
            members: members.to_vec(),
            max_members: 1000,
        }),
        kind: MessageKind::GroupCreated,
        ..text(
            ConversationId::Group(group),
            owner,
            &format!("create-{group}"),
            "",
        )
    };
    let out = store.append(vec![msg], ids, &nobody_online).await;
    out.into_iter()
        .next()
        .expect("one outcome")
        .expect("group created");
}

/// Every user's inbox, read from the start or after any of its cursors,
/// returns every later message once, in commit order — with `writers`
/// concurrent appenders sending `per_writer` messages each among `users`
/// users and one group.
pub async fn inbox_after_any_cursor<K: Kv>(
    store: ChatStore<K>,
    writers: usize,
    per_writer: usize,
    seed: u64,
) {
    let base = fresh_base();
    let users: Vec<u64> = (0..5).map(|i| base + i).collect();
    let group = base + 100;
    let ids = Arc::new(TestIds::default());
    create_group(&store, &ids, group, users[0], &users[1..4]).await;

    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let ids = Arc::clone(&ids);
        let users = users.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = seed.wrapping_mul(31).wrapping_add(w as u64);
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut sent = Vec::new();
            let mut i = 0;
            while i < per_writer {
                let n = (next() % 5 + 1) as usize;
                let mut batch = Vec::new();
                for _ in 0..n.min(per_writer - i) {
                    let sender = users[(next() % 4) as usize];
                    let conv = if next() % 3 == 0 {
                        ConversationId::Group(group)
                    } else {
                        let mut peer = users[(next() % 5) as usize];
                        if peer == sender {
                            peer = users[4];
                        }
                        ConversationId::direct(sender, peer)
                    };
                    batch.push(text(
                        conv,
                        sender,
                        &format!("w{w}-{i}"),
                        &format!("body {w} {i}"),
                    ));
                    i += 1;
                }
                for r in store.append(batch, &*ids, &nobody_online).await {
                    let a = r.expect("append succeeds (retries hide faults)");
                    sent.push(a);
                }
            }
            sent
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await.expect("writer task"));
    }
    assert_eq!(sent.len(), writers * per_writer);

    // What each user must see: every message of a conversation they are in.
    let mut expected: HashMap<u64, HashSet<(ConversationId, u64)>> = HashMap::new();
    for a in &sent {
        assert!(!a.duplicate, "no message was a retry");
        let members: Vec<u64> = match a.conversation {
            ConversationId::Group(_) => users[..4].to_vec(),
            ConversationId::Direct {
                user_low,
                user_high,
            } => vec![user_low, user_high],
        };
        for u in members {
            expected
                .entry(u)
                .or_default()
                .insert((a.conversation, a.message_id));
        }
    }
    for &u in &users {
        let inbox = read_inbox(&store, u, None).await;
        let got: Vec<(ConversationId, u64)> = inbox
            .iter()
            .filter(|(_, m)| m.kind == MessageKind::Text as i32)
            .map(|(_, m)| {
                (
                    ConversationId::try_from(m.conversation.as_ref()).expect("valid conversation"),
                    m.message_id,
                )
            })
            .collect();
        let got_set: HashSet<_> = got.iter().copied().collect();
        assert_eq!(got.len(), got_set.len(), "user {u}: an inbox entry repeats");
        assert_eq!(
            got_set,
            expected.remove(&u).unwrap_or_default(),
            "user {u}: inbox differs from what was sent to them"
        );
        // Cursors strictly increase, and message ids increase within each
        // conversation in cursor (commit) order.
        let mut last_in_conv: BTreeMap<ConversationId, u64> = BTreeMap::new();
        for w in inbox.windows(2) {
            assert!(w[0].0 < w[1].0, "user {u}: cursors out of order");
        }
        for (_, m) in &inbox {
            let c = ConversationId::try_from(m.conversation.as_ref()).expect("valid conversation");
            let last = last_in_conv.insert(c, m.message_id).unwrap_or(0);
            assert!(
                m.message_id > last,
                "user {u}: ids out of commit order in {c}"
            );
        }
        // Reading after any cursor returns exactly the later suffix.
        for k in (0..inbox.len()).step_by(3) {
            let after = read_inbox(&store, u, Some(inbox[k].0)).await;
            let tail: Vec<Cursor> = inbox[k + 1..].iter().map(|(c, _)| *c).collect();
            let got: Vec<Cursor> = after.iter().map(|(c, _)| *c).collect();
            assert_eq!(got, tail, "user {u}: sync after entry {k}");
        }
    }
}

/// A send retried with the same client id — later, or twice in one batch —
/// returns the same id and stores one message.
pub async fn exactly_once_sends<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (a, b) = (base, base + 1);
    let conv = ConversationId::direct(a, b);
    let ids = TestIds::default();
    let out = store
        .append(
            vec![
                text(conv, a, "m1", "hello"),
                text(conv, a, "m1", "hello"),
                text(conv, a, "m2", "again"),
            ],
            &ids,
            &nobody_online,
        )
        .await;
    let out: Vec<_> = out.into_iter().map(|r| r.expect("append")).collect();
    assert_eq!(out[0].message_id, out[1].message_id);
    assert!(!out[0].duplicate && out[1].duplicate);
    assert_ne!(out[0].message_id, out[2].message_id);
    let later = append_one(&store, &ids, text(conv, a, "m1", "hello"))
        .await
        .expect("append");
    assert_eq!(later.message_id, out[0].message_id);
    assert!(later.duplicate);
    assert_eq!(later.sent_at, out[0].sent_at);
    // The retry's ack carries the stored message, as the first one did.
    assert_eq!(later.message, out[0].message);
    assert_eq!(decode(&later.message).body, "hello");
    // The same id reused for another conversation answers with the first.
    let elsewhere = append_one(
        &store,
        &ids,
        text(ConversationId::direct(a, base + 9), a, "m1", "other"),
    )
    .await
    .expect("append");
    assert!(elsewhere.duplicate);
    assert_eq!(elsewhere.conversation, conv);
    assert_eq!(elsewhere.message_id, out[0].message_id);
    let page = store.history(conv, Some(b), 0, 100).await.expect("history");
    assert_eq!(page.messages.len(), 2, "two distinct messages stored");
    assert_eq!(read_inbox(&store, b, None).await.len(), 2);
    // An invalid client id is refused.
    let bad = append_one(&store, &ids, text(conv, a, "", "x")).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))));
}

/// Under injected faults every acknowledged message is stored exactly once
/// and reaches every inbox once.
pub async fn faults_lose_and_duplicate_nothing<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let users: Vec<u64> = (0..4).map(|i| base + i).collect();
    let ids = Arc::new(TestIds::default());
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let store = store.clone();
        let ids = Arc::clone(&ids);
        let users = users.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60u64 {
                let sender = users[(w % 4) as usize];
                let peer = users[((w + 1 + i % 3) % 4) as usize];
                let conv = ConversationId::direct(sender, peer);
                // Every message is sent twice, as a client retrying would.
                let m = text(conv, sender, &format!("f{w}-{i}"), "x");
                let out = store
                    .append(vec![m.clone(), m], &*ids, &nobody_online)
                    .await;
                let first = out[0].as_ref().expect("append").message_id;
                assert_eq!(out[1].as_ref().expect("append").message_id, first);
                acked.push((conv, first));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("task"));
    }
    for (conv, id) in &acked {
        let page = store
            .history(*conv, None, id + 1, 1)
            .await
            .expect("history");
        assert_eq!(page.messages.len(), 1);
        assert_eq!(
            decode(&page.messages[0]).message_id,
            *id,
            "acked message stored"
        );
    }
    for &u in &users {
        let inbox = read_inbox(&store, u, None).await;
        let mut seen = HashSet::new();
        for (_, m) in &inbox {
            assert!(
                seen.insert(m.message_id),
                "user {u}: message {} twice",
                m.message_id
            );
        }
        let mine = acked.iter().filter(|(c, _)| c.peer_of(u).is_some()).count();
        assert_eq!(
            inbox.len(),
            mine,
            "user {u}: inbox holds every acked message once"
        );
    }
    let total_rows: usize = {
        let mut convs: HashSet<ConversationId> = HashSet::new();
        convs.extend(acked.iter().map(|(c, _)| *c));
        let mut n = 0;
        for c in convs {
            n += store
                .history(c, None, 0, 1000)
                .await
                .expect("history")
                .messages
                .len();
        }
        n
    };
    assert_eq!(total_rows, acked.len(), "each acked message stored once");
}

/// Concurrent sign-ups for one username: exactly one wins.
pub async fn usernames_stay_unique<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let name = format!("alice-{base}");
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let store = store.clone();
        let rec = UserRecord {
            username: if i % 2 == 0 {
                name.clone()
            } else {
                name.to_uppercase()
            },
            display_name: format!("Alice {i}"),
            ..UserRecord::default()
        };
        tasks.push(tokio::spawn(async move {
            store.create_user(base + i, &rec).await
        }));
    }
    let mut winners = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(()) => winners.push(base + i as u64),
            Err(StoreError::UsernameTaken) => {}
            Err(e) => panic!("unexpected sign-up error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one sign-up wins");
    let owner = store
        .user_id_by_name(&name)
        .await
        .expect("lookup")
        .expect("name is taken");
    assert_eq!(owner, winners[0]);
    // Retrying the winner's own sign-up is harmless.
    let rec = store.user(owner).await.expect("read").expect("exists");
    store
        .create_user(owner, &rec)
        .await
        .expect("idempotent sign-up");
    // Deleting the account frees the name.
    store.delete_user(owner, 1).await.expect("delete");
    assert_eq!(store.user_id_by_name(&name).await.expect("lookup"), None);
    let fresh = UserRecord {
        username: name.clone(),
        ..UserRecord::default()
    };
    store
        .create_user(base + 100, &fresh)
        .await
        .expect("name free again");
}

/// A member reads history from their join on; non-members read nothing;
/// removed members get no new inbox entries.
pub async fn history_from_joined_at<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (owner, bob, carol) = (base, base + 1, base + 2);
    let group = base + 50;
    let conv = ConversationId::Group(group);
    let ids = TestIds::default();
    create_group(&store, &ids, group, owner, &[bob]).await;
    for i in 0..3 {
        append_one(
            &store,
            &ids,
            text(conv, owner, &format!("before-{i}"), "early"),
        )
        .await
        .expect("append");
    }
    assert!(matches!(
        store.history(conv, Some(carol), 0, 50).await,
        Err(StoreError::NotMember)
    ));
    let join = append_one(
        &store,
        &ids,
        NewMessage {
            kind: MessageKind::MembersAdded,
            membership: Some(MembershipChange::Add {
                users: vec![carol],
                role: Role::Member,
            }),
            ..text(conv, owner, "add-carol", "")
        },
    )
    .await
    .expect("add member");
    assert!(join.recipients.contains(&carol));
    append_one(&store, &ids, text(conv, bob, "after", "late"))
        .await
        .expect("append");
    let carol_view = store
        .history(conv, Some(carol), 0, 50)
        .await
        .expect("history");
    let ids_seen: Vec<u64> = carol_view
        .messages
        .iter()
        .map(|m| decode(m).message_id)
        .collect();
    assert_eq!(ids_seen.len(), 2, "carol sees her join and what followed");
    assert!(ids_seen.iter().all(|&id| id >= join.message_id));
    assert_eq!(
        store.unread_count(carol, conv, 100).await.expect("unread"),
        2,
        "carol's unread count covers only what she may see"
    );
    let bob_view = store
        .history(conv, Some(bob), 0, 50)
        .await
        .expect("history");
    assert_eq!(
        bob_view.messages.len(),
        6,
        "bob sees everything since creation"
    );
    // Paging: newest first, `before` excludes.
    let page = store.history(conv, Some(bob), 0, 2).await.expect("history");
    assert!(page.has_more);
    let newest = decode(&page.messages[0]).message_id;
    let older = store
        .history(conv, Some(bob), newest, 10)
        .await
        .expect("history");
    assert_eq!(older.messages.len(), 5);
    assert_eq!(
        store
            .member(group, carol)
            .await
            .expect("member")
            .map(|m| m.joined_at),
        Some(join.message_id)
    );

    // Removing bob: he learns of it, then receives nothing more.
    append_one(
        &store,
        &ids,
        NewMessage {
            kind: MessageKind::MembersRemoved,
            membership: Some(MembershipChange::Remove { users: vec![bob] }),
            ..text(conv, owner, "rm-bob", "")
        },
    )
    .await
    .expect("remove");
    let before = read_inbox(&store, bob, None).await.len();
    let after_rm = append_one(&store, &ids, text(conv, owner, "after-rm", "secret"))
        .await
        .expect("append");
    assert!(!after_rm.recipients.contains(&bob));
    assert_eq!(read_inbox(&store, bob, None).await.len(), before);
    assert!(matches!(
        store.history(conv, Some(bob), 0, 50).await,
        Err(StoreError::NotMember)
    ));
    let groups = store.groups_of(carol).await.expect("groups");
    assert_eq!(groups.len(), 1);
    // The one-transaction list agrees with reading entry by entry.
    let with_records = store.groups_of_with_records(carol).await.expect("groups");
    assert_eq!(with_records.len(), 1);
    assert_eq!(with_records[0].0, group);
    assert_eq!(with_records[0].1, groups[0].1);
    assert_eq!(
        Some(&with_records[0].2),
        store.group(group).await.expect("group").as_ref()
    );
    assert!(store
        .groups_of_with_records(bob)
        .await
        .expect("groups")
        .is_empty());
    let heads = store.conversation_heads(carol).await.expect("heads");
    assert_eq!(heads, vec![(conv, after_rm.message_id)]);
    assert_eq!(
        store
            .group(group)
            .await
            .expect("group")
            .map(|g| g.member_count),
        Some(2)
    );
}

/// After a retention trim, sync after a trimmed cursor is refused and
/// after a kept one still works.
pub async fn trimmed_cursor_expires<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (a, b) = (base, base + 1);
    let conv = ConversationId::direct(a, b);
    let ids = TestIds::default();
    for (i, at) in [100u64, 200, 300, 400].into_iter().enumerate() {
        let m = NewMessage {
            sent_at: at,
            ..text(conv, a, &format!("t{i}"), "x")
        };
        append_one(&store, &ids, m).await.expect("append");
    }
    let inbox = read_inbox(&store, b, None).await;
    assert_eq!(inbox.len(), 4);
    let removed = store.trim_inbox(b, 250).await.expect("trim");
    assert_eq!(removed, 2);
    // What is left is all newer: a second pass removes nothing.
    assert_eq!(store.trim_inbox(b, 250).await.expect("trim again"), 0);
    assert!(matches!(
        store.sync(b, Some(inbox[0].0), 10).await,
        Err(StoreError::CursorExpired)
    ));
    let after_kept = read_inbox(&store, b, Some(inbox[2].0)).await;
    assert_eq!(after_kept.len(), 1);
    // The last trimmed cursor is where a fully caught-up reader stands:
    // nothing was lost for them, so it still syncs.
    let from_edge = store
        .sync(b, Some(inbox[1].0), 10)
        .await
        .expect("edge cursor");
    assert_eq!(from_edge.entries.len(), 2);
    // History is kept.
    assert_eq!(
        store
            .history(conv, Some(b), 0, 10)
            .await
            .expect("history")
            .messages
            .len(),
        4
    );
}

/// Push pending collects offline recipients' bursts into one request;
/// online users, muted conversations and read messages count for nothing;
/// concurrent claims of one user yield one request, taken over with the
/// same idempotency key once its lease lapses, and cleared when finished.
pub async fn push_pending_collapses_bursts<K: Kv>(store: ChatStore<K>) {
    use hanmadi_storage::chat::{Claimed, DueKind, DuePush, PushClaim, PushOutcome, PushPlatform};

    let base = fresh_base();
    let (a, b, c, d) = (base, base + 1, base + 2, base + 3);
    let ids = TestIds::default();
    let online = move |u: u64| u == c;
    let sent_at = 1_700_000_000_000;
    store
        .set_muted(b, ConversationId::direct(b, d), true)
        .await
        .expect("mute");
    store
        .put_push_device(b, "phone", PushPlatform::Apns, "tok-b", 1)
        .await
        .expect("device");
    store
        .append(
            vec![text(ConversationId::direct(d, b), d, "m0", "muted")],
            &ids,
            &online,
        )
        .await;
    for i in 0..3 {
        store
            .append(
                vec![
                    text(
                        ConversationId::direct(a, b),
                        a,
                        &format!("p{i}"),
                        &format!("hi {i}"),
                    ),
                    text(ConversationId::direct(a, c), a, &format!("q{i}"), "x"),
                ],
                &ids,
                &online,
            )
            .await;
    }
    let seen = std::sync::Mutex::new(Vec::new());
    let build = |content: &hanmadi_storage::chat::PushContent, key: &str| {
        seen.lock()
            .expect("lock")
            .push((content.clone(), key.to_owned()));
        Some(Bytes::from(format!("push {key}")))
    };
    let claim = |owner: u64, now: u64| PushClaim {
        owner,
        now,
        delay_ms: 2000,
        lease_ms: 5000,
        build: &build,
    };
    let due = |user: u64| DuePush {
        user,
        at: sent_at,
        kind: DueKind::Pending,
    };
    // Not due within the delay; nothing for the online user.
    assert_eq!(
        store
            .claim_push(due(b), claim(1, sent_at + 1999))
            .await
            .expect("claim"),
        Claimed::Nothing
    );
    assert_eq!(
        store
            .claim_push(due(c), claim(1, sent_at + 5000))
            .await
            .expect("claim"),
        Claimed::Nothing
    );

    // Two workers at once: one request.
    let now = sent_at + 2000;
    let (x, y) = futures::join!(
        store.claim_push(due(b), claim(1, now)),
        store.claim_push(due(b), claim(2, now))
    );
    let sends: Vec<_> = [x.expect("claim"), y.expect("claim")]
        .into_iter()
        .filter_map(|r| match r {
            Claimed::Send(job) => Some(job),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1, "exactly one claim wins: {sends:?}");
    let job = sends[0].clone();
    assert_eq!(job.attempt, 1);
    let (content, key) = seen.lock().expect("lock").last().cloned().expect("built");
    assert_eq!(key, job.idempotency_key);
    assert_eq!(content.unseen, 3, "the muted conversation does not count");
    assert_eq!(content.body, "hi 2");
    assert_eq!(content.sender, a);
    assert_eq!(content.devices.len(), 1);
    assert_eq!(content.devices[0].token, "tok-b");
    let last = read_inbox(&store, b, None).await.last().map(|(c, _)| *c);
    assert_eq!(Some(content.cursor), last, "covers the newest entry");

    // Held: nobody else takes it before the lease ends; after, the same
    // request is sent again (a worker that died).
    let lease = DuePush {
        user: b,
        at: now + 5000,
        kind: DueKind::Scheduled,
    };
    assert_eq!(
        store
            .claim_push(lease, claim(3, now + 4999))
            .await
            .expect("claim"),
        Claimed::Nothing
    );
    match store
        .claim_push(lease, claim(3, now + 5000))
        .await
        .expect("claim")
    {
        Claimed::Send(again) => {
            assert_eq!(again.idempotency_key, job.idempotency_key);
            assert_eq!(again.body, job.body);
            assert_eq!(again.attempt, 2);
        }
        other => panic!("a lapsed lease is taken over, got {other:?}"),
    }
    store
        .finish_push(b, &job.idempotency_key, PushOutcome::Done, now + 6000)
        .await
        .expect("finish");
    let after = DuePush {
        user: b,
        at: now + 10_000,
        kind: DueKind::Scheduled,
    };
    assert_eq!(
        store
            .claim_push(after, claim(3, now + 20_000))
            .await
            .expect("claim"),
        Claimed::Nothing
    );

    // A message read before its push is not pushed.
    let m = append_one(
        &store,
        &ids,
        text(ConversationId::direct(a, b), a, "r0", "read"),
    )
    .await
    .expect("append");
    let cursor = m
        .cursor(m.recipients.iter().position(|&u| u == b).expect("b"))
        .expect("cursor");
    let page = store.sync(b, None, 1000).await.expect("sync");
    assert_eq!(page.next, Some(cursor));
    assert!(
        page.push_pending,
        "the page holds a message awaiting its push"
    );
    store.clear_push_pending(b, cursor).await.expect("clear");
    assert_eq!(
        store
            .claim_push(due(b), claim(1, now + 30_000))
            .await
            .expect("claim"),
        Claimed::Nothing
    );
    let page = store.sync(b, None, 1000).await.expect("sync");
    assert!(!page.push_pending, "nothing the page holds awaits a push");

    // A pending message past the page is not the page's to clear.
    append_one(
        &store,
        &ids,
        text(ConversationId::direct(a, b), a, "r1", "later"),
    )
    .await
    .expect("append");
    let through_r0 = store.sync(b, None, page.entries.len()).await.expect("sync");
    assert_eq!(through_r0.next, Some(cursor));
    assert!(!through_r0.push_pending, "r1 lies past the page");
    assert!(store.sync(b, None, 1000).await.expect("sync").push_pending);
}

/// Read marks move forward only; unread counts follow them.
pub async fn read_marks_and_unread<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (a, b) = (base, base + 1);
    let conv = ConversationId::direct(a, b);
    let ids = TestIds::default();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            append_one(&store, &ids, text(conv, a, &format!("r{i}"), "x"))
                .await
                .expect("append")
                .message_id,
        );
    }
    assert_eq!(store.unread_count(b, conv, 100).await.expect("unread"), 5);
    assert_eq!(store.unread_count(a, conv, 100).await.expect("unread"), 0);
    for id in [sent[2], sent[1]] {
        store
            .record_receipts(&[], &[(b, conv, id)])
            .await
            .expect("read");
    }
    assert_eq!(store.read_mark(b, conv).await.expect("mark"), sent[2]);
    assert_eq!(store.unread_count(b, conv, 100).await.expect("unread"), 2);
    let inbox = read_inbox(&store, b, None).await;
    for cursor in [inbox[3].0, inbox[1].0] {
        store
            .record_receipts(&[(b, "phone", cursor)], &[])
            .await
            .expect("ack");
    }
    assert_eq!(
        store.delivered(b, "phone").await.expect("delivered"),
        Some(inbox[3].0)
    );
    assert_eq!(store.direct_peers(a).await.expect("peers"), vec![b]);
    assert_eq!(
        store.conversation_heads(a).await.expect("heads"),
        vec![(conv, sent[4])]
    );
}

/// Sync and history pages stop once their messages hold the byte budget
/// (always holding one), and paging through them still yields everything,
/// in order, once.
pub async fn pages_stop_at_their_byte_budget<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (a, b) = (base, base + 1);
    let conv = ConversationId::direct(a, b);
    let ids = TestIds::default();
    let body = "x".repeat(1000);
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(
            append_one(&store, &ids, text(conv, a, &format!("big{i}"), &body))
                .await
                .expect("append")
                .message_id,
        );
    }
    let budget = 5_000;

    let first = store
        .sync_within(b, None, 100, budget, None)
        .await
        .expect("sync");
    let held: usize = first.entries.iter().map(|e| e.message.len()).sum();
    assert!(first.has_more, "a budgeted page says more remain");
    assert!(
        (5..=6).contains(&first.entries.len()) && held - first.entries[0].message.len() < budget,
        "{} entries, {held} bytes, for a {budget}-byte budget",
        first.entries.len()
    );
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .sync_within(b, after, 100, budget, None)
            .await
            .expect("sync");
        got.extend(page.entries.iter().map(|e| e.message_id));
        after = page.next;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(got, sent, "sync pages hold every message once, in order");
    // A budget smaller than one message still moves on.
    let one = store
        .sync_within(b, None, 100, 1, None)
        .await
        .expect("sync");
    assert_eq!(one.entries.len(), 1);

    let mut got = Vec::new();
    let mut before = 0;
    loop {
        let page = store
            .history_within(conv, Some(b), before, 100, budget)
            .await
            .expect("history");
        assert!(page.messages.len() <= 6, "{} messages", page.messages.len());
        for m in &page.messages {
            got.push(decode(m).message_id);
        }
        before = *got.last().expect("a page holds one");
        if !page.has_more {
            break;
        }
    }
    got.reverse();
    assert_eq!(
        got, sent,
        "history pages hold every message once, newest first"
    );
}

/// Blocks are per direction and reversible.
pub async fn blocks<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (a, b) = (base, base + 1);
    assert!(!store.blocked_either(a, b).await.expect("read"));
    store.set_blocked(a, b, true).await.expect("block");
    assert!(store.blocked_either(b, a).await.expect("read"));
    assert_eq!(store.blocked_by(a).await.expect("list"), vec![b]);
    store.set_blocked(a, b, false).await.expect("unblock");
    assert!(!store.blocked_either(a, b).await.expect("read"));

    // Node registrations and presence scan their subspaces the same way.
    let node = hanmadi_storage::chat::NodeRecord {
        hostname: format!("node-{base}"),
        ..Default::default()
    };
    store.put_node(base, &node).await.expect("register");
    let nodes = store.nodes().await.expect("nodes");
    assert!(nodes
        .iter()
        .any(|(id, r)| *id == base && r.hostname == node.hostname));
    let lease = |node_id, epoch| hanmadi_storage::chat::NodeLease {
        node_id,
        epoch,
        ids_floor_ms: 0,
        instance: 1,
    };
    store
        .set_presence(&lease(base, 2), &[(a, true), (b, true)])
        .await
        .expect("presence");
    store
        .set_presence(&lease(base + 1, 5), &[(a, true)])
        .await
        .expect("presence");
    assert_eq!(
        store.presence(a).await.expect("presence"),
        vec![(base, 2), (base + 1, 5)]
    );
    store
        .set_presence(&lease(base, 2), &[(a, false)])
        .await
        .expect("presence");
    assert_eq!(
        store.presence(a).await.expect("presence"),
        vec![(base + 1, 5)]
    );
    assert_eq!(store.presence(b).await.expect("presence"), vec![(base, 2)]);
}

/// Who may post and change a group is decided in the append transaction:
/// non-members cannot post, plain members cannot add or remove others, the
/// owner cannot be removed by an admin, anyone can leave.
pub async fn membership_rules<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (owner, admin, member, outsider) = (base, base + 1, base + 2, base + 3);
    let group = base + 60;
    let conv = ConversationId::Group(group);
    let ids = TestIds::default();
    create_group(&store, &ids, group, owner, &[member]).await;
    let one = |m: NewMessage| append_one(&store, &ids, m);
    let change = |sender: u64, cmid: &str, c: MembershipChange| NewMessage {
        kind: MessageKind::MembersAdded,
        membership: Some(c),
        ..text(conv, sender, cmid, "")
    };
    assert!(matches!(
        one(text(conv, outsider, "o1", "let me in")).await,
        Err(StoreError::NotMember)
    ));
    assert!(matches!(
        one(change(
            member,
            "m1",
            MembershipChange::Add {
                users: vec![outsider],
                role: Role::Member
            }
        ))
        .await,
        Err(StoreError::PermissionDenied)
    ));
    one(change(
        owner,
        "a1",
        MembershipChange::Add {
            users: vec![admin],
            role: Role::Admin,
        },
    ))
    .await
    .expect("owner adds an admin");
    one(change(
        admin,
        "a2",
        MembershipChange::Add {
            users: vec![outsider],
            role: Role::Member,
        },
    ))
    .await
    .expect("admin adds a member");
    assert!(matches!(
        one(change(
            admin,
            "a3",
            MembershipChange::Remove { users: vec![owner] }
        ))
        .await,
        Err(StoreError::PermissionDenied)
    ));
    assert!(matches!(
        one(change(
            member,
            "m2",
            MembershipChange::Remove {
                users: vec![outsider]
            }
        ))
        .await,
        Err(StoreError::PermissionDenied)
    ));
    one(change(
        member,
        "m3",
        MembershipChange::Remove {
            users: vec![member],
        },
    ))
    .await
    .expect("a member leaves");
    assert!(matches!(
        one(text(conv, member, "m4", "still here?")).await,
        Err(StoreError::NotMember)
    ));
    one(text(conv, outsider, "o2", "hello all"))
        .await
        .expect("new member posts");
    let members: Vec<u64> = store
        .members(group)
        .await
        .expect("members")
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    assert_eq!(members.len(), 3);
    assert!(!members.contains(&member));
}

/// Node ids are leased: a live lease is never taken, a lapsed one is, and
/// the old holder then fails every check of its lease (fencing); a
/// released id is free at once. Times lie far in the future and apart for
/// each run, so leases of other runs sharing a cluster do not interfere.
pub async fn node_leases<K: Kv>(store: ChatStore<K>) {
    use hanmadi_storage::chat::NodeRecord;
    use std::time::Duration;
    const EXPIRY: Duration = Duration::from_secs(10);
    let t0 = 4_000_000_000_000 + u64::from(rand::random::<u32>()) * 1000;
    let record = |name: &str| NodeRecord {
        hostname: name.to_owned(),
        ..NodeRecord::default()
    };

    let a = store
        .acquire_node(&record("a"), t0, EXPIRY)
        .await
        .expect("a");
    let b = store
        .acquire_node(&record("b"), t0, EXPIRY)
        .await
        .expect("b");
    assert_ne!(a.node_id, b.node_id, "a live lease is never taken");
    assert!(a.node_id < 1024 && b.node_id < 1024);
    store.check_lease(&a).await.expect("a holds");
    let renewed = store
        .renew_node(&a, &record("a"), t0 + 5_000, EXPIRY)
        .await
        .expect("renew");
    assert_eq!(renewed, t0 + 15_000);

    // Both lapse; the lowest lapsed id is a's, and the new holder mints
    // above a's last expiry.
    let later = t0 + 20_000;
    let c = store
        .acquire_node(&record("c"), later, EXPIRY)
        .await
        .expect("c");
    assert_eq!(c.node_id, a.node_id);
    assert_eq!(c.epoch, a.epoch + 1);
    assert_eq!(c.ids_floor_ms, t0 + 15_000);
    // Every lease here is for the same id, a's.
    let lost = |r: Result<(), StoreError>| {
        assert!(
            matches!(r, Err(StoreError::LeaseLost { node_id }) if node_id == a.node_id),
            "{r:?}"
        );
    };
    lost(store.check_lease(&a).await);
    lost(
        store
            .renew_node(&a, &record("a"), later, EXPIRY)
            .await
            .map(|_| ()),
    );
    store
        .release_node(&a)
        .await
        .expect("a stale release is a no-op");
    store.check_lease(&c).await.expect("c holds");
    let registered = store.nodes().await.expect("nodes");
    assert!(registered
        .iter()
        .any(|(id, r)| *id == c.node_id && r.hostname == "c" && r.epoch == c.epoch));

    // A released id is free at once, before its lease would have lapsed.
    store.release_node(&c).await.expect("release");
    let d = store
        .acquire_node(&record("d"), later, EXPIRY)
        .await
        .expect("d");
    assert_eq!(d.node_id, c.node_id);
    assert_eq!(d.epoch, c.epoch + 1);
    lost(store.check_lease(&c).await);

    // Nodes starting at once each take an id of their own.
    let starting = futures::future::join_all((0..6).map(|i| {
        let store = store.clone();
        async move {
            store
                .acquire_node(&record(&format!("s{i}")), later, EXPIRY)
                .await
                .expect("take")
        }
    }))
    .await;
    let mut taken: Vec<u64> = starting.iter().map(|l| l.node_id).collect();
    // b's lease has lapsed by now; d's holds.
    taken.push(d.node_id);
    taken.sort_unstable();
    taken.dedup();
    assert_eq!(taken.len(), 7, "no live id is taken twice: {starting:?}");
    for lease in &starting {
        store.release_node(lease).await.expect("release");
    }

    // Leases of this far future would stay live for real nodes sharing the
    // cluster (listed by discovery, their ids never free): give them up.
    store.release_node(&b).await.expect("release");
    store.release_node(&d).await.expect("release");
}

/// A single writer plans a batch while the one before it is still to
/// commit: a batch holding a send of the earlier one, or a message to a
/// group whose membership the earlier one changes, is planned only after
/// it; others are planned at once. Either way the outcomes are those of
/// appending one batch after the other.
pub async fn pipelined_batches_keep_every_rule<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (a, b, c) = (base, base + 1, base + 2);
    let group = base + 3;
    let conv = ConversationId::direct(a, b);
    let gconv = ConversationId::Group(group);
    let ids = TestIds::default();
    create_group(&store, &ids, group, a, &[b, c]).await;

    // The second batch repeats a send of the first, and writes to a group
    // the first removes a member from.
    let remove = NewMessage {
        membership: Some(MembershipChange::Remove { users: vec![c] }),
        kind: MessageKind::MembersRemoved,
        ..text(gconv, a, "rm", "")
    };
    let first = store
        .prepare_append(
            vec![text(conv, a, "m1", "one"), remove],
            &ids,
            &nobody_online,
        )
        .await;
    let second = store
        .prepare_append(
            vec![
                text(conv, a, "m1", "one"),
                text(conv, b, "m2", "two"),
                text(gconv, b, "g1", "to the group"),
            ],
            &ids,
            &nobody_online,
        )
        .await;
    let first = store.commit_append(first, &ids, &nobody_online).await;
    let second = store.commit_append(second, &ids, &nobody_online).await;
    let first: Vec<Appended> = first.into_iter().map(|r| r.expect("first")).collect();
    let second: Vec<Appended> = second.into_iter().map(|r| r.expect("second")).collect();
    assert!(second[0].duplicate, "a repeated send is stored once");
    assert_eq!(second[0].message_id, first[0].message_id);
    assert!(second[1].message_id > first[0].message_id);
    let mut to_group = second[2].recipients.clone();
    to_group.sort_unstable();
    assert_eq!(to_group, vec![a, b], "the removed member gets nothing");

    // Batches with nothing in common: the second is planned before the
    // first commits, and its ids still follow the first's.
    let third = store
        .prepare_append(vec![text(conv, a, "m3", "three")], &ids, &nobody_online)
        .await;
    let fourth = store
        .prepare_append(vec![text(conv, b, "m4", "four")], &ids, &nobody_online)
        .await;
    let third = store.commit_append(third, &ids, &nobody_online).await;
    let fourth = store.commit_append(fourth, &ids, &nobody_online).await;
    let (third, fourth) = (
        third.into_iter().next().expect("one").expect("third"),
        fourth.into_iter().next().expect("one").expect("fourth"),
    );
    assert!(fourth.message_id > third.message_id);
    let inbox = read_inbox(&store, b, None).await;
    let ids_seen: Vec<u64> = inbox
        .iter()
        .filter(|(_, m)| m.conversation == Some(conv.into()))
        .map(|(_, m)| m.message_id)
        .collect();
    assert_eq!(
        ids_seen,
        vec![
            first[0].message_id,
            second[1].message_id,
            third.message_id,
            fourth.message_id
        ],
        "each message once, in commit order, ids increasing"
    );
    assert_eq!(store.head(conv).await.expect("head"), fourth.message_id);
}

/// A store that writes the change feed records, in commit order, every
/// user with a new inbox entry, every membership change, deleted account
/// and block change; readers page it after a position, and trimming
/// drops what they have read.
pub async fn change_feed<K: Kv>(store: ChatStore<K>) {
    let store = ChatStore::new(
        store.kv().clone(),
        hanmadi_storage::StoreConfig {
            change_feed: true,
            ..*store.config()
        },
    );
    let base = fresh_base();
    let (a, b, c) = (base, base + 1, base + 2);
    let group = base + 70;
    let ids = TestIds::default();
    let start = store.feed_head().await.expect("head");
    let hello = append_one(
        &store,
        &ids,
        text(ConversationId::direct(a, b), a, "f1", "hello"),
    )
    .await
    .expect("append");
    create_group(&store, &ids, group, a, &[b, c]).await;
    store.set_blocked(a, c, true).await.expect("block");
    let record = UserRecord {
        username: format!("feed-{c}"),
        ..UserRecord::default()
    };
    store.create_user(c, &record).await.expect("user");
    store.delete_user(c, 1).await.expect("delete");
    // Other tests of the suite may write to the same store meanwhile: keep
    // the entries that name this test's users.
    let mut seen = Vec::new();
    let mut after = start;
    loop {
        let page = store.feed_after(after, 2).await.expect("feed");
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        seen.extend(page);
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "feed positions increase"
    );
    // Each user of a message's entry reads through their own entry, not
    // through the commit's end. (A message found committed on a retry
    // after an unknown result has no cursors to compare.)
    if let Some(first) = hello.cursor(0) {
        let (at, event) = seen
            .iter()
            .find(|(p, _)| p.0[..10] == first.as_bytes()[..10])
            .expect("the message's commit wrote a feed entry");
        for (i, user) in event.users.iter().enumerate() {
            let k = hello
                .recipients
                .iter()
                .position(|r| r == user)
                .expect("a recipient");
            assert_eq!(Some(at.until_of(event, i)), hello.cursor(k), "user {user}");
        }
    }
    let mut ours: Vec<_> = seen
        .iter()
        .map(|(_, e)| e)
        .filter(|e| {
            e.users.contains(&a)
                || e.groups.contains(&group)
                || e.accounts.contains(&c)
                || e.blocks.contains(&a)
        })
        .cloned()
        .collect();
    // A transaction retried after an unknown result may have committed
    // twice: the feed is at least once, and acting twice is harmless. (The
    // retry's entry reads through the end of its own commit.)
    ours.dedup_by(|x, y| {
        let without_orders = |e: &FeedEvent| FeedEvent {
            orders: Vec::new(),
            ..e.clone()
        };
        without_orders(x) == without_orders(y)
    });
    assert_eq!(ours.len(), 4, "{ours:?}");
    assert_eq!(ours[0].users, vec![a, b]);
    assert_eq!(ours[0].orders.len(), 2);
    assert_eq!(ours[1].users, vec![a, b, c]);
    assert_eq!(ours[1].groups, vec![group]);
    assert_eq!(ours[2].blocks, vec![a, c]);
    assert_eq!(ours[3].accounts, vec![c]);
    let head = store.feed_head().await.expect("head").expect("not empty");
    assert!(head >= after.expect("read something"));
    store.trim_feed(head).await.expect("trim");
    assert!(store
        .feed_after(None, 10)
        .await
        .expect("feed")
        .iter()
        .all(|(p, _)| *p > head));
}

/// A page read at a known commit's version holds that commit and every
/// entry before it, in order; a version too old for the engine to read at
/// falls back to the newest.
pub async fn reads_at_a_known_commit<K: Kv>(store: ChatStore<K>) {
    let base = fresh_base();
    let (a, b) = (base, base + 1);
    let conv = ConversationId::direct(a, b);
    let ids = TestIds::default();
    let mut known = Vec::new();
    for i in 0..3 {
        let out = append_one(
            &store,
            &ids,
            text(conv, a, &format!("k{i}"), &format!("body {i}")),
        )
        .await
        .expect("append");
        let at = out.recipients.iter().position(|&u| u == b).expect("b");
        known.push(out.cursor(at).expect("a fresh commit's cursor"));
    }
    let inbox: Vec<Cursor> = read_inbox(&store, b, None)
        .await
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(inbox, known);
    for (i, &at) in known.iter().enumerate() {
        let page = store
            .sync_within(b, None, 10, usize::MAX, Some(at))
            .await
            .expect("sync at a known commit");
        let got: Vec<Cursor> = page.entries.iter().map(|e| e.cursor).collect();
        // An engine may read at a newer version than the one named.
        assert!(got.len() > i, "entry {i} missing from {got:?}");
        assert_eq!(got, inbox[..got.len()]);
        for (k, e) in page.entries.iter().enumerate() {
            assert_eq!(decode(&e.message).body, format!("body {k}"));
        }
    }
    // Version zero, and one older than any the engine keeps.
    for version in [0, 1] {
        let mut ancient = [0; hanmadi_storage::chat::CURSOR_LEN];
        ancient[..8].copy_from_slice(&u64::to_be_bytes(version));
        let page = store
            .sync_within(b, None, 10, usize::MAX, Some(Cursor(ancient)))
            .await
            .expect("sync at an old version");
        let got: Vec<Cursor> = page.entries.iter().map(|e| e.cursor).collect();
        assert_eq!(got, inbox);
    }
}

/// On a cluster an append proves, for each recipient, which inbox entry
/// comes right before the new one: whatever it names is the entry before
/// it in the inbox, also while other conversations commit into the same
/// inbox at the same moment.
pub async fn chained_deliveries_name_the_entry_before<K: Kv>(store: ChatStore<K>) {
    let store = ChatStore::new(
        store.kv().clone(),
        hanmadi_storage::StoreConfig::for_cluster(),
    );
    let base = fresh_base();
    let r = base;
    let senders: Vec<u64> = (1..=4).map(|i| base + i).collect();
    let ids = TestIds::default();
    let mut outs: Vec<Appended> = Vec::new();
    for round in 0..4 {
        let sends = senders.iter().map(|&s| {
            append_online(
                &store,
                &ids,
                text(
                    ConversationId::direct(r, s),
                    s,
                    &format!("c{round}"),
                    "at once",
                ),
            )
        });
        for out in futures::future::join_all(sends).await {
            outs.push(out.expect("append"));
        }
    }
    // One after another, each from a sender of its own.
    for i in 0..8 {
        let s = base + 100 + i;
        let out = append_online(
            &store,
            &ids,
            text(ConversationId::direct(r, s), s, "one", "alone"),
        )
        .await
        .expect("append");
        outs.push(out);
    }
    let chained = check_chain(&store, &outs).await;
    assert!(chained > 0, "no append proved the entry before its own");
    // Only a live connection uses the entry: nobody's is read for users
    // without one.
    let s = base + 200;
    let out = append_one(
        &store,
        &ids,
        text(ConversationId::direct(r, s), s, "one", "offline"),
    )
    .await
    .expect("append");
    assert!(out.before.is_empty(), "{:?}", out.before);
}

/// Checks every entry `outs` name as the one before theirs against the
/// recipients' inboxes; returns how many they named.
async fn check_chain<K: Kv>(store: &ChatStore<K>, outs: &[Appended]) -> usize {
    let mut inboxes: HashMap<u64, Vec<Cursor>> = HashMap::new();
    let mut chained = 0;
    for out in outs {
        for (i, &user) in out.recipients.iter().enumerate() {
            // Found committed after an unknown result: its cursors, and
            // what came before, are not known.
            let Some(cursor) = out.cursor(i) else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = inboxes.entry(user) {
                let inbox = read_inbox(store, user, None).await;
                slot.insert(inbox.into_iter().map(|(c, _)| c).collect());
            }
            let inbox = &inboxes[&user];
            let at = inbox
                .iter()
                .position(|&c| c == cursor)
                .expect("the entry is in the inbox");
            match out.before(i) {
                Before::Unknown => continue,
                Before::Empty => assert_eq!(at, 0, "user {user}: entries before {cursor:?}"),
                Before::Entry(c) => {
                    assert!(at > 0, "user {user}: {cursor:?} is the first entry");
                    assert_eq!(inbox[at - 1], c, "user {user}: the entry before {cursor:?}");
                }
            }
            chained += 1;
        }
    }
    chained
}

/// The same for group messages: an append reads the inboxes of the members
/// the group's last append found, while direct conversations commit into
/// the same inboxes; a group larger than [`CHAINED_MEMBERS_MAX`] leaves
/// every recipient to read their inbox.
pub async fn chained_group_deliveries_name_the_entry_before<K: Kv>(store: ChatStore<K>) {
    let store = ChatStore::new(
        store.kv().clone(),
        hanmadi_storage::StoreConfig::for_cluster(),
    );
    let base = fresh_base();
    let ids = TestIds::default();
    let members: Vec<u64> = (1..=5).map(|i| base + i).collect();
    let (busy, quiet) = (base + 100, base + 200);
    create_group(&store, &ids, busy, members[0], &members[1..]).await;
    create_group(&store, &ids, quiet, members[0], &members[1..]).await;
    let mut outs: Vec<Appended> = Vec::new();
    // Group messages one after another, direct ones into the same inboxes
    // beside them.
    for round in 0..4 {
        let group = async {
            let mut outs = Vec::new();
            for &s in &members {
                let msg = text(
                    ConversationId::Group(busy),
                    s,
                    &format!("g{round}"),
                    "to all",
                );
                outs.push(append_online(&store, &ids, msg).await);
            }
            outs
        };
        let direct = futures::future::join_all(members.iter().map(|&m| {
            let s = m + 50;
            let msg = text(
                ConversationId::direct(m, s),
                s,
                &format!("d{round}"),
                "aside",
            );
            append_online(&store, &ids, msg)
        }));
        let (group, direct) = futures::future::join(group, direct).await;
        for out in group.into_iter().chain(direct) {
            outs.push(out.expect("append"));
        }
    }
    check_chain(&store, &outs).await;
    // A group nothing else writes beside.
    let mut quiet_outs = Vec::new();
    for &s in members.iter().cycle().take(8) {
        let msg = text(ConversationId::Group(quiet), s, &format!("q{s}"), "alone");
        let out = append_online(&store, &ids, msg).await.expect("append");
        quiet_outs.push(out);
    }
    // One batch (one attempt, as a rule) that adds a user, then removes a
    // member, with messages between: whoever is named before an entry
    // still holds the entry before it.
    let newcomer = base + 6;
    let gconv = ConversationId::Group(quiet);
    let change = |cmid: &str, kind: MessageKind, c: MembershipChange| NewMessage {
        kind,
        membership: Some(c),
        ..text(gconv, members[0], cmid, "")
    };
    let batch = vec![
        text(gconv, members[1], "b1", "before"),
        change(
            "add",
            MessageKind::MembersAdded,
            MembershipChange::Add {
                users: vec![newcomer],
                role: Role::Member,
            },
        ),
        text(gconv, newcomer, "b2", "joined"),
        change(
            "remove",
            MessageKind::MembersRemoved,
            MembershipChange::Remove {
                users: vec![members[4]],
            },
        ),
        text(gconv, members[2], "b3", "after"),
    ];
    for out in store.append(batch, &ids, &|_| true).await {
        quiet_outs.push(out.expect("append"));
    }
    assert!(
        check_chain(&store, &quiet_outs).await > 0,
        "no group append proved the entry before its own"
    );
    // One member over the limit: nobody's inbox is read.
    let crowd: Vec<u64> = (1..=CHAINED_MEMBERS_MAX as u64)
        .map(|i| base + 1000 + i)
        .collect();
    let large = base + 300;
    create_group(&store, &ids, large, members[0], &crowd).await;
    for round in 0..2 {
        let msg = text(
            ConversationId::Group(large),
            members[0],
            &format!("l{round}"),
            "to the crowd",
        );
        let out = append_online(&store, &ids, msg).await.expect("append");
        assert_eq!(out.recipients.len(), CHAINED_MEMBERS_MAX + 1);
        assert!(
            (0..out.recipients.len()).all(|i| out.before(i) == Before::Unknown),
            "a group of {} members read its members' inboxes",
            out.recipients.len()
        );
    }
}

/// Appends one message with everyone online and returns its outcome.
async fn append_online<K: Kv>(
    store: &ChatStore<K>,
    ids: &dyn IdSource,
    msg: NewMessage,
) -> Result<Appended, StoreError> {
    append_as(store, ids, msg, &|_| true).await
}
