//! The router against a real embedded store (fsync on): ids, exactly-once
//! sends, authorization, delivery order and back-pressure.

#[allow(dead_code)]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{harness, inbox, text, users};
use hanmadi_proto::ConversationId;
use hanmadi_router::ids::{split, ID_EPOCH_MS};
use hanmadi_router::{Clock, Router, RouterConfig, RouterError, Target};
use hanmadi_storage::chat::Role;

const USERS: [u64; 8] = [11, 12, 13, 14, 15, 16, 17, 18];

#[derive(Debug)]
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// 8 senders at once, to a group and to each other: within each
/// conversation ids strictly increase in commit (cursor) order, are unique,
/// and carry the node's bits; the sink sees each user's cursors strictly
/// increasing, and nothing in an inbox after the last delivered cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_keep_order_and_deliver_everything() {
    let h = harness(RouterConfig {
        node: 5,
        ..RouterConfig::default()
    })
    .await;
    let store = h.router.store().clone();
    users(&store, &USERS).await;
    for &u in &USERS {
        h.presence.connect(u);
    }
    let (group, _) = h
        .router
        .create_group(USERS[0], "all".into(), USERS[1..].to_vec())
        .await
        .expect("create group");
    let mut tasks = Vec::new();
    for (w, &sender) in USERS.iter().enumerate() {
        let router = Arc::clone(&h.router);
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..60usize {
                let to = if i % 2 == 0 {
                    Target::Group(group)
                } else {
                    Target::User(USERS[(w + 1 + i % 7) % 8])
                };
                let ack = router
                    .send(sender, text(&format!("{sender}-{i}"), to, "hi"))
                    .await
                    .expect("send");
                acks.push(ack);
            }
            acks
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender task"));
    }
    let ids: HashSet<u64> = all.iter().map(|a| a.message_id).collect();
    assert_eq!(ids.len(), all.len(), "ids are unique across conversations");
    assert!(
        all.iter().all(|a| split(a.message_id).node == 5),
        "node bits kept"
    );

    let seen = h.sink.seen.lock().clone();
    assert!(h.sink.notified.lock().is_empty());
    for &u in &USERS {
        let mine: Vec<_> = seen.iter().filter(|s| s.user == u).collect();
        for w in mine.windows(2) {
            assert!(
                w[0].cursor < w[1].cursor,
                "user {u}: delivered cursors out of order"
            );
        }
        let entries = inbox(&store, u, None).await;
        // Commit order within each conversation is id order.
        let mut last: HashMap<ConversationId, u64> = HashMap::new();
        for (_, m) in &entries {
            let c = ConversationId::try_from(m.conversation.as_ref()).expect("conversation");
            let prev = last.insert(c, m.message_id).unwrap_or(0);
            assert!(m.message_id > prev, "user {u}: ids not increasing in {c}");
        }
        // Everything stored for the user was delivered, with the same
        // cursors, and nothing lies after the last delivered cursor.
        let delivered: Vec<(hanmadi_storage::chat::Cursor, u64)> =
            mine.iter().map(|s| (s.cursor, s.message_id)).collect();
        let stored: Vec<(hanmadi_storage::chat::Cursor, u64)> =
            entries.iter().map(|(c, m)| (*c, m.message_id)).collect();
        assert_eq!(
            delivered, stored,
            "user {u}: deliveries differ from the inbox"
        );
        let after = inbox(&store, u, mine.last().map(|s| s.cursor)).await;
        assert!(
            after.is_empty(),
            "user {u}: undelivered entries after the last cursor"
        );
    }
}

/// A clock stepping back 10 s does not make ids go back, nor touch the node
/// bits.
#[tokio::test]
async fn ids_survive_a_clock_stepping_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::open_store(dir.path());
    users(&store, &[1, 2]).await;
    let clock = Arc::new(ManualClock(AtomicU64::new(ID_EPOCH_MS + 100_000)));
    let (router, _task) = Router::start_with_clock(
        store,
        Arc::new(hanmadi_router::LocalPresence::new()),
        Arc::new(hanmadi_router::NoDelivery),
        RouterConfig {
            node: 1023,
            ..RouterConfig::default()
        },
        clock.clone(),
    );
    let mut last = 0;
    for i in 0..40 {
        if i == 20 {
            clock.0.fetch_sub(10_000, Ordering::Relaxed);
        }
        let ack = router
            .send(1, text(&format!("c{i}"), Target::User(2), "x"))
            .await
            .expect("send");
        assert!(ack.message_id > last, "id went back at step {i}");
        assert_eq!(split(ack.message_id).node, 1023);
        last = ack.message_id;
    }
}

