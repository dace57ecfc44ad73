//! Pushes to offline recipients, end to end: a real node on 127.0.0.1:0
//! pushes to a real webhook receiver on 127.0.0.1:0 (`push_receiver`),
//! users act through the client library and the HTTP API.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod push_receiver;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Transport;
use hanmadi_client::Target;
use hanmadi_gateway::push::{PushConfig, PushFormat};
use hanmadi_gateway::ServerOptions;
use push_receiver::{Received, Receiver};
use serde_json::{json, Value};

fn options(webhook: String, push: PushConfig) -> ServerOptions {
    ServerOptions {
        push: PushConfig {
            webhook: Some(webhook),
            ..push
        },
        ..ServerOptions::default()
    }
}

fn quick() -> PushConfig {
    PushConfig {
        delay: Duration::from_millis(500),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        timeout: Duration::from_secs(2),
        ..PushConfig::default()
    }
}

/// A node pushing to `receiver` with `push`, users 1 (the sender), `bob`
/// and `carol`, and the sender's connection.
async fn sender_bob_and_carol(
    receiver: &Receiver,
    push: PushConfig,
    bob: u64,
    carol: u64,
) -> (common::Node, Http, hanmadi_client::Client) {
    let node = common::start(options(receiver.url("/push"), push)).await;
    let http = Http::new(&node);
    for u in [1, bob, carol] {
        node.user(u).await;
    }
    let (a, _) = node.connect(1, "laptop", Transport::Tcp).await;
    (node, http, a)
}

