//! Several nodes on one store, in one process, on the simulated engine with
//! FoundationDB's semantics and injected faults: node ids come from leases,
//! discovery lists the live nodes, a drained node gives its id up, a node
//! whose id is taken stops; messages, long-polls and account deletions
//! reach users on every node, over the node-to-node link or, when it loses
//! them, through the change feed; strangers on the link's port are closed.

#![allow(clippy::unwrap_used)]

mod moving;

use std::time::Duration;

use hanmadi_gateway::cluster::LeaseTiming;
use hanmadi_gateway::{Listeners, Server, ServerOptions};
use hanmadi_storage::chat::{DueFrom, NodeRecord};
use hanmadi_storage::sim::{SimKv, SimOptions};
use hanmadi_storage::{ChatStore, StoreConfig};
use serde_json::Value;
use tokio::net::TcpListener;

const TIMING: LeaseTiming = LeaseTiming {
    expiry: Duration::from_secs(3),
    renew_every: Duration::from_millis(100),
};

fn store(seed: u64) -> ChatStore<SimKv> {
    ChatStore::new(
        SimKv::new(SimOptions::faulty(seed)),
        StoreConfig::for_cluster(),
    )
}

/// A node on `store` with its id from a lease, as `hanmadi serve --store
/// fdb` starts one.
async fn node(store: &ChatStore<SimKv>, name: &str) -> Server<SimKv> {
    node_timed(store, name, TIMING).await
}

async fn node_timed(store: &ChatStore<SimKv>, name: &str, timing: LeaseTiming) -> Server<SimKv> {
    node_with(store, name, timing, Duration::from_secs(60), "local").await
}

/// A node in `region` whose change-feed backstop runs every `backstop`.
async fn node_with(
    store: &ChatStore<SimKv>,
    name: &str,
    timing: LeaseTiming,
    backstop: Duration,
    region: &str,
) -> Server<SimKv> {
    let record = NodeRecord {
        hostname: name.to_owned(),
        region: region.to_owned(),
        ..NodeRecord::default()
    };
    let lease = hanmadi_gateway::cluster::join(store, &record, TIMING)
        .await
        .unwrap();
    Server::start(
        store.clone(),
        Listeners {
            tcp: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            http: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            link: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            ..Listeners::default()
        },
        ServerOptions {
            secret: b"cluster test secret, thirty-two bytes+".to_vec(),
            hostname: Some(name.to_owned()),
            region: region.to_owned(),
            cluster: Some((lease, timing)),
            cluster_backstop: backstop,
            conn: hanmadi_gateway::conn::ConnConfig {
                rate_per_sec: 100_000,
                rate_burst: 100_000,
                ..Default::default()
            },
            ..ServerOptions::default()
        },
    )
}

async fn discovery(server: &Server<SimKv>) -> Vec<(u64, String)> {
    let url = format!("http://{}/v1/discovery", server.http_addr().unwrap());
    let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let mut nodes: Vec<(u64, String)> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let id = n["node_id"].as_str().unwrap().parse().unwrap();
            (id, n["hostname"].as_str().unwrap().to_owned())
        })
        .collect();
    nodes.sort();
    nodes
}

/// Asks `server`'s discovery until it lists exactly `want`, within a
/// deadline (registrations are written by each node's renewal task).
async fn until_discovery(server: &Server<SimKv>, want: &[(u64, &str)]) {
    let want: Vec<(u64, String)> = want.iter().map(|(i, n)| (*i, (*n).to_owned())).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = discovery(server).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "discovery lists {got:?}, not {want:?}"
        );
        tokio::time::sleep(TIMING.renew_every).await;
    }
}