/// A send retried with its client id — twice in one batch, and later —
/// returns the first ack and stores one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_sends_store_one_message() {
    let h = harness(RouterConfig::default()).await;
    let store = h.router.store().clone();
    users(&store, &[1, 2]).await;
    let send = || h.router.send(1, text("same", Target::User(2), "hello"));
    let (a, b) = tokio::join!(send(), send());
    let (a, b) = (a.expect("send"), b.expect("send"));
    assert_eq!(a, b);
    let later = send().await.expect("retry");
    assert_eq!(later, a);
    let page = h
        .router
        .history(2, ConversationId::direct(1, 2), 0, 10)
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(inbox(&store, 2, None).await.len(), 1);
    assert_eq!(h.sink.seen.lock().iter().filter(|s| s.user == 2).count(), 1);
}

/// Non-members neither post nor read; a removed member stops receiving at
/// once; blocked users cannot message each other either way.
#[tokio::test]
async fn authorization() {
    let h = harness(RouterConfig::default()).await;
    let store = h.router.store().clone();
    users(&store, &[1, 2, 3, 4]).await;
    let (group, _) = h
        .router
        .create_group(1, "g".into(), vec![2, 3])
        .await
        .expect("create");
    let conv = ConversationId::Group(group);
    assert!(matches!(
        h.router
            .send(4, text("x1", Target::Group(group), "hi"))
            .await,
        Err(RouterError::NotAMember)
    ));
    assert!(matches!(
        h.router.history(4, conv, 0, 10).await,
        Err(RouterError::NotAMember)
    ));
    assert!(matches!(
        h.router.add_members(2, group, vec![4], Role::Member).await,
        Err(RouterError::PermissionDenied)
    ));
    h.router.remove_member(1, group, 3).await.expect("remove");
    let before = inbox(&store, 3, None).await.len();
    let delivered_before = h.sink.seen.lock().iter().filter(|s| s.user == 3).count();
    h.router
        .send(2, text("after", Target::Group(group), "secret"))
        .await
        .expect("member posts");
    assert_eq!(
        inbox(&store, 3, None).await.len(),
        before,
        "removed member got it"
    );
    assert!(matches!(
        h.router
            .send(3, text("x2", Target::Group(group), "hi"))
            .await,
        Err(RouterError::NotAMember)
    ));
    assert_eq!(
        h.sink.seen.lock().iter().filter(|s| s.user == 3).count(),
        delivered_before,
        "removed member was delivered to"
    );

    // A retry of a send stored before the block gets its first ack.
    let before_block = h
        .router
        .send(1, text("pre-block", Target::User(2), "hi"))
        .await
        .expect("send");
    h.router.set_blocked(1, 2, true).await.expect("block");
    let retried = h
        .router
        .send(1, text("pre-block", Target::User(2), "hi"))
        .await
        .expect("the retry is answered with the first ack");
    assert_eq!(retried, before_block);
    for (from, to) in [(1, 2), (2, 1)] {
        assert!(matches!(
            h.router
                .send(from, text(&format!("b{from}"), Target::User(to), "hi"))
                .await,
            Err(RouterError::Blocked)
        ));
    }
    h.router.set_blocked(1, 2, false).await.expect("unblock");
    h.router
        .send(2, text("b3", Target::User(1), "hi again"))
        .await
        .expect("unblocked");
    assert!(matches!(
        h.router.send(1, text("n1", Target::User(999), "hi")).await,
        Err(RouterError::NotFound(_))
    ));
}

/// Blocks are decided by the append transaction: a block committed behind
/// the router's back (through another node, or between the cache's read
/// and its insert) stops the next message although the cache still says
/// "not blocked"; and a user who blocked someone cannot be put in a group
/// by them.
#[tokio::test]
async fn a_block_the_cache_missed_still_stops_messages() {
    let h = harness(RouterConfig::default()).await;
    let store = h.router.store().clone();
    users(&store, &[21, 22, 23]).await;
    h.router
        .send(21, text("c1", Target::User(22), "hi"))
        .await
        .expect("not blocked yet: the cache now says so");
    store.set_blocked(22, 21, true).await.expect("block");
    assert!(matches!(
        h.router.send(21, text("c2", Target::User(22), "hi")).await,
        Err(RouterError::Blocked)
    ));
    assert!(matches!(
        h.router.create_group(21, "g".into(), vec![22, 23]).await,
        Err(RouterError::Blocked)
    ));
    let (group, _) = h
        .router
        .create_group(21, "g".into(), vec![23])
        .await
        .expect("without the user who blocked the creator");
    assert!(matches!(
        h.router
            .add_members(21, group, vec![22], Role::Member)
            .await,
        Err(RouterError::Blocked)
    ));
}

