//! A recipient that stops reading while ten others chat, against a real
//! node: it is closed with the slow-consumer code, its queue stays bounded
//! meanwhile, and every other member receives every message. The tests
//! assert on what the server did, not on timings, so a busy machine
//! cannot fail them.

#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hanmadi_client::{Client, Event, Target};
use hanmadi_gateway::conn::ConnConfig;
use hanmadi_gateway::registry::RegistryLimits;
use hanmadi_gateway::ServerOptions;
use hanmadi_proto::pb;

/// Ten chatters send to their group at once, `rounds` times over.
async fn chat(clients: &[Client], group: u64, rounds: usize, body: &str) -> usize {
    for i in 0..rounds {
        let sends: Vec<_> = clients
            .iter()
            .map(|c| c.send(Target::Group(group), format!("{i}{body}")))
            .collect();
        for r in futures::future::join_all(sends).await {
            r.expect("send");
        }
    }
    rounds * clients.len()
}

/// `user` on a raw socket with a tiny receive buffer that reads its
/// `Welcome` and nothing more.
async fn not_reading(node: &common::Node, user: u64) -> common::Raw {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut raw = common::Raw::from_stream(
        sock.connect(node.server.tcp_addr().expect("tcp"))
            .await
            .expect("connect"),
    );
    common::assert_welcome(&raw.hello(&node.token(user)).await);
    raw
}

/// Whether `user` still has a connection on `node`, and the bytes queued
/// to its connections.
fn held(node: &common::Node, user: u64) -> (bool, usize) {
    let conns = node.server.registry().all();
    let mine: Vec<_> = conns.iter().filter(|c| c.user == user).collect();
    (
        !mine.is_empty(),
        mine.iter().map(|c| c.queued_bytes()).sum::<usize>(),
    )
}

/// Sends 16 KiB bodies to user 2 (at most 2,000) until its connections on
/// `node` are gone, checking after each that at most `max_queued` bytes
/// wait for them. Whether they went.
async fn sends_until_closed(node: &common::Node, sender: &Client, max_queued: usize) -> bool {
    let body = "x".repeat(16 * 1024);
    for _ in 0..2_000 {
        sender
            .send(Target::User(2), body.clone())
            .await
            .expect("send");
        let (open, queued) = held(node, 2);
        assert!(
            queued <= max_queued,
            "{queued} bytes queued, past {max_queued}"
        );
        if !open {
            return true;
        }
    }
    false
}