/// A store configured for a cluster commits its conversations side by
/// side; only a cluster node's delivery keeps each connection's entries in
/// order, so a server without one refuses to start on it.
#[tokio::test]
#[should_panic(expected = "a store split by conversation needs ServerOptions::cluster")]
async fn a_cluster_store_without_cluster_options_is_refused() {
    let _ = Server::start(store(22), Listeners::default(), ServerOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_take_distinct_ids_and_discovery_lists_the_live_ones() {
    let store = store(1);
    let a = node(&store, "node-a").await;
    let b = node(&store, "node-b").await;
    let c = node(&store, "node-c").await;
    let ids: Vec<u16> = [&a, &b, &c]
        .iter()
        .map(|n| n.router().ids().node())
        .collect();
    assert_eq!(ids, [0, 1, 2], "each node its own id, lowest free first");
    until_discovery(&a, &[(0, "node-a"), (1, "node-b"), (2, "node-c")]).await;
    until_discovery(&c, &[(0, "node-a"), (1, "node-b"), (2, "node-c")]).await;

    // A drained node gives its id up: discovery drops it at once, and the
    // next node to start takes the freed id.
    b.shutdown().await;
    until_discovery(&a, &[(0, "node-a"), (2, "node-c")]).await;
    let d = node(&store, "node-d").await;
    assert_eq!(d.router().ids().node(), 1);
    until_discovery(&c, &[(0, "node-a"), (1, "node-d"), (2, "node-c")]).await;
}

/// Discovery ranks live nodes for the client: its own region first, then
/// the most free capacity (the connection counts each node publishes at
/// renewal); a node that dies without giving its id up is dropped once its
/// lease lapses. Real nodes, each with its own lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_ranks_live_nodes_region_first_then_free_capacity() {
    let store = store(9);
    let far = Duration::from_secs(60);
    let eu = node_with(&store, "node-eu", TIMING, far, "eu").await;
    let _us = node_with(&store, "node-us", TIMING, far, "us").await;
    let busy = node_with(&store, "node-us-busy", TIMING, far, "us").await;
    // A node on a runtime of its own, to be killed: its tasks stop at once,
    // with no drain and no release of its lease.
    let (doomed, doomed_runtime) = {
        let store = store.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let node = runtime.block_on(node_with(&store, "node-doomed", TIMING, far, "eu"));
            (node, runtime)
        })
        .join()
        .unwrap()
    };
    users(&store, [31, 32]).await;
    let _held = [connect(&busy, 31, "d").await, connect(&busy, 32, "d").await];
    // (host name, connections) as `eu`'s discovery ranks them for `query`.
    let ranked = |query: &'static str| {
        let url = format!("http://{}/v1/discovery{query}", eu.http_addr().unwrap());
        async move {
            let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            body["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    let name = n["hostname"].as_str().unwrap().to_owned();
                    (name, n["connections"].as_u64().unwrap())
                })
                .collect::<Vec<(String, u64)>>()
        }
    };
    let names = |l: &[(String, u64)]| l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    // Asks until `done` holds, within 10 s (renewals publish the counts).
    let until = |query: &'static str, done: fn(&[(String, u64)]) -> bool| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listed = ranked(query).await;
            if done(&listed) {
                return listed;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "discovery{query} lists {listed:?}"
            );
            tokio::time::sleep(TIMING.renew_every).await;
        }
    };
    let all = until("", |l| {
        l.len() == 4 && l.iter().any(|(n, c)| n == "node-us-busy" && *c == 2)
    })
    .await;
    assert_eq!(
        names(&all).last().map(String::as_str),
        Some("node-us-busy"),
        "{all:?}"
    );
    let in_us = ranked("?region=us").await;
    assert_eq!(names(&in_us)[..2], ["node-us", "node-us-busy"]);
    // Two idle nodes in eu: both first, in either order.
    let mut in_eu = names(&ranked("?region=eu").await[..2]);
    in_eu.sort();
    assert_eq!(in_eu, ["node-doomed", "node-eu"]);

    doomed_runtime.shutdown_background();
    drop(doomed);
    let after = until("?region=eu", |l| l.len() == 3).await;
    assert_eq!(names(&after), ["node-eu", "node-us", "node-us-busy"]);
}