/// A full append queue makes senders wait (and `try_send` refuse), and
/// every send that waited is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_pushes_back_and_loses_nothing() {
    let h = harness(RouterConfig {
        appender: hanmadi_router::AppenderConfig {
            queue: 4,
            max_batch: 2,
            ..hanmadi_router::AppenderConfig::default()
        },
        ..RouterConfig::default()
    })
    .await;
    let store = h.router.store().clone();
    users(&store, &[1, 2]).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let router = Arc::clone(&h.router);
        tasks.push(tokio::spawn(async move {
            router
                .send(1, text(&format!("q{i}"), Target::User(2), "x"))
                .await
        }));
    }
    let mut busy = false;
    let mut extra = 0;
    for i in 0..10_000 {
        match h
            .router
            .try_send(1, text(&format!("t{i}"), Target::User(2), "x"))
            .await
        {
            Err(RouterError::Busy) => {
                busy = true;
                break;
            }
            Ok(_) => extra += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert!(busy, "the queue never filled");
    for t in tasks {
        t.await.expect("task").expect("a waiting send is stored");
    }
    assert_eq!(inbox(&store, 2, None).await.len(), 200 + extra);
}

/// Sends that stand in line longer than `max_wait` are refused while the
/// queue still has room, past the sends always admitted; nothing admitted
/// is lost, and once the line is gone sends are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_wait_refuses_before_the_queue_fills() {
    let h = harness(RouterConfig {
        appender: hanmadi_router::AppenderConfig {
            // Every answer is slower than this: the wait always stands.
            max_wait: std::time::Duration::from_nanos(1),
            admit_in_flight: 8,
            ..hanmadi_router::AppenderConfig::default()
        },
        ..RouterConfig::default()
    })
    .await;
    let store = h.router.store().clone();
    users(&store, &[1, 2]).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut feeders = Vec::new();
    for f in 0..32 {
        let router = Arc::clone(&h.router);
        let stop = Arc::clone(&stop);
        feeders.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                router
                    .send(1, text(&format!("f{f}-{sent}"), Target::User(2), "x"))
                    .await
                    .expect("a waiting send is stored");
                sent += 1;
            }
            sent
        }));
    }
    let mut accepted = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        match h
            .router
            .try_send(1, text(&format!("t{accepted}"), Target::User(2), "x"))
            .await
        {
            Err(RouterError::Busy) => break,
            Ok(_) => accepted += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut fed = 0;
    for f in feeders {
        fed += f.await.expect("feeder");
    }
    // Nothing in flight: under the always-admitted count again.
    h.router
        .try_send(1, text("after", Target::User(2), "x"))
        .await
        .expect("taken once the line is gone");
    assert_eq!(inbox(&store, 2, None).await.len(), fed + accepted + 1);
}

#[tokio::test]
async fn pages_share_one_budget_of_bytes_per_second() {
    // 80 KB of messages; a budget of 40 KB/s with a second's worth saved.
    let h = harness(RouterConfig {
        page_bytes_per_sec: 40_000,
        page_bytes: 10_000,
        ..RouterConfig::default()
    })
    .await;
    users(h.router.store(), &[1, 2]).await;
    for i in 0..8 {
        let body = "x".repeat(10_000);
        h.router
            .send(1, text(&format!("m{i}"), Target::User(2), &body))
            .await
            .expect("send");
    }
    // The first 40 KB come from what was saved up; each 10 KB page after
    // that waits a quarter of a second for the bucket to refill.
    let started = std::time::Instant::now();
    let mut after = Vec::new();
    let mut read = 0;
    loop {
        let page = h.router.sync(2, &after, 0).await.expect("sync");
        read += page.entries.len();
        after = page.next.map(|c| c.as_bytes().to_vec()).unwrap_or_default();
        if !page.has_more {
            break;
        }
    }
    assert_eq!(read, 8);
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(500),
        "80 KB read in {took:?} from a budget of 40 KB/s"
    );
}

#[tokio::test]
async fn live_pulls_do_not_wait_on_a_spent_page_budget() {
    let h = harness(RouterConfig {
        page_bytes_per_sec: 1_000,
        ..RouterConfig::default()
    })
    .await;
    users(h.router.store(), &[1, 2]).await;
    let body = "x".repeat(10_000);
    h.router
        .send(1, text("m", Target::User(2), &body))
        .await
        .expect("send");
    // A client's Sync spends ten seconds of the budget...
    let page = h.router.sync(2, &[], 0).await.expect("sync");
    assert_eq!(page.entries.len(), 1);
    // ...but a pull for live delivery reads at once.
    let pulled = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        h.router.pull(2, None, None),
    )
    .await
    .expect("a pull does not wait for the page budget")
    .expect("pull");
    assert_eq!(pulled.entries.len(), 1);
}
