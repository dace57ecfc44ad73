//! A cluster of real `hanmadi serve --store fdb` processes on loopback over
//! one FoundationDB cluster: delivery across nodes, a reader moved between
//! nodes, notifications lost with the links, `kill -9` of a node under
//! load, and fencing of a node paused past its lease.
//!
//! Needs the `foundationdb` feature and `FDB_CLUSTER_FILE` naming a running
//! cluster (`scripts/with-fdb.sh` and `.ci/run` provide both); without
//! them each test says it skipped. The tests take turns: nodes of one
//! cluster all see each other.

#![allow(clippy::unwrap_used)]

#[cfg(feature = "foundationdb")]
mod binary;
#[cfg(feature = "foundationdb")]
mod moving;

#[cfg(not(feature = "foundationdb"))]
#[test]
fn cluster_processes_on_foundationdb() {
    println!("skipped: no FoundationDB cluster (build with --features foundationdb)");
}

#[cfg(feature = "foundationdb")]
mod on_fdb {
    use std::time::Duration;

    use hanmadi_client::{
        Client, ClientConfig, Deliveries, DiscoveryOptions, Endpoints, Event, ReconnectOptions,
        ReconnectingClient, Target,
    };
    use hanmadi_gateway::auth::TokenIssuer;
    use hanmadi_proto::pb;
    use serde_json::{json, Value};
    use tokio::time::Instant;

    use super::binary::Serve;

    const SECRET: &str = "cluster process test secret, 32 bytes or more";
    const LEASE_MS: u64 = 2000;

    /// One test at a time: every node on the cluster sees every other.
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn cluster_file() -> Option<String> {
        let file = std::env::var("FDB_CLUSTER_FILE").ok()?;
        if file.is_empty() {
            return None;
        }
        Some(file)
    }

