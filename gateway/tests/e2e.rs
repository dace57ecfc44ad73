//! End to end, through the client library, against a real node on
//! 127.0.0.1:0, over every transport: TCP, TLS, and WebSocket and WSS with
//! binary and JSON messages.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod moving;

use std::time::Duration;

use hanmadi_client::{Deliveries, Event, ReconnectOptions, ReconnectingClient, Target};
use hanmadi_gateway::ServerOptions;
use hanmadi_proto::pb;
use hanmadi_proto::prost::Message as _;
use hanmadi_proto::websocket::Encoding;
use hanmadi_proto::ConversationId;

use common::Transport;

/// One test per transport for each scenario.
macro_rules! over_every_transport {
    ($($scenario:ident),* $(,)?) => {
        $(mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$scenario(Transport::Tcp).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$scenario(Transport::Tls).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ws() {
                super::$scenario(Transport::Ws(Encoding::Binary)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ws_json() {
                super::$scenario(Transport::Ws(Encoding::Json)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn wss() {
                super::$scenario(Transport::Wss(Encoding::Binary)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn wss_json() {
                super::$scenario(Transport::Wss(Encoding::Json)).await;
            }
        })*
    };
}

over_every_transport!(
    direct_message_reaches_every_device,
    group_message_reaches_each_device_once,
    offline_recipient_syncs_in_order,
    reconnects_hand_over_exactly_the_inbox,
);

/// The next `Deliver`, failing after 10 s.
async fn next_message(d: &mut Deliveries) -> (pb::Message, bytes::Bytes) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), d.recv())
            .await
            .expect("a delivery within 10 s")
            .expect("the connection is open");
        match event {
            Event::Deliver { message, cursor } => return (message, cursor),
            Event::Closed { error } => panic!("connection closed: {error:?}"),
            Event::Refused { .. } => {}
        }
    }
}

async fn direct_message_reaches_every_device(transport: Transport) {
    let node = common::start(ServerOptions::default()).await;
    node.user(1).await;
    node.user(2).await;
    let (alice, mut alice_d) = node.connect(1, "phone", transport).await;
    let (_alice2, mut alice2_d) = node.connect(1, "laptop", transport).await;
    let (_bob1, mut bob1_d) = node.connect(2, "phone", transport).await;
    let (_bob2, mut bob2_d) = node.connect(2, "laptop", transport).await;
    let ack = alice
        .send(Target::User(2), "hello bob")
        .await
        .expect("send");
    assert_eq!(ack.conversation, Some(ConversationId::direct(1, 2).into()));
    for d in [&mut bob1_d, &mut bob2_d, &mut alice2_d, &mut alice_d] {
        let (m, cursor) = next_message(d).await;
        assert_eq!(m.body, "hello bob");
        assert_eq!(m.message_id, ack.message_id);
        assert!(!cursor.is_empty());
    }
}

async fn group_message_reaches_each_device_once(transport: Transport) {
    let node = common::start(ServerOptions::default()).await;
    let members: Vec<u64> = (1..=50).collect();
    let group = node.group_of("fifty", &members).await;
    let mut conns = node.connect_each(&members, "d", transport).await;
    for i in 0..10 {
        conns[i % 50]
            .0
            .send(Target::Group(group), format!("message {i}"))
            .await
            .expect("send");
    }
    for (i, (_, d)) in conns.iter_mut().enumerate() {
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (m, _) = next_message(d).await;
            seen.push(m.body);
        }
        let want: Vec<String> = (0..10).map(|i| format!("message {i}")).collect();
        assert_eq!(
            seen,
            want,
            "member {} got each message once, in order",
            i + 1
        );
    }
    // Nothing more arrives: each message came exactly once. A last message
    // is the barrier (a `Pong` is not: replies may overtake queued
    // deliveries); deliveries come in commit order, so a duplicate of an
    // earlier message would arrive before it.
    conns[0]
        .0
        .send(Target::Group(group), "the end".to_owned())
        .await
        .expect("send");
    for (i, (_, d)) in conns.iter_mut().enumerate() {
        let (m, _) = next_message(d).await;
        assert_eq!(m.body, "the end", "member {} got an extra delivery", i + 1);
    }
}