/// Takes the lowest lapsed id, as a node would after `store`'s holders
/// paused for an hour.
async fn take_over(store: &ChatStore<SimKv>) -> hanmadi_storage::chat::NodeLease {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let record = NodeRecord {
        hostname: "usurper".to_owned(),
        ..NodeRecord::default()
    };
    store
        .acquire_node(&record, now + 3_600_000, TIMING.expiry)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_id_is_taken_stores_nothing_more() {
    let store = store(3);
    // Renewals far apart: the node has not noticed the take-over when it
    // is asked to store a message.
    let slow = LeaseTiming {
        expiry: Duration::from_secs(600),
        renew_every: Duration::from_secs(300),
    };
    let a = node_timed(&store, "node-a", slow).await;
    for (id, name) in [(10, "ten"), (11, "eleven")] {
        let user = hanmadi_storage::chat::UserRecord {
            username: name.to_owned(),
            ..Default::default()
        };
        store.create_user(id, &user).await.unwrap();
    }
    let token = a.auth().issue(10, common_now(), Duration::from_secs(3600));
    let config = hanmadi_client::ClientConfig::new(a.tcp_addr().unwrap().to_string(), token, "d");
    let (client, _events) = hanmadi_client::Client::connect(config).await.unwrap();
    client
        .send(hanmadi_client::Target::User(11), "before the take-over")
        .await
        .expect("stored while the lease holds");

    let taken = take_over(&store).await;
    assert_eq!(taken.node_id, 0);
    let refused = client
        .send(hanmadi_client::Target::User(11), "after the take-over")
        .await
        .unwrap_err();
    let code = refused.server_error().and_then(|e| e.error_code());
    assert_eq!(
        code,
        Some(hanmadi_proto::ErrorCode::ServerDraining),
        "{refused}"
    );
    let conv = hanmadi_proto::ConversationId::direct(10, 11);
    let page = store.history(conv, None, u64::MAX, 10).await.unwrap();
    let bodies: Vec<String> = page
        .messages
        .iter()
        .map(|m| {
            use hanmadi_proto::prost::Message as _;
            hanmadi_proto::pb::Message::decode(m.clone()).unwrap().body
        })
        .collect();
    assert_eq!(
        bodies,
        ["before the take-over"],
        "nothing stored under a lost id"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_id_is_taken_stops() {
    let store = store(2);
    let a = node(&store, "node-a").await;
    until_discovery(&a, &[(0, "node-a")]).await;
    // Another node finds a's lease lapsed (as after a long pause) and takes
    // the id; a's next renewal finds out, and a stops.
    assert_eq!(take_over(&store).await.node_id, 0);
    tokio::time::timeout(Duration::from_secs(10), a.lease_lost().cancelled())
        .await
        .expect("the node notices it lost its id");
    a.shutdown().await;
}

fn common_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Three nodes on one faulty store, each linked to the other two.
async fn three_linked(seed: u64, backstop: Duration) -> (ChatStore<SimKv>, Vec<Server<SimKv>>) {
    let store = store(seed);
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        nodes.push(node_with(&store, name, TIMING, backstop, "local").await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (i, n) in nodes.iter().enumerate() {
        let want: Vec<u64> = (0..3).filter(|&j| j != i as u64).collect();
        let links = n.links().unwrap();
        if tokio::time::timeout_at(deadline, links.wait_open(|open| open == want))
            .await
            .is_err()
        {
            panic!("node {i} has links to {:?}, not {want:?}", links.open_to());
        }
    }
    (store, nodes)
}

async fn users(store: &ChatStore<SimKv>, ids: impl IntoIterator<Item = u64>) {
    for id in ids {
        let user = hanmadi_storage::chat::UserRecord {
            username: format!("user{id}"),
            ..Default::default()
        };
        store.create_user(id, &user).await.unwrap();
    }
}

async fn connect(
    node: &Server<SimKv>,
    user: u64,
    device: &str,
) -> (hanmadi_client::Client, hanmadi_client::Deliveries) {
    let token = node
        .auth()
        .issue(user, common_now(), Duration::from_secs(3600));
    let config =
        hanmadi_client::ClientConfig::new(node.tcp_addr().unwrap().to_string(), token, device);
    hanmadi_client::Client::connect(config).await.unwrap()
}

/// The next `n` text messages `deliveries` gets, each within `within`.
async fn texts(
    deliveries: &mut hanmadi_client::Deliveries,
    n: usize,
    within: Duration,
) -> Vec<hanmadi_proto::pb::Message> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(within, deliveries.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", out.len()))
            .expect("connection open");
        match event {
            hanmadi_client::Event::Deliver { message, .. }
                if message.kind == hanmadi_proto::pb::MessageKind::Text as i32 =>
            {
                out.push(message);
            }
            hanmadi_client::Event::Deliver { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

async fn shutdown_all(nodes: Vec<Server<SimKv>>) {
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_chat_live() {
    // The feed's backstop is a minute away: what arrives within the
    // test's seconds came over the link.
    let (store, nodes) = three_linked(20, Duration::from_secs(60)).await;
    users(&store, [101, 102]).await;
    let (alice, mut alice_in) = connect(&nodes[0], 101, "phone").await;
    let (bob, mut bob_in) = connect(&nodes[1], 102, "phone").await;
    alice
        .send(hanmadi_client::Target::User(102), "hi bob, from node a")
        .await
        .unwrap();
    let got = texts(&mut bob_in, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].body, "hi bob, from node a");
    bob.send(hanmadi_client::Target::User(101), "hi alice, from node b")
        .await
        .unwrap();
    // Alice's own device gets her message too, then Bob's, in order.
    let got = texts(&mut alice_in, 2, Duration::from_secs(5)).await;
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["hi bob, from node a", "hi alice, from node b"]);
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_one_node_get_its_commits_without_reading_their_inboxes() {
    // A healthy store: a conflict or an unknown result would rightly turn
    // deliveries into pulls.
    let store = ChatStore::new(
        SimKv::new(SimOptions::healthy()),
        StoreConfig::for_cluster(),
    );
    // The change feed is read every 20 ms: its entries for these commits
    // must not make the connections read what they were handed.
    let a = node_with(&store, "node-a", TIMING, Duration::from_millis(20), "local").await;
    users(&store, [111, 112]).await;
    let (alice, mut alice_in) = connect(&a, 111, "phone").await;
    let (bob, mut bob_in) = connect(&a, 112, "phone").await;
    let pulls_before = a.metrics().inbox_pulls.get();
    let feed_before = a.metrics().feed_entries.get();
    let mut sent = Vec::new();
    for i in 0..20 {
        let (from, to) = if i % 2 == 0 {
            (&alice, 112)
        } else {
            (&bob, 111)
        };
        let body = format!("message {i}");
        from.send(hanmadi_client::Target::User(to), &body)
            .await
            .unwrap();
        sent.push(body);
        // The feed's entry for this commit is read before the next one,
        // while this message is each connection's last.
        until_feed_read(&a, feed_before + i + 1).await;
    }
    // Each device gets every message of the conversation, in order.
    for inbox in [&mut alice_in, &mut bob_in] {
        let got = texts(inbox, 20, Duration::from_secs(5)).await;
        let bodies: Vec<&String> = got.iter().map(|m| &m.body).collect();
        assert_eq!(bodies, sent.iter().collect::<Vec<_>>());
    }
    // One more message to each, queued behind any read the feed's last
    // entry asked for.
    alice
        .send(hanmadi_client::Target::User(112), "last")
        .await
        .unwrap();
    for inbox in [&mut alice_in, &mut bob_in] {
        let got = texts(inbox, 1, Duration::from_secs(5)).await;
        assert_eq!(got[0].body, "last");
    }
    // Forty-two deliveries, each handed over with the entry before it: a
    // connection reads its inbox only for one it missed (without the
    // chain, every one is a read; with the feed's entries reading through
    // their commits' ends, nearly every one too).
    let pulls = a.metrics().inbox_pulls.get() - pulls_before;
    assert!(pulls <= 4, "{pulls} inbox reads for 42 deliveries");
    a.shutdown().await;
}

/// Two nodes on a healthy store (a conflict would rightly turn chained
/// deliveries into pulls), the feed's backstop a minute away, once each
/// has its link to the other open.
async fn two_linked_nodes() -> (ChatStore<SimKv>, Vec<Server<SimKv>>) {
    let store = ChatStore::new(
        SimKv::new(SimOptions::healthy()),
        StoreConfig::for_cluster(),
    );
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        nodes.push(node_with(&store, name, TIMING, Duration::from_secs(60), "local").await);
    }
    let linked = async {
        for n in &nodes {
            n.links().unwrap().wait_open(|open| !open.is_empty()).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), linked)
        .await
        .expect("nodes not linked");
    (store, nodes)
}

/// Strangers on the node-to-node port: bytes that are no hello, a length
/// past the link's frame limit, a hello whose proof was made without the
/// cluster's secret, and silence. Each is closed (silence at the handshake
/// deadline, 5 s), none counts as a link, and the two nodes stay linked:
/// a message between them still arrives live, with the change feed's
/// backstop a minute away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_link_closes_strangers_and_stays_up_between_peers() {
    use hanmadi_gateway::cluster::link::{LinkHello, LinkProof};
    use prost::Message as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }
    let (store, nodes) = two_linked_nodes().await;
    let link = nodes[0].link_addr().unwrap();
    let hello = LinkHello {
        node_id: 4242,
        epoch: 1,
        nonce: vec![7; 32],
    }
    .encode_to_vec();
    let forged = [
        frame(&hello),
        frame(&LinkProof { mac: vec![0; 32] }.encode_to_vec()),
    ]
    .concat();
    let strangers = [
        ("no hello", frame(b"\xff\xff\xff")),
        ("too long", [&u32::MAX.to_be_bytes()[..], b"xx"].concat()),
        ("forged proof", forged),
        ("silence", Vec::new()),
    ];
    let closed = strangers.into_iter().map(|(what, bytes)| async move {
        let mut stream = tokio::net::TcpStream::connect(link).await.unwrap();
        if let Err(e) = stream.write_all(&bytes).await {
            // Closed before the bytes went out: refused all the same.
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{what}: {e}"
            );
            return;
        }
        // The node's own hello (and, to a forger, its proof) come first;
        // then the end of the stream, or a reset.
        let mut seen = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut seen))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after 10 s"));
        if let Err(e) = end {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}");
        }
    });
    futures::future::join_all(closed).await;
    assert_eq!(nodes[0].metrics().cluster_links_refused.get(), 4);
    for n in &nodes {
        assert_eq!(n.links().unwrap().open_to().len(), 1, "only the peer");
    }

    users(&store, [111, 112]).await;
    let (alice, _alice_in) = connect(&nodes[0], 111, "phone").await;
    let (_bob, mut bob_in) = connect(&nodes[1], 112, "phone").await;
    alice
        .send(hanmadi_client::Target::User(112), "after the strangers")
        .await
        .unwrap();
    let got = texts(&mut bob_in, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].body, "after the strangers");
    shutdown_all(nodes).await;
}

