//! A recipient that stops reading while ten others chat, against a real
//! node. In a binary of its own: it compares latencies, so it should not
//! share the machine with the other end-to-end tests.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use hanmadi_client::{Client, Target};
use hanmadi_gateway::ServerOptions;
use hanmadi_proto::pb;

/// A recipient that stops reading while ten others chat is closed with the
/// slow-consumer code; the others keep their latency and the server's
/// queue for the slow one stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_others_keep_going() {
    let node = common::start(ServerOptions {
        registry: hanmadi_gateway::registry::RegistryLimits {
            per_user: 16,
            per_ip: 1000,
            outbound_bytes: 64 * 1024,
        },
        conn: hanmadi_gateway::conn::ConnConfig {
            rate_per_sec: 100_000,
            rate_burst: 100_000,
            ..Default::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let members: Vec<u64> = (1..=11).collect();
    let group = node.group_of("chat", &members).await;
    let chatters = node
        .connect_each(&members[..10], "d", common::Transport::Tcp)
        .await;
    // Drain the chatters' deliveries in the background, as live apps do.
    let mut drains = Vec::new();
    let mut clients = Vec::new();
    for (c, mut d) in chatters {
        clients.push(c);
        drains.push(tokio::spawn(
            async move { while d.recv().await.is_some() {} },
        ));
    }
    let body = "x".repeat(1000);
    // One round: 20 times, the ten chatters send at once; the send-to-ack
    // time of each.
    let round = |clients: Vec<Client>, body: String| async move {
        let mut lat = Vec::new();
        for i in 0..20 {
            let t0 = std::time::Instant::now();
            let sends: Vec<_> = clients
                .iter()
                .map(|c| c.send(Target::Group(group), format!("{i}{body}")))
                .collect();
            for r in futures::future::join_all(sends).await {
                r.expect("send");
            }
            lat.push(t0.elapsed());
        }
        (lat, clients)
    };
    let p99 = |mut lat: Vec<Duration>| {
        lat.sort();
        lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
    };
    // The baseline: the same chat before anyone stops reading.
    let mut before = Vec::new();
    for _ in 0..6 {
        let (lat, c) = round(clients, body.clone()).await;
        clients = c;
        before.extend(lat);
    }
    let baseline = p99(before);

    // The slow member: a raw socket with a tiny receive buffer that reads
    // its Welcome and nothing more.
    let slow_sock = tokio::net::TcpSocket::new_v4().expect("socket");
    slow_sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = common::Raw::from_stream(
        slow_sock
            .connect(node.server.tcp_addr().expect("tcp"))
            .await
            .expect("connect"),
    );
    let w = slow.hello(&node.token(11)).await;
    common::assert_welcome(&w);

    let mut during = Vec::new();
    let mut closed_slow = false;
    for _ in 0..30 {
        let (lat, c) = round(clients, body.clone()).await;
        clients = c;
        during.extend(lat);
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
    // Until it was closed, and a little after.
    for _ in 0..3 {
        let (lat, c) = round(clients, body.clone()).await;
        clients = c;
        during.extend(lat);
    }
    let with_slow = p99(during);
    println!("p99 of the others: baseline {baseline:?}, with a slow reader {with_slow:?}");
    // 2 ms absorbs timer and scheduler granularity on a busy test machine.
    assert!(
        with_slow <= baseline * 2 + Duration::from_millis(2),
        "others slowed down: baseline {baseline:?}, with a slow reader {with_slow:?}"
    );
    for t in drains {
        t.abort();
    }
}