    /// The cluster file and this test's turn on the cluster; `None`, once
    /// the test has said it skipped, when no cluster is configured.
    async fn cluster_turn() -> Option<(String, tokio::sync::MutexGuard<'static, ()>)> {
        let Some(file) = cluster_file() else {
            println!("skipped: no FoundationDB cluster (FDB_CLUSTER_FILE is not set)");
            return None;
        };
        Some((file, TURN.lock().await))
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// One `hanmadi serve --store fdb` process.
    struct Node {
        serve: Serve,
        tcp: String,
        http: String,
        _data: tempfile::TempDir,
    }

    impl Node {
        fn start(cluster: &str, backstop_ms: u64) -> Self {
            Self::start_with(cluster, backstop_ms, SECRET)
        }

        /// A node whose tokens and node-link proofs use `secret`.
        fn start_with(cluster: &str, backstop_ms: u64, secret: &str) -> Self {
            let data = tempfile::tempdir().unwrap();
            let (lease, backstop) = (LEASE_MS.to_string(), backstop_ms.to_string());
            let serve = Serve::start(
                data.path(),
                &[
                    "--store",
                    "fdb",
                    "--fdb-cluster-file",
                    cluster,
                    "--secret",
                    secret,
                    "--hostname",
                    "127.0.0.1",
                    "--tcp",
                    "127.0.0.1:0",
                    "--http",
                    "127.0.0.1:0",
                    "--tls",
                    "off",
                    "--https",
                    "off",
                    "--cluster-link",
                    "127.0.0.1:0",
                    "--lease-expiry-ms",
                    &lease,
                    "--cluster-backstop-ms",
                    &backstop,
                    "--rate-per-sec",
                    "100000",
                    "--rate-burst",
                    "100000",
                ],
            );
            let tcp = serve.listening("tcp");
            let http = serve.listening("http");
            serve.listening("cluster link");
            Node {
                serve,
                tcp,
                http,
                _data: data,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.http)
        }

        /// This node's id, as its own discovery lists it.
        async fn node_id(&self) -> u64 {
            let nodes = discovery(self).await;
            *nodes
                .iter()
                .find(|(_, tcp)| *tcp == self.tcp)
                .map(|(id, _)| id)
                .unwrap()
        }

        async fn links(&self) -> u64 {
            self.metric("hanmadi_cluster_links").await
        }

        /// The sum of a metric's series on this node's `/metrics`.
        async fn metric(&self, name: &str) -> u64 {
            let text = reqwest::get(self.url("/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            // `name value` or `name{labels} value`, one line per series.
            text.lines()
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    if series.split('{').next() != Some(name) {
                        return None;
                    }
                    value.trim().parse::<f64>().ok()
                })
                .sum::<f64>() as u64
        }
    }

    /// `(node id, tcp endpoint)` of every node `node`'s discovery lists.
    async fn discovery(node: &Node) -> Vec<(u64, String)> {
        let body: Value = reqwest::get(node.url("/v1/discovery"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node_id"].as_str().unwrap().parse().unwrap(),
                    n["endpoints"]["tcp"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Waits until every node of `nodes` has a link to each other one.
    async fn until_linked(nodes: &[&Node]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in nodes {
            while n.links().await < nodes.len() as u64 - 1 {
                assert!(Instant::now() < deadline, "nodes did not link up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits until `nodes[0]`'s discovery lists exactly `nodes`: nodes
    /// killed by an earlier test stay listed until their leases lapse.
    async fn until_discovery_lists(nodes: &[&Node]) {
        let mut want: Vec<String> = nodes.iter().map(|n| n.tcp.clone()).collect();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut listed: Vec<String> = discovery(nodes[0])
                .await
                .into_iter()
                .map(|(_, tcp)| tcp)
                .collect();
            listed.sort();
            if listed == want {
                return;
            }
            assert!(Instant::now() < deadline, "discovery lists {listed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs `body` to `url` and answers the JSON reply. A loaded machine
    /// may answer 503, which a client retries after its Retry-After.
    async fn post(url: &str, bearer: &str, body: Value) -> Value {
        for _ in 0..10 {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(bearer)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let reply: Value = response.json().await.unwrap();
            if status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                return reply;
            }
            println!("POST {url} answered {status}: {reply}; trying again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("POST {url} answered 503 ten times");
    }

    /// Accounts named `{prefix}{i}`, through the admin route.
    async fn provision(node: &Node, prefix: &str, n: usize) -> Vec<u64> {
        let admin = TokenIssuer::new(SECRET.as_bytes()).admin_token();
        let users: Vec<Value> = (0..n)
            .map(|i| json!({ "username": format!("{prefix}{i}") }))
            .collect();
        let body = post(
            &node.url("/v1/admin/users:batch"),
            &admin,
            json!({ "users": users }),
        )
        .await;
        body["users"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|u| u["user_id"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    fn token(user: u64) -> String {
        token_with(SECRET, user)
    }

    fn token_with(secret: &str, user: u64) -> String {
        TokenIssuer::new(secret.as_bytes()).issue(user, now_ms(), Duration::from_secs(3600))
    }

    fn config(node: &Node, user: u64, device: &str) -> ClientConfig {
        ClientConfig::new(node.tcp.clone(), token(user), device)
    }

    async fn connect(node: &Node, user: u64, device: &str) -> (Client, Deliveries) {
        Client::connect(config(node, user, device)).await.unwrap()
    }

    /// A reconnecting client of `user`, first on `first`, that asks
    /// `discovery`'s node where to go on every reconnect.
    async fn reconnecting(first: &Node, discovery: &Node, user: u64) -> ReconnectingClient {
        let endpoints = Endpoints::discovery(DiscoveryOptions {
            url: format!("http://{}", discovery.http),
            region: None,
            transport: hanmadi_client::Transport::Tcp,
            tls: None,
            timeout: Duration::from_secs(2),
        });
        ReconnectingClient::start(
            config(first, user, "phone"),
            ReconnectOptions {
                endpoints: Some(endpoints),
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                ..ReconnectOptions::default()
            },
        )
        .await
        .unwrap()
    }

    /// A fresh prefix for account names, so runs never share accounts.
    fn prefix(test: &str) -> String {
        format!("{test}-{:x}-", rand::random::<u32>())
    }

    /// The next `n` text messages, each within `within`.
    async fn texts(deliveries: &mut Deliveries, n: usize, within: Duration) -> Vec<pb::Message> {
        let mut out = Vec::new();
        while out.len() < n {
            let event = tokio::time::timeout(within, deliveries.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", out.len()))
                .expect("connection open");
            match event {
                Event::Deliver { message, .. } if message.kind == pb::MessageKind::Text as i32 => {
                    out.push(message);
                }
                Event::Deliver { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }

    /// `user`'s whole inbox as `(message id, cursor)`, read through `node`.
    async fn inbox(node: &Node, user: u64) -> Vec<(u64, bytes::Bytes)> {
        let (client, _d) = connect(node, user, "auditor").await;
        let mut out = Vec::new();
        let mut after = bytes::Bytes::new();
        loop {
            let page = client.sync(&after, 500).await.unwrap();
            for e in &page.messages {
                let m = e.message.as_ref().unwrap();
                out.push((m.message_id, e.cursor.clone()));
            }
            after = page.next.clone();
            if !page.has_more {
                break;
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_processes_deliver_across_nodes() {
        let Some((cluster, _turn)) = cluster_turn().await else {
            return;
        };
        // The feed's backstop is a minute away: what arrives within the
        // test's seconds came over the links.
        let nodes: Vec<Node> = (0..3).map(|_| Node::start(&cluster, 60_000)).collect();
        until_linked(&nodes.iter().collect::<Vec<_>>()).await;
        let users = provision(&nodes[0], &prefix("live"), 60).await;

        // 1:1 between users on different nodes.
        let (alice, mut alice_in) = connect(&nodes[0], users[0], "phone").await;
        let (_bob, mut bob_in) = connect(&nodes[1], users[1], "phone").await;
        let sent = Instant::now();
        alice
            .send(Target::User(users[1]), "across nodes")
            .await
            .unwrap();
        assert_eq!(
            texts(&mut bob_in, 1, Duration::from_secs(5)).await[0].body,
            "across nodes"
        );
        println!(
            "1:1 across processes: {:?} from send to delivery",
            sent.elapsed()
        );
        texts(&mut alice_in, 1, Duration::from_secs(5)).await;

        // A 50-member group over the three nodes, five senders.
        let members = &users[10..60];
        let creating = Instant::now();
        let created = post(
            &nodes[0].url("/v1/groups"),
            &token(members[0]),
            json!({
                "name": "spread",
                "members": members[1..].iter().map(u64::to_string).collect::<Vec<_>>(),
            }),
        )
        .await;
        let group: u64 = created["group_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{created} after {:?}", creating.elapsed()))
            .parse()
            .unwrap();
        println!("a 50-member group created in {:?}", creating.elapsed());
        let mut clients = Vec::new();
        let mut streams = Vec::new();
        for (i, &m) in members.iter().enumerate() {
            let (c, d) = connect(&nodes[i % 3], m, "d").await;
            clients.push(c);
            streams.push(d);
        }
        // One user on two nodes at once.
        let (_tablet, tablet_in) = connect(&nodes[2], members[0], "tablet").await;
        streams.push(tablet_in);
        let sends = (0..5).map(|s| {
            let client = clients[s * 7].clone();
            async move {
                for i in 0..10 {
                    client
                        .send(Target::Group(group), format!("{s}:{i}"))
                        .await
                        .unwrap();
                }
            }
        });
        futures::future::join_all(sends).await;
        let mut first: Option<Vec<u64>> = None;
        for (i, d) in streams.iter_mut().enumerate() {
            let ids: Vec<u64> = texts(d, 50, Duration::from_secs(10))
                .await
                .iter()
                .map(|m| m.message_id)
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "device {i}: in order");
            match &first {
                None => first = Some(ids),
                Some(want) => assert_eq!(&ids, want, "device {i}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_moved_between_nodes_fifty_times_gets_exactly_its_inbox() {
        const MESSAGES: usize = 5000;
        const MOVES: usize = 50;
        // Send loops per sender, so the run takes seconds.
        const LOOPS: usize = 4;
        let Some((cluster, _turn)) = cluster_turn().await else {
            return;
        };
        let nodes: Vec<Node> = (0..3).map(|_| Node::start(&cluster, 1000)).collect();
        until_linked(&nodes.iter().collect::<Vec<_>>()).await;
        until_discovery_lists(&nodes.iter().collect::<Vec<_>>()).await;
        let users = provision(&nodes[0], &prefix("seam"), 3).await;
        let reader = users[2];
        let mut inbox_client = reconnecting(&nodes[2], &nodes[0], reader).await;
        let (mut sends, mut echoes) = (Vec::new(), Vec::new());
        for (n, &sender) in users[..2].iter().enumerate() {
            let (client, deliveries) = connect(&nodes[n], sender, "d").await;
            for l in 0..LOOPS {
                let (client, tag) = (client.clone(), format!("{n}.{l}."));
                sends.push(tokio::spawn(async move {
                    for i in 0..MESSAGES / 2 / LOOPS {
                        client
                            .send(Target::User(reader), format!("{tag}{i}"))
                            .await
                            .unwrap();
                    }
                }));
            }
            // The sender's own copies, read so its connection keeps up.
            echoes.push(tokio::spawn(async move {
                let mut deliveries = deliveries;
                while deliveries.recv().await.is_some() {}
            }));
        }
        let closes_before: Vec<u64> =
            futures::future::join_all(nodes.iter().map(|n| n.metric("hanmadi_closes_total"))).await;
        let received = super::moving::read_while_moving(&mut inbox_client, MESSAGES, MOVES).await;
        for s in sends {
            s.await.unwrap();
        }
        for e in echoes {
            e.abort();
        }
        // Discovery hands each reconnect the next node in turn, so every
        // node served the reader and saw some of its moves.
        for (n, before) in nodes.iter().zip(closes_before) {
            let closes = n.metric("hanmadi_closes_total").await - before;
            assert!(closes > 0, "node {} never served the reader", n.tcp);
        }
        let want = inbox(&nodes[1], reader).await;
        assert_eq!(received.len(), want.len());
        assert!(received == want, "what it handed over equals the inbox");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_link_notifications_arrive_through_the_change_feed() {
        const BACKSTOP_MS: u64 = 300;
        const OTHER_SECRET: &str = "another cluster's secret, also 32 bytes or more";
        let Some((cluster, _turn)) = cluster_turn().await else {
            return;
        };
        // Nodes with different secrets refuse each other's node links, so
        // every notification between them is lost; they share the store,
        // its presence index and its change feed.
        let nodes = [
            Node::start_with(&cluster, BACKSTOP_MS, SECRET),
            Node::start_with(&cluster, BACKSTOP_MS, OTHER_SECRET),
        ];
        until_discovery_lists(&nodes.iter().collect::<Vec<_>>()).await;
        let users = provision(&nodes[0], &prefix("lost"), 2).await;
        let (alice, _alice_in) = connect(&nodes[0], users[0], "phone").await;
        let (_bob, mut bob_in) = Client::connect(ClientConfig::new(
            nodes[1].tcp.clone(),
            token_with(OTHER_SECRET, users[1]),
            "phone",
        ))
        .await
        .unwrap();
        // Far below the never of a lost notification without the feed,
        // with room for a loaded machine.
        let bound = Duration::from_secs(10);
        for i in 0..10 {
            let sent = Instant::now();
            alice
                .send(Target::User(users[1]), format!("{i}"))
                .await
                .unwrap();
            let got = texts(&mut bob_in, 1, bound).await;
            assert_eq!(got[0].body, format!("{i}"));
            assert!(sent.elapsed() < bound, "{i} took {:?}", sent.elapsed());
        }
        for n in &nodes {
            assert_eq!(n.links().await, 0, "no link between the nodes is open");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_9_of_a_node_under_load_loses_nothing() {
        const PER_SENDER: usize = 600;
        let Some((cluster, _turn)) = cluster_turn().await else {
            return;
        };
        let mut nodes: Vec<Node> = (0..3).map(|_| Node::start(&cluster, 1000)).collect();
        until_linked(&nodes.iter().collect::<Vec<_>>()).await;
        until_discovery_lists(&nodes.iter().collect::<Vec<_>>()).await;
        let victim_id = nodes[2].node_id().await;
        let users = provision(&nodes[0], &prefix("kill"), 8).await;
        let (senders, readers) = users.split_at(2);
        // Readers start on every node and find another through discovery.
        let mut inboxes = Vec::new();
        for (i, &r) in readers.iter().enumerate() {
            inboxes.push(reconnecting(&nodes[i % 3], &nodes[0], r).await);
        }
        let mut tasks = Vec::new();
        for (s, &sender) in senders.iter().enumerate() {
            let (client, _d) = connect(&nodes[s], sender, "d").await;
            let readers = readers.to_vec();
            tasks.push(tokio::spawn(async move {
                let _d = _d;
                for i in 0..PER_SENDER {
                    let to = readers[i % readers.len()];
                    client.send(Target::User(to), format!("{i}")).await.unwrap();
                }
            }));
        }
        let readers_done = inboxes
            .into_iter()
            .map(|mut inbox| {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let want = 2 * PER_SENDER / 6;
                    while got.len() < want {
                        got.push(
                            super::moving::next_entry(&mut inbox, Duration::from_secs(30)).await,
                        );
                    }
                    got
                })
            })
            .collect::<Vec<_>>();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = Instant::now();
        // SIGKILL: no drain, no release of the lease.
        nodes[2].serve.child.kill().unwrap();
        nodes[2].serve.child.wait().unwrap();
        loop {
            let listed = discovery(&nodes[0]).await;
            if !listed.iter().any(|(id, _)| *id == victim_id) {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(10), "still listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "discovery stopped listing the killed node {:?} after the kill (lease {LEASE_MS} ms)",
            killed.elapsed()
        );
        for t in tasks {
            t.await.unwrap();
        }
        let mut received = Vec::new();
        for t in readers_done {
            received.push(t.await.unwrap());
        }
        for (r, got) in readers.iter().zip(&received) {
            let want = inbox(&nodes[0], *r).await;
            assert_eq!(got, &want, "reader {r}: exactly the inbox");
        }
        // Restarted, the node takes a free id and serves.
        nodes[2] = Node::start(&cluster, 1000);
        until_linked(&nodes.iter().collect::<Vec<_>>()).await;
        let (_c, mut back) = connect(&nodes[2], readers[0], "again").await;
        let (s, _d) = connect(&nodes[0], senders[0], "again").await;
        s.send(Target::User(readers[0]), "after the restart")
            .await
            .unwrap();
        assert_eq!(
            texts(&mut back, 1, Duration::from_secs(5)).await[0].body,
            "after the restart"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_node_whose_id_was_taken_commits_nothing() {
        let Some((cluster, _turn)) = cluster_turn().await else {
            return;
        };
        let paused = Node::start(&cluster, 1000);
        let paused_id = paused.node_id().await;
        let users = provision(&paused, &prefix("fence"), 2).await;
        let (f, _f_in) = connect(&paused, users[0], "phone").await;
        f.send(Target::User(users[1]), "before the pause")
            .await
            .unwrap();
        let pid = paused.serve.pid().to_string();
        let signal = |sig: &str| {
            let status = std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap();
            assert!(status.success());
        };
        signal("-STOP");
        tokio::time::sleep(Duration::from_millis(LEASE_MS + 500)).await;
        // New nodes take the lowest lapsed ids until one holds the paused
        // node's.
        let mut others: Vec<Node> = Vec::new();
        let mut taken = false;
        for _ in 0..8 {
            let n = Node::start(&cluster, 1000);
            let id = n.node_id().await;
            others.push(n);
            if id == paused_id {
                taken = true;
                break;
            }
        }
        assert!(taken, "no new node took id {paused_id}");
        signal("-CONT");
        // Whatever the paused node does next, nothing it commits lands:
        // a send is refused, or finds the node gone.
        let refused = f.send(Target::User(users[1]), "after the take-over").await;
        assert!(refused.is_err(), "a fenced node acknowledged a send");
        let ids: Vec<u64> = inbox(&others[0], users[1])
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "only the message from before the pause is stored"
        );
        // The node notices and stops.
        let deadline = Instant::now() + Duration::from_secs(15);
        let Node {
            serve: mut child, ..
        } = paused;
        loop {
            if let Some(status) = child.child.try_wait().unwrap() {
                assert!(!status.success(), "a fenced node exits with an error");
                break;
            }
            assert!(Instant::now() < deadline, "the fenced node kept running");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(child);
    }
}