/// Handshakes in progress on the link port are capped: with 64 silent
/// strangers waiting out their 5 s deadline, a 65th is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_link_caps_handshakes_in_progress() {
    use tokio::io::AsyncReadExt as _;

    let (_store, nodes) = two_linked_nodes().await;
    let link = nodes[0].link_addr().unwrap();
    let before = nodes[0].metrics().cluster_links_refused.get();
    let opened = tokio::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(tokio::net::TcpStream::connect(link).await.unwrap());
    }
    let mut last = tokio::net::TcpStream::connect(link).await.unwrap();
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(4), last.read_to_end(&mut seen))
        .await
        .expect("the 65th handshake still open");
    if let Err(e) = ended {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(seen.is_empty(), "refused before the node's hello");
    // Only the 65th so far: the 64 are within their deadline (unless a
    // loaded machine took most of it to get here).
    if opened.elapsed() < Duration::from_secs(4) {
        assert_eq!(nodes[0].metrics().cluster_links_refused.get(), before + 1);
    }
    drop(silent);
    shutdown_all(nodes).await;
}

/// A stranger without the secret connects to both nodes' link ports and
/// relays each node's bytes to the other: each node's hello and proof
/// reach the other as if from a dialer. Both refuse (a proof names its
/// sender's role, and both sent an acceptor's), so the stranger never
/// stands for either node, and the real link between them stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_relaying_two_nodes_handshakes_is_refused_by_both() {
    let (store, nodes) = two_linked_nodes().await;
    let refused = |n: &Server<SimKv>| n.metrics().cluster_links_refused.get();
    let refused_before: Vec<u64> = nodes.iter().map(refused).collect();
    let mut to_a = tokio::net::TcpStream::connect(nodes[0].link_addr().unwrap())
        .await
        .unwrap();
    let mut to_b = tokio::net::TcpStream::connect(nodes[1].link_addr().unwrap())
        .await
        .unwrap();
    let relayed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::copy_bidirectional(&mut to_a, &mut to_b),
    )
    .await
    .expect("a relayed handshake still open after 10 s");
    // Ended by the nodes' closes (or resets); each counted its refusal
    // before it closed.
    drop(relayed);
    for (n, before) in nodes.iter().zip(refused_before) {
        assert_eq!(refused(n), before + 1, "the relayed handshake refused");
        assert_eq!(n.links().unwrap().open_to().len(), 1, "only the peer");
    }
    users(&store, [113, 114]).await;
    let (alice, _alice_in) = connect(&nodes[0], 113, "phone").await;
    let (_bob, mut bob_in) = connect(&nodes[1], 114, "phone").await;
    alice
        .send(hanmadi_client::Target::User(114), "after the relay")
        .await
        .unwrap();
    let got = texts(&mut bob_in, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].body, "after the relay");
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_get_each_others_commits_without_reading_their_inboxes() {
    let (store, nodes) = two_linked_nodes().await;
    users(&store, [121, 122]).await;
    let (alice, mut alice_in) = connect(&nodes[0], 121, "phone").await;
    let (bob, mut bob_in) = connect(&nodes[1], 122, "phone").await;
    let pulls = |nodes: &[Server<SimKv>]| -> u64 {
        nodes.iter().map(|n| n.metrics().inbox_pulls.get()).sum()
    };
    let pulls_before = pulls(&nodes);
    let mut sent = Vec::new();
    for i in 0..20 {
        let (from, to) = if i % 2 == 0 {
            (&alice, 122)
        } else {
            (&bob, 121)
        };
        let body = format!("message {i}");
        from.send(hanmadi_client::Target::User(to), &body)
            .await
            .unwrap();
        sent.push(body);
    }
    for inbox in [&mut alice_in, &mut bob_in] {
        let got = texts(inbox, 20, Duration::from_secs(5)).await;
        let bodies: Vec<&String> = got.iter().map(|m| &m.body).collect();
        assert_eq!(bodies, sent.iter().collect::<Vec<_>>());
    }
    // Each message reached the other node over the link with the entry
    // before it, so neither node read an inbox for it (a notice to pull,
    // as before, is a read per message of the other node's).
    let pulls = pulls(&nodes) - pulls_before;
    assert!(pulls <= 4, "{pulls} inbox reads for 40 deliveries");
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_leaves_another_node_is_offline_at_once() {
    // Presence cached for a user is read again only after 15–30 s: what
    // makes Bob offline on node a is node b's word over the link when he
    // leaves. Offline, a message to him is marked for a push.
    let (store, nodes) = two_linked_nodes().await;
    users(&store, [131, 132]).await;
    let (alice, _alice_in) = connect(&nodes[0], 131, "phone").await;
    let (bob, mut bob_in) = connect(&nodes[1], 132, "phone").await;
    alice
        .send(hanmadi_client::Target::User(132), "while online")
        .await
        .unwrap();
    assert_eq!(
        texts(&mut bob_in, 1, Duration::from_secs(5)).await[0].body,
        "while online"
    );
    drop((bob, bob_in));
    // Marks of messages sent from now on (the first message may have
    // been marked: node a had not looked Bob up yet).
    let left = common_now();
    let marked = |store: ChatStore<SimKv>| async move {
        let from = DueFrom {
            pending: left,
            scheduled: 0,
        };
        let due = store.due_pushes(from, u64::MAX / 2, 0, 1000).await.unwrap();
        due.iter().any(|d| d.user == 132)
    };
    // The departure crosses the link at once; the rest is room for a
    // loaded machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while !marked(store.clone()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Bob still counts as online on node a after he left node b"
        );
        alice
            .send(hanmadi_client::Target::User(132), &format!("after {i}"))
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown_all(nodes).await;
}