/// The JSON API as a user calls it.
struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(node: &common::Node) -> Self {
        Self {
            base: format!("http://{}", node.server.http_addr().expect("http")),
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn register(&self, token: &str, device: &str, platform: &str, push_token: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/devices/{device}/push"),
                token,
                Some(json!({"platform": platform, "token": push_token})),
            )
            .await;
        assert_eq!(status, 204, "{body}");
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// The value of a counter line in the metrics text (`0` when absent).
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the counter `series` reads `expected`: the node counts an
/// attempt after the receiver has answered it.
async fn counter_reaches(http: &Http, series: &str, expected: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = http.metrics().await;
        if counter(&metrics, series) == expected {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is not {expected}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(client: &hanmadi_client::Client, to: u64, body: &str) {
    client.send(Target::User(to), body).await.expect("send");
}

/// Pushes a barrier user and waits for it: index entries due before it
/// have been handled by then.
async fn barrier(sender: &hanmadi_client::Client, receiver: &Receiver, user: u64) {
    let before = receiver.for_user(user).len();
    send(sender, user, "barrier").await;
    receiver
        .wait_for_user(user, before + 1, Duration::from_secs(10))
        .await;
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_is_pushed_once_after_the_delay_with_preview_count_and_devices() {
    let receiver = Receiver::start(|_, _| 200).await;
    let node = common::start(options(receiver.url("/push"), PushConfig::default())).await;
    let http = Http::new(&node);
    let (alice, bob, carol) = (1, 2, 3);
    node.user(alice).await;
    let bob_token = node.user(bob).await;
    node.user(carol).await;
    http.register(&bob_token, "phone", "apns", "apns-token-1")
        .await;
    http.register(&bob_token, "tablet", "fcm", "fcm-token-2")
        .await;
    let (status, devices) = http
        .call(reqwest::Method::GET, "/v1/devices", &bob_token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(2),
        "{devices}"
    );

    let (a, _) = node.connect(alice, "laptop", Transport::Tcp).await;
    let started = Instant::now();
    for body in ["one", "two", "three"] {
        send(&a, bob, body).await;
    }
    let pushes = receiver.wait_for_user(bob, 1, WAIT).await;
    let took = pushes[0].at - started;
    // The default delay is 2 s: not before, and within 1 s after.
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_secs(3),
        "pushed after {took:?}"
    );
    let p = &pushes[0].body;
    assert_eq!(pushes[0].path, "/push");
    assert_eq!(p["user_id"], "2");
    assert_eq!(
        p["unseen"], 3,
        "three messages in the window, one push: {p}"
    );
    assert_eq!(p["preview"], "three");
    assert_eq!(p["sender_id"], "1");
    assert_eq!(p["sender_name"], "user1");
    assert_eq!(p["conversation_type"], "direct");
    assert_eq!(p["conversation"]["direct"]["user_low"], "1", "{p}");
    assert_eq!(p["conversation"]["direct"]["user_high"], "2");
    assert_eq!(p["peer_id"], "1");
    assert!(p["cursor"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(pushes[0].key.as_deref(), p["idempotency_key"].as_str());
    let mut tokens: Vec<(&str, &str)> = p["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["platform"].as_str().unwrap_or(""),
                d["token"].as_str().unwrap_or(""),
            )
        })
        .collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [("apns", "apns-token-1"), ("fcm", "fcm-token-2")]);

    // Once: later due entries (and the barrier) bring nothing more for bob.
    barrier(&a, &receiver, carol).await;
    assert_eq!(
        receiver.for_user(bob).len(),
        1,
        "{:#?}",
        receiver.requests()
    );
    let metrics = counter_reaches(&http, "hanmadi_push_sent_total", 2.0).await;
    assert!(
        metrics.contains("hanmadi_push_seconds_count 2"),
        "{metrics}"
    );
    node.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_long_polling_syncing_and_acking_recipients_are_not_pushed() {
    let receiver = Receiver::start(|_, _| 200).await;
    let node = common::start(options(
        receiver.url("/push"),
        PushConfig {
            delay: Duration::from_millis(1500),
            ..quick()
        },
    ))
    .await;
    let http = Http::new(&node);
    let (alice, connected, polling, syncing, acking, offline) = (1, 2, 3, 4, 5, 6);
    for u in [alice, connected, polling, syncing, acking, offline] {
        node.user(u).await;
    }
    let (a, _) = node.connect(alice, "laptop", Transport::Tcp).await;
    let (_live, mut live_events) = node
        .connect(
            connected,
            "phone",
            Transport::Ws(hanmadi_proto::websocket::Encoding::Binary),
        )
        .await;
    // A long-poll waiting when the message commits counts as online.
    let poll_token = node.token(polling);
    let poll_http = Http::new(&node);
    let poll = tokio::spawn(async move {
        poll_http
            .call(
                reqwest::Method::GET,
                "/v1/sync?wait_ms=20000",
                &poll_token,
                None,
            )
            .await
    });
    while !hanmadi_router::Presence::is_online(&**node.server.registry(), polling) {
        tokio::task::yield_now().await;
    }
    for u in [connected, polling, syncing, acking, offline] {
        send(&a, u, "hello").await;
    }
    assert!(
        live_events.recv().await.is_some(),
        "the connected user got it live"
    );
    let (status, answer) = poll.await.expect("poll");
    assert_eq!(status, 200);
    assert_eq!(
        answer["messages"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    // Within the delay: one syncs over HTTP, one acks on a socket.
    let (status, synced) = http
        .call(reqwest::Method::GET, "/v1/sync", &node.token(syncing), None)
        .await;
    assert_eq!(
        (status, synced["messages"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let (acker, _) = node.connect(acking, "phone", Transport::Tcp).await;
    let batch = acker.sync(&[], 0).await.expect("sync");
    let last = batch.messages.last().expect("one message").cursor.clone();
    acker.ack(&last).await.expect("ack");
    acker.close().await;

    let pushes = receiver.wait_for_user(offline, 1, WAIT).await;
    assert_eq!(pushes[0].body["unseen"], 1);
    barrier(&a, &receiver, offline).await;
    let users: Vec<Option<u64>> = receiver.requests().iter().map(Received::user).collect();
    assert_eq!(
        users,
        [Some(offline), Some(offline)],
        "only the offline user is pushed"
    );
    node.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_conversations_do_not_count() {
    let receiver = Receiver::start(|_, _| 200).await;
    let node = common::start(options(receiver.url("/push"), quick())).await;
    let http = Http::new(&node);
    let (alice, bob, carol, dave) = (1, 2, 3, 4);
    node.user(alice).await;
    let bob_token = node.user(bob).await;
    node.user(carol).await;
    node.user(dave).await;
    let (status, _) = http
        .call(
            reqwest::Method::PUT,
            "/v1/conversations/direct:1/mute",
            &bob_token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, err) = http
        .call(
            reqwest::Method::PUT,
            "/v1/conversations/dm-1/mute",
            &bob_token,
            None,
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let (a, _) = node.connect(alice, "laptop", Transport::Tcp).await;
    let (c, _) = node.connect(carol, "laptop", Transport::Tcp).await;
    send(&a, bob, "muted one").await;
    send(&c, bob, "from carol").await;
    send(&a, bob, "muted two").await;
    let pushes = receiver.wait_for_user(bob, 1, WAIT).await;
    assert_eq!(pushes[0].body["unseen"], 1, "{}", pushes[0].body);
    assert_eq!(pushes[0].body["preview"], "from carol");
    assert_eq!(pushes[0].body["sender_id"], "3");

    // Only muted messages: no push at all. Unmuted again: pushed.
    send(&a, bob, "muted three").await;
    barrier(&a, &receiver, dave).await;
    assert_eq!(receiver.for_user(bob).len(), 1);
    let (status, _) = http
        .call(
            reqwest::Method::DELETE,
            "/v1/conversations/direct:1/mute",
            &bob_token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    send(&a, bob, "loud").await;
    let pushes = receiver.wait_for_user(bob, 2, WAIT).await;
    assert_eq!(pushes[1].body["preview"], "loud");
    assert_eq!(pushes[1].body["unseen"], 1);
    node.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_push_offline_members_but_membership_events_do_not() {
    let receiver = Receiver::start(|_, _| 200).await;
    let node = common::start(options(receiver.url("/push"), quick())).await;
    let (alice, bob, carol, dave) = (1, 2, 3, 4);
    let group = node.group_of("team", &[alice, bob, carol]).await;
    node.user(dave).await;
    let (a, _) = node.connect(alice, "laptop", Transport::Tcp).await;
    a.send(Target::Group(group), "standup in 5")
        .await
        .expect("send");
    for member in [bob, carol] {
        let pushes = receiver.wait_for_user(member, 1, WAIT).await;
        let p = &pushes[0].body;
        assert_eq!(p["conversation_type"], "group");
        assert_eq!(p["group_id"], group.to_string());
        assert_eq!(p["unseen"], 1, "the group's creation is not counted: {p}");
        assert_eq!(p["preview"], "standup in 5");
    }
    barrier(&a, &receiver, dave).await;
    assert_eq!(receiver.requests().len(), 3, "{:#?}", receiver.requests());
    node.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_with_one_key_then_nothing_more() {
    let (bob, carol) = (2, 3);
    // Bob's push fails twice with 500, then succeeds.
    let receiver = Receiver::start(move |body, earlier| {
        if push_receiver::is_user(body, bob) && earlier < 2 {
            500
        } else {
            200
        }
    })
    .await;
    let (node, http, a) = sender_bob_and_carol(&receiver, quick(), bob, carol).await;
    send(&a, bob, "retry me").await;
    let attempts = receiver.wait_for_user(bob, 3, WAIT).await;
    let statuses: Vec<u16> = attempts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    let key = attempts[0].key.clone().expect("key header");
    for r in &attempts {
        assert_eq!(r.key.as_deref(), Some(key.as_str()));
        assert_eq!(r.body["idempotency_key"], key.as_str());
        assert_eq!(r.body, attempts[0].body, "the very same request");
    }
    // Backoff: at least half the base, then half of twice the base.
    assert!(attempts[1].at - attempts[0].at >= Duration::from_millis(50));
    assert!(attempts[2].at - attempts[1].at >= Duration::from_millis(100));
    barrier(&a, &receiver, carol).await;
    assert_eq!(receiver.for_user(bob).len(), 3, "nothing after the 200");
    let metrics = counter_reaches(&http, "hanmadi_push_sent_total", 2.0).await;
    assert_eq!(
        counter(&metrics, "hanmadi_push_retried_total"),
        2.0,
        "{metrics}"
    );
    node.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_times_out_is_retried_with_the_same_key() {
    let (bob, carol) = (2, 3);
    // Bob's first request is never answered.
    let receiver = Receiver::start(move |body, earlier| {
        if push_receiver::is_user(body, bob) && earlier == 0 {
            0
        } else {
            200
        }
    })
    .await;
    let push = PushConfig {
        timeout: Duration::from_millis(500),
        ..quick()
    };
    let (node, http, a) = sender_bob_and_carol(&receiver, push, bob, carol).await;
    send(&a, bob, "slow gateway").await;
    let attempts = receiver.wait_for_user(bob, 2, WAIT).await;
    assert_eq!(attempts[0].key, attempts[1].key, "{attempts:#?}");
    assert_eq!(attempts[1].status, 200);
    assert!(attempts[1].at - attempts[0].at >= Duration::from_millis(500));
    barrier(&a, &receiver, carol).await;
    assert_eq!(receiver.for_user(bob).len(), 2);
    let metrics = counter_reaches(&http, "hanmadi_push_sent_total", 2.0).await;
    assert_eq!(
        counter(&metrics, "hanmadi_push_retried_total"),
        1.0,
        "{metrics}"
    );
    node.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dropped_at_once_and_counted_and_previews_can_be_off() {
    let (bob, carol) = (2, 3);
    let receiver = Receiver::start(move |body, _| {
        if push_receiver::is_user(body, bob) {
            400
        } else {
            200
        }
    })
    .await;
    let push = PushConfig {
        preview: false,
        ..quick()
    };
    let (node, http, a) = sender_bob_and_carol(&receiver, push, bob, carol).await;
    send(&a, bob, "secret text").await;
    let pushes = receiver.wait_for_user(bob, 1, WAIT).await;
    assert_eq!(pushes[0].status, 400);
    assert!(
        pushes[0].body.get("preview").is_none(),
        "{}",
        pushes[0].body
    );
    assert!(!pushes[0].body.to_string().contains("secret text"));
    barrier(&a, &receiver, carol).await;
    assert_eq!(receiver.for_user(bob).len(), 1, "a 400 is not retried");
    let metrics = counter_reaches(&http, "hanmadi_push_sent_total", 1.0).await;
    assert_eq!(
        counter(&metrics, "hanmadi_push_dropped_total{reason=\"rejected\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "hanmadi_push_retried_total"), 0.0);
    node.server.shutdown().await;
}

/// The receiver is down (connections refused) for 30 s. Retries are capped
/// at 1 s apart here, so the push arrives within about a second of its
/// return; with the default cap it would wait up to 5 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_30_seconds_gets_the_push_when_it_is_back() {
    // Bound but not listening: connections to it are refused, and no other
    // test's receiver can be given its port meanwhile (this node would push
    // to that one).
    let down = tokio::net::TcpSocket::new_v4().expect("socket");
    down.bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let addr = down.local_addr().expect("addr");
    let node = common::start(options(
        format!("http://{addr}/push"),
        PushConfig {
            delay: Duration::from_millis(200),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(1),
            max_attempts: 1000,
            ..quick()
        },
    ))
    .await;
    let http = Http::new(&node);
    node.user(1).await;
    node.user(2).await;
    let (a, _) = node.connect(1, "laptop", Transport::Tcp).await;
    send(&a, 2, "are you there").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let retried = counter(&http.metrics().await, "hanmadi_push_retried_total");
    assert!(
        retried >= 20.0,
        "retried {retried} times while the receiver was down"
    );
    let back = Instant::now();
    let listener = down.listen(1024).expect("listen");
    let receiver = Receiver::serve(listener, Box::new(|_, _| 200), Duration::ZERO);
    let pushes = receiver.wait_for_user(2, 1, WAIT).await;
    assert!(
        pushes[0].at - back <= Duration::from_millis(1500),
        "{:?}",
        pushes[0].at - back
    );
    assert_eq!(pushes[0].body["preview"], "are you there");
    let metrics = counter_reaches(&http, "hanmadi_push_sent_total", 1.0).await;
    assert_eq!(
        counter(&metrics, "hanmadi_push_dropped_total{reason=\"attempts\"}"),
        0.0
    );
    node.server.shutdown().await;
}

/// What Gorush's `POST /api/push` takes (its README and `PushNotification`
/// type): `{"notifications": [...]}`, each with a non-empty `tokens` array
/// of strings, `platform` 1 (iOS) or 2 (Android), a `message` string, and
/// optional `title`, `badge` (number), `priority`, `sound`, `thread-id`,
/// and `data` (an object; string values, as FCM requires).
fn gorush_shape_errors(body: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(top) = body.as_object() else {
        return vec!["not an object".into()];
    };
    if top.keys().any(|k| k != "notifications") {
        errors.push(format!("unknown top-level keys: {:?}", top.keys()));
    }
    let Some(list) = body["notifications"].as_array().filter(|l| !l.is_empty()) else {
        return vec!["notifications must be a non-empty array".into()];
    };
    let known = [
        "tokens",
        "platform",
        "message",
        "title",
        "badge",
        "priority",
        "sound",
        "thread-id",
        "data",
    ];
    for n in list {
        let Some(fields) = n.as_object() else {
            errors.push("a notification is not an object".into());
            continue;
        };
        if let Some(k) = fields.keys().find(|k| !known.contains(&k.as_str())) {
            errors.push(format!("unexpected field {k}"));
        }
        let tokens_ok = n["tokens"].as_array().is_some_and(|t| {
            !t.is_empty() && t.iter().all(|t| t.as_str().is_some_and(|s| !s.is_empty()))
        });
        if !tokens_ok {
            errors.push(format!("bad tokens: {}", n["tokens"]));
        }
        if !matches!(n["platform"].as_u64(), Some(1 | 2)) {
            errors.push(format!("bad platform: {}", n["platform"]));
        }
        if n["message"].as_str().is_none_or(str::is_empty) {
            errors.push("message must be a non-empty string".into());
        }
        if n.get("badge").is_some_and(|b| !b.is_u64()) {
            errors.push("badge must be a number".into());
        }
        let data_ok = n["data"]
            .as_object()
            .is_some_and(|d| d.values().all(Value::is_string));
        if !data_ok {
            errors.push("data must be an object of strings".into());
        }
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorush_format_has_gorush_shape_one_notification_per_platform() {
    let receiver = Receiver::start(|body, _| {
        if gorush_shape_errors(body).is_empty() {
            200
        } else {
            400
        }
    })
    .await;
    let node = common::start(options(
        receiver.url("/api/push"),
        PushConfig {
            format: PushFormat::Gorush,
            ..quick()
        },
    ))
    .await;
    let http = Http::new(&node);
    let (alice, bob, carol) = (1, 2, 3);
    node.user(alice).await;
    let bob_token = node.user(bob).await;
    node.user(carol).await;
    http.register(&bob_token, "iphone", "apns", "apns-a").await;
    http.register(&bob_token, "ipad", "apns", "apns-b").await;
    http.register(&bob_token, "pixel", "fcm", "fcm-c").await;
    http.register(&bob_token, "browser", "webpush", "{\"endpoint\":\"x\"}")
        .await;
    let (a, _) = node.connect(alice, "laptop", Transport::Tcp).await;
    send(&a, bob, "first").await;
    send(&a, bob, "hello gorush").await;
    // Carol registered nothing Gorush can reach: no request for her.
    send(&a, carol, "nobody to tell").await;
    let pushes = receiver.wait_for_user(bob, 1, WAIT).await;
    let p = &pushes[0];
    assert_eq!(p.path, "/api/push");
    assert_eq!(
        gorush_shape_errors(&p.body),
        Vec::<String>::new(),
        "{}",
        p.body
    );
    assert_eq!(p.status, 200);
    let list = p.body["notifications"].as_array().expect("list");
    let by_platform: HashMap<u64, &Value> = list
        .iter()
        .map(|n| (n["platform"].as_u64().unwrap_or(0), n))
        .collect();
    assert_eq!(
        list.len(),
        2,
        "one per platform, web push left out: {}",
        p.body
    );
    // By device id: "ipad", then "iphone".
    assert_eq!(by_platform[&1]["tokens"], json!(["apns-b", "apns-a"]));
    assert_eq!(by_platform[&2]["tokens"], json!(["fcm-c"]));
    assert_eq!(by_platform[&1]["badge"], 2);
    for n in list {
        assert_eq!(n["message"], "hello gorush");
        assert_eq!(n["title"], "user1");
        assert_eq!(n["data"]["idempotency_key"].as_str(), p.key.as_deref());
        assert_eq!(n["data"]["unseen"], "2");
    }
    barrier(&a, &receiver, bob).await;
    assert!(receiver.for_user(carol).is_empty());
    counter_reaches(
        &http,
        "hanmadi_push_dropped_total{reason=\"no_devices\"}",
        1.0,
    )
    .await;
    node.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_registrations_are_validated_listed_and_go_with_the_account() {
    let node = common::start(ServerOptions::default()).await;
    let http = Http::new(&node);
    let token = node.user(7).await;
    let put = |device: String, body: Value| {
        let http = &http;
        let token = token.clone();
        async move {
            http.call(
                reqwest::Method::PUT,
                &format!("/v1/devices/{device}/push"),
                &token,
                Some(body),
            )
            .await
        }
    };
    for (device, body) in [
        ("d".repeat(65), json!({"platform": "apns", "token": "t"})),
        (
            "d1".into(),
            json!({"platform": "carrier-pigeon", "token": "t"}),
        ),
        ("d1".into(), json!({"platform": "fcm", "token": ""})),
        (
            "d1".into(),
            json!({"platform": "fcm", "token": "t".repeat(4097)}),
        ),
        ("d1".into(), json!({"platform": "fcm"})),
    ] {
        let (status, err) = put(device.clone(), body.clone()).await;
        assert_eq!(status, 400, "{device} {body}: {err}");
        assert!(err["error"]["message"].is_string(), "{err}");
    }
    for i in 0..10 {
        let (status, _) = put(format!("d{i}"), json!({"platform": "other", "token": "t"})).await;
        assert_eq!(status, 204);
    }
    // Replacing one is fine; an eleventh device is not.
    let (status, _) = put("d0".into(), json!({"platform": "webpush", "token": "w"})).await;
    assert_eq!(status, 204);
    let (status, err) = put("d10".into(), json!({"platform": "fcm", "token": "t"})).await;
    assert_eq!(status, 400, "{err}");
    let (status, _) = http
        .call(reqwest::Method::DELETE, "/v1/devices/d9/push", &token, None)
        .await;
    assert_eq!(status, 204);
    let (_, list) = http
        .call(reqwest::Method::GET, "/v1/devices", &token, None)
        .await;
    let devices = list["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 9, "{list}");
    assert_eq!(devices[0]["device_id"], "d0");
    assert_eq!(devices[0]["push"]["platform"], "webpush");
    assert_eq!(devices[0]["push"]["token"], "w");

    let (status, _) = http
        .call(reqwest::Method::DELETE, "/v1/users/me", &token, None)
        .await;
    assert_eq!(status, 204);
    let store = node.server.router().store();
    assert!(store.push_devices(7).await.expect("devices").is_empty());
    node.server.shutdown().await;
}