async fn offline_recipient_syncs_in_order(transport: Transport) {
    let node = common::start(ServerOptions::default()).await;
    node.user(1).await;
    node.user(2).await;
    let (alice, _d) = node.connect(1, "phone", transport).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            alice
                .send(Target::User(2), format!("m{i}"))
                .await
                .expect("send")
                .message_id,
        );
    }
    let (bob, _bd) = node.connect(2, "phone", transport).await;
    let mut got = Vec::new();
    let mut after = bytes::Bytes::new();
    loop {
        let batch = bob.sync(&after, 7).await.expect("sync");
        got.extend(
            batch
                .messages
                .iter()
                .map(|d| d.message.as_ref().map_or(0, |m| m.message_id)),
        );
        after = batch.next;
        if !batch.has_more {
            break;
        }
    }
    assert_eq!(got, ids, "every message, in order");
}

/// While a sender streams 5,000 messages, the recipient's connection is
/// dropped 100 times at random points; the reconnect helper hands its user
/// exactly the recipient's inbox: no gap, no duplicate, no reorder.
async fn reconnects_hand_over_exactly_the_inbox(transport: Transport) {
    const MESSAGES: usize = 5000;
    let node = common::start_with_conn(hanmadi_gateway::conn::ConnConfig {
        rate_per_sec: 100_000,
        rate_burst: 100_000,
        ..Default::default()
    })
    .await;
    node.user(1).await;
    node.user(2).await;
    let (sender, mut sender_deliveries) = node.connect(1, "sender", Transport::Tcp).await;
    // The sender's own device is delivered its messages too: keep reading.
    let drain = tokio::spawn(async move { while sender_deliveries.recv().await.is_some() {} });
    let mut inbox = ReconnectingClient::start(
        node.client_config(2, "phone", transport),
        ReconnectOptions {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            ..ReconnectOptions::default()
        },
    )
    .await
    .expect("start");
    let send_task = tokio::spawn(async move {
        for i in 0..MESSAGES {
            sender
                .send(Target::User(2), format!("{i}"))
                .await
                .expect("send");
        }
    });
    let mut received: Vec<(u64, bytes::Bytes)> = Vec::new();
    let mut drops = 0;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next_drop = 20usize;
    while received.len() < MESSAGES {
        received.push(moving::next_entry(&mut inbox, Duration::from_secs(20)).await);
        if received.len() >= next_drop && drops < 100 {
            if let Some(c) = inbox.client() {
                c.close().await;
                drops += 1;
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            next_drop = received.len() + 1 + (rng % 90) as usize;
        }
    }
    send_task.await.expect("sender");
    drain.abort();
    assert!(drops >= 50, "only {drops} drops happened");
    let store = node.server.router().store();
    let mut want = Vec::new();
    let mut after = None;
    loop {
        let b = store.sync(2, after, 1000).await.expect("sync");
        for e in &b.entries {
            let m = pb::Message::decode(e.message.as_ref()).expect("decode");
            want.push((
                m.message_id,
                bytes::Bytes::copy_from_slice(e.cursor.as_bytes()),
            ));
        }
        after = b.next;
        if !b.has_more {
            break;
        }
    }
    assert_eq!(received.len(), want.len());
    assert!(
        received == want,
        "the handed-over sequence equals the inbox"
    );
}

/// Under group load, many frames share one socket write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_load_batches_frames_per_write() {
    let node = common::start(ServerOptions::default()).await;
    let members: Vec<u64> = (1..=20).collect();
    let group = node.group_of("busy", &members).await;
    let mut conns = node.connect_each(&members, "d", Transport::Tcp).await;
    let metrics = node.server.metrics();
    let (frames0, writes0) = (metrics.frames_out.get(), metrics.socket_writes.get());
    let mut tasks = Vec::new();
    for (c, _) in conns.iter().take(10) {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let sends: Vec<_> = (0..50)
                .map(|i| c.send(Target::Group(group), format!("{i}")))
                .collect();
            for r in futures::future::join_all(sends).await {
                r.expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    for (_, d) in conns.iter_mut() {
        for _ in 0..500 {
            next_message(d).await;
        }
    }
    let frames = metrics.frames_out.get() - frames0;
    let writes = metrics.socket_writes.get() - writes0;
    let per_write = frames as f64 / writes as f64;
    println!("frames {frames}, socket writes {writes}, {per_write:.1} frames per write");
    assert!(per_write >= 4.0, "{per_write:.1} frames per socket write");
}