/// Options for a node with `registry` and `conn` whose senders are never
/// rate limited: only the outbound limits under test close connections.
fn unthrottled(registry: RegistryLimits, conn: ConnConfig) -> ServerOptions {
    ServerOptions {
        registry,
        conn: ConnConfig {
            rate_per_sec: 100_000,
            rate_burst: 100_000,
            ..conn
        },
        ..ServerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_others_get_everything() {
    let node = common::start(unthrottled(
        RegistryLimits {
            per_user: 16,
            per_ip: 1000,
            outbound_bytes: 64 * 1024,
            ..ServerOptions::default().registry
        },
        ConnConfig::default(),
    ))
    .await;
    let members: Vec<u64> = (1..=11).collect();
    let group = node.group_of("chat", &members).await;
    let chatters = node
        .connect_each(&members[..10], "d", common::Transport::Tcp)
        .await;
    // Drain the chatters' deliveries in the background, as live apps do,
    // counting them.
    let mut drains = Vec::new();
    let mut counts = Vec::new();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for (c, mut d) in chatters {
        clients.push(c);
        let count = Arc::new(AtomicUsize::new(0));
        counts.push(Arc::clone(&count));
        let arrived = Arc::clone(&arrived);
        drains.push(tokio::spawn(async move {
            while let Some(event) = d.recv().await {
                match event {
                    Event::Deliver { .. } => {
                        count.fetch_add(1, Ordering::Relaxed);
                        arrived.notify_one();
                    }
                    Event::Closed { .. } => panic!("a chatter was closed: {event:?}"),
                    _ => {}
                }
            }
        }));
    }
    let body = "x".repeat(1000);
    let mut sent = chat(&clients, group, 20, &body).await;

    let mut slow = not_reading(&node, 11).await;

    let mut closed_slow = false;
    for _ in 0..30 {
        sent += chat(&clients, group, 20, &body).await;
        let slow_queue: usize = node
            .server
            .registry()
            .all()
            .iter()
            .filter(|c| c.user == 11)
            .map(|c| c.queued_bytes())
            .sum();
        assert!(
            slow_queue <= 64 * 1024 + 4096,
            "the slow queue is bounded: {slow_queue}"
        );
        if node.server.registry().all().iter().all(|c| c.user != 11) {
            closed_slow = true;
            break;
        }
    }
    assert!(closed_slow, "the slow consumer was closed");
    // Now read what the slow one got: deliveries, then the close reason.
    let mut last = None;
    while let Some(f) = slow.recv().await {
        last = Some(f);
    }
    assert_eq!(
        last.as_ref().and_then(common::error_code),
        Some(pb::ErrorCode::SlowConsumer)
    );
    // And after it.
    sent += chat(&clients, group, 3, &body).await;

    // Every chatter gets every message (its own included), none dropped for
    // the slow one's sake.
    let all_arrived = async {
        while counts.iter().any(|c| c.load(Ordering::Relaxed) < sent) {
            arrived.notified().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), all_arrived)
        .await
        .is_err()
    {
        let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        panic!("sent {sent}, chatters received {got:?}");
    }
    assert!(
        counts.iter().all(|c| c.load(Ordering::Relaxed) == sent),
        "a delivery came twice"
    );
    for t in drains {
        t.abort();
    }
}

/// A reader that stops reading while its queue still has room: the socket
/// write that stalls is given up after the write timeout and the
/// connection closed, though the slow-consumer limit was never reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stalled_past_the_write_timeout_closes_the_connection() {
    const QUEUE_LIMIT: usize = 64 << 20;
    let node = common::start(unthrottled(
        RegistryLimits {
            outbound_bytes: QUEUE_LIMIT,
            ..ServerOptions::default().registry
        },
        ConnConfig {
            write_timeout: Duration::from_millis(300),
            ..ConnConfig::default()
        },
    ))
    .await;
    node.user(1).await;
    node.user(2).await;
    let (sender, _deliveries) = node.connect(1, "d", common::Transport::Tcp).await;
    let mut stalled = not_reading(&node, 2).await;
    // Until the socket's buffers are full and a write waits (a few MiB on
    // loopback); the queue never overflows.
    let mut closed = sends_until_closed(&node, &sender, QUEUE_LIMIT - 1).await;
    if !closed {
        // Everything is sent; the stalled write now runs out its time.
        let gone = async {
            while held(&node, 2).0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        closed = tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .is_ok();
    }
    assert!(closed, "the stalled connection was closed");
    // The close is quiet: deliveries, then the end of the stream, and no
    // error frame spliced into them.
    let mut last = None;
    while let Some(f) = stalled.recv().await {
        last = Some(f);
    }
    assert_eq!(last.as_ref().and_then(common::error_code), None);
    // The sender's connection is untouched.
    sender
        .send(Target::User(1), "still here")
        .await
        .expect("the sender still sends");
}

/// The same over WebSocket, whose writes go through the WebSocket layer's
/// own buffer: a recipient that stops reading is closed with the
/// slow-consumer code once its queue overflows, and its queue stays
/// bounded meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stops_reading_is_closed_as_a_slow_consumer() {
    use futures::{SinkExt as _, StreamExt as _};
    use hanmadi_proto::prost::Message as _;
    use tokio_tungstenite::tungstenite::Message;

    const QUEUE_LIMIT: usize = 64 * 1024;
    let node = common::start(unthrottled(
        RegistryLimits {
            outbound_bytes: QUEUE_LIMIT,
            ..ServerOptions::default().registry
        },
        ConnConfig::default(),
    ))
    .await;
    node.user(1).await;
    node.user(2).await;
    let (sender, _deliveries) = node.connect(1, "d", common::Transport::Tcp).await;
    let addr = node.server.http_addr().expect("http listener");
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = sock.connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("upgrade");
    let hello = pb::ClientFrame {
        req_id: 1,
        kind: Some(pb::client_frame::Kind::Hello(pb::Hello {
            token: node.token(2),
            device_id: "ws".into(),
        })),
    };
    ws.send(Message::Binary(hello.encode_to_vec().into()))
        .await
        .expect("hello");
    let frame = |m: Message| match m {
        Message::Binary(b) => Some(pb::ServerFrame::decode(b).expect("protobuf")),
        _ => None,
    };
    let welcome = ws.next().await.expect("a reply").expect("welcome");
    common::assert_welcome(&frame(welcome).expect("a binary frame"));
    let closed = sends_until_closed(&node, &sender, QUEUE_LIMIT + 32 * 1024).await;
    assert!(closed, "the slow WebSocket was closed");
    // Deliveries, then the close reason.
    let mut last = None;
    while let Some(Ok(m)) = ws.next().await {
        if let Some(f) = frame(m) {
            last = Some(f);
        }
    }
    assert_eq!(
        last.as_ref().and_then(common::error_code),
        Some(pb::ErrorCode::SlowConsumer)
    );
    sender
        .send(Target::User(1), "still here")
        .await
        .expect("the sender still sends");
}