/// Waits until `node` has read `entries` change-feed entries in all.
async fn until_feed_read(node: &Server<SimKv>, entries: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.metrics().feed_entries.get() < entries {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change feed was not read"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_is_linked_before_the_next_read_of_the_registrations() {
    // Registrations are read a minute apart and the feed's backstop is a
    // minute away. Node a holds the lower id, so it dials; it read the
    // registrations before b joined. Bob's presence entry names b, which
    // a does not know yet: a reads the registrations again at once and
    // links to b, and its next notice reaches b over the link.
    let slow = LeaseTiming {
        expiry: Duration::from_secs(120),
        renew_every: Duration::from_secs(60),
    };
    let store = store(26);
    let a = node_with(&store, "node-a", slow, Duration::from_secs(60), "local").await;
    let b = node_with(&store, "node-b", slow, Duration::from_secs(60), "local").await;
    users(&store, [261, 262]).await;
    let (alice, _alice_in) = connect(&a, 261, "phone").await;
    let (_bob, mut bob_in) = connect(&b, 262, "phone").await;
    alice
        .send(hanmadi_client::Target::User(262), "first")
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        a.links().unwrap().wait_open(|open| !open.is_empty()),
    )
    .await
    .expect("node a never linked to the node that joined after it");
    alice
        .send(hanmadi_client::Target::User(262), "second")
        .await
        .unwrap();
    let got = texts(&mut bob_in, 2, Duration::from_secs(5)).await;
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["first", "second"]);
    shutdown_all(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spread_over_three_nodes_gets_each_message_once_in_order() {
    const MEMBERS: u64 = 50;
    const SENDERS: u64 = 5;
    const EACH: usize = 10;
    let (store, nodes) = three_linked(21, Duration::from_secs(60)).await;
    let members: Vec<u64> = (200..200 + MEMBERS).collect();
    users(&store, members.iter().copied()).await;
    let (group, _) = nodes[0]
        .router()
        .create_group(members[0], "spread".into(), members[1..].to_vec())
        .await
        .unwrap();
    let mut conns = Vec::new();
    for (i, &m) in members.iter().enumerate() {
        conns.push(connect(&nodes[i % 3], m, "d").await);
    }
    // A device of one user on two nodes at once gets both streams whole.
    let (_second, second_in) = connect(&nodes[1], members[0], "tablet").await;
    let sends = (0..SENDERS as usize).map(|s| {
        let client = conns[s * 7].0.clone();
        async move {
            for i in 0..EACH {
                client
                    .send(hanmadi_client::Target::Group(group), format!("{s}:{i}"))
                    .await
                    .unwrap();
            }
        }
    });
    futures::future::join_all(sends).await;
    let total = SENDERS as usize * EACH;
    // The clients stay open while their deliveries are read.
    let (_clients, mut streams): (Vec<_>, Vec<_>) = conns.into_iter().unzip();
    streams.push(second_in);
    let mut first: Option<Vec<u64>> = None;
    for (i, deliveries) in streams.iter_mut().enumerate() {
        let got = texts(deliveries, total, Duration::from_secs(10)).await;
        let ids: Vec<u64> = got.iter().map(|m| m.message_id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "device {i}: in commit order, once each"
        );
        match &first {
            None => first = Some(ids),
            Some(want) => assert_eq!(&ids, want, "device {i} got another sequence"),
        }
    }
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_link_notifications_arrive_through_the_change_feed() {
    const BACKSTOP: Duration = Duration::from_millis(200);
    let (store, nodes) = three_linked(22, BACKSTOP).await;
    users(&store, [301, 302]).await;
    for n in &nodes {
        n.links().unwrap().set_muted(true);
    }
    let (alice, _alice_in) = connect(&nodes[0], 301, "phone").await;
    let (_bob, mut bob_in) = connect(&nodes[2], 302, "phone").await;
    for i in 0..20 {
        let sent = tokio::time::Instant::now();
        alice
            .send(hanmadi_client::Target::User(302), format!("{i}"))
            .await
            .unwrap();
        // Within the backstop plus the feed read and the pull, with room
        // for a loaded machine.
        let got = texts(&mut bob_in, 1, BACKSTOP * 25).await;
        assert_eq!(got[0].body, format!("{i}"));
        assert!(sent.elapsed() < BACKSTOP * 25);
    }
    let (_, dropped) = nodes[0].links().unwrap().counts();
    assert!(dropped > 0, "the link carried nothing");
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_node_wakes_for_a_commit_through_another() {
    let (store, nodes) = three_linked(23, Duration::from_secs(60)).await;
    users(&store, [401, 402]).await;
    let token = nodes[1]
        .auth()
        .issue(402, common_now(), Duration::from_secs(3600));
    let url = format!(
        "http://{}/v1/sync?wait_ms=20000",
        nodes[1].http_addr().unwrap()
    );
    let poll = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let body: Value = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (started.elapsed(), body)
    });
    let (alice, _in) = connect(&nodes[0], 401, "phone").await;
    // The poll is waiting once the presence index names node b for 402.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.presence(402).await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poll never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    alice
        .send(hanmadi_client::Target::User(402), "wake up")
        .await
        .unwrap();
    let (waited, body) = poll.await.unwrap();
    let entries = body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(entries.len(), 1, "{body}");
    assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    shutdown_all(nodes).await;
}

/// Waits until `deliveries` says its connection closed.
async fn closed_within_5s(deliveries: &mut hanmadi_client::Deliveries, what: &str) {
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match deliveries.recv().await {
                Some(hanmadi_client::Event::Closed { .. }) | None => return,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: a socket stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_or_logging_out_an_account_closes_its_sockets_on_every_node() {
    let (store, nodes) = three_linked(24, Duration::from_secs(60)).await;
    users(&store, [501, 502]).await;
    let (_b, mut on_b) = connect(&nodes[1], 501, "phone").await;
    let (_c, mut on_c) = connect(&nodes[2], 501, "laptop").await;
    nodes[0].router().delete_user(501).await.unwrap();
    closed_within_5s(&mut on_b, "deleted").await;
    closed_within_5s(&mut on_c, "deleted").await;
    // Logging out everywhere through one node closes them the same way.
    let (_b, mut on_b) = connect(&nodes[1], 502, "phone").await;
    let (_c, mut on_c) = connect(&nodes[2], 502, "laptop").await;
    nodes[0].router().revoke_tokens(502).await.unwrap();
    closed_within_5s(&mut on_b, "logged out").await;
    closed_within_5s(&mut on_c, "logged out").await;
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moved_between_nodes_fifty_times_gets_exactly_its_inbox() {
    use hanmadi_client::{Endpoints, ReconnectOptions, ReconnectingClient};
    const MESSAGES: usize = 2000;
    let (store, nodes) = three_linked(25, Duration::from_millis(500)).await;
    users(&store, [601, 602, 603]).await;
    let (a_sender, _a_in) = connect(&nodes[0], 601, "d").await;
    let (b_sender, _b_in) = connect(&nodes[1], 602, "d").await;
    let token = nodes[0]
        .auth()
        .issue(603, common_now(), Duration::from_secs(3600));
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| n.tcp_addr().unwrap().to_string())
        .collect();
    let config = hanmadi_client::ClientConfig::new(addrs[2].clone(), token, "phone");
    let mut inbox = ReconnectingClient::start(
        config,
        ReconnectOptions {
            endpoints: Some(Endpoints::list(addrs)),
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            ..ReconnectOptions::default()
        },
    )
    .await
    .unwrap();
    let send = |client: hanmadi_client::Client, tag: &'static str| {
        tokio::spawn(async move {
            for i in 0..MESSAGES / 2 {
                client
                    .send(hanmadi_client::Target::User(603), format!("{tag}{i}"))
                    .await
                    .unwrap();
            }
        })
    };
    let senders = [send(a_sender, "a"), send(b_sender, "b")];
    let received = moving::read_while_moving(&mut inbox, MESSAGES, 50).await;
    for s in senders {
        s.await.unwrap();
    }
    let mut want = Vec::new();
    let mut after = None;
    loop {
        let page = store.sync(603, after, 1000).await.unwrap();
        for e in &page.entries {
            use hanmadi_proto::prost::Message as _;
            let m = hanmadi_proto::pb::Message::decode(e.message.as_ref()).unwrap();
            want.push((
                m.message_id,
                bytes::Bytes::copy_from_slice(e.cursor.as_bytes()),
            ));
        }
        after = page.next;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(received.len(), want.len());
    assert!(received == want, "what it handed over equals the inbox");
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_through_one_node_stops_receiving_on_all() {
    let (store, nodes) = three_linked(26, Duration::from_secs(60)).await;
    users(&store, [701, 702, 703]).await;
    let (group, _) = nodes[0]
        .router()
        .create_group(701, "g".into(), vec![702, 703])
        .await
        .unwrap();
    let (owner, _owner_in) = connect(&nodes[0], 701, "d").await;
    let (_removed, mut removed_in) = connect(&nodes[1], 702, "d").await;
    owner
        .send(hanmadi_client::Target::Group(group), "before")
        .await
        .unwrap();
    assert_eq!(
        texts(&mut removed_in, 1, Duration::from_secs(5)).await[0].body,
        "before"
    );
    nodes[2]
        .router()
        .remove_member(701, group, 702)
        .await
        .unwrap();
    owner
        .send(hanmadi_client::Target::Group(group), "after")
        .await
        .unwrap();
    // A direct message committed after "after": had "after" reached the
    // removed member, it would come first.
    owner
        .send(hanmadi_client::Target::User(702), "direct")
        .await
        .unwrap();
    let got = texts(&mut removed_in, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].body, "direct", "the removed member got {got:?}");
    shutdown_all(nodes).await;
}
