//! Several nodes on one store, in one process, on the simulated engine with
//! FoundationDB's semantics and injected faults: node ids come from leases,
//! discovery lists the live nodes, a drained node gives its id up, and a
//! node whose id is taken stops.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hanmadi_gateway::cluster::LeaseTiming;
use hanmadi_gateway::{Listeners, Server, ServerOptions};
use hanmadi_storage::chat::NodeRecord;
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
    let record = NodeRecord {
        hostname: name.to_owned(),
        region: "local".to_owned(),
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
            ..Listeners::default()
        },
        ServerOptions {
            secret: b"cluster test secret, thirty-two bytes+".to_vec(),
            hostname: Some(name.to_owned()),
            cluster: Some((lease, timing)),
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
