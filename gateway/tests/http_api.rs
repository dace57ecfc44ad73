//! The JSON HTTP API (DESIGN §4) over real sockets: every route, its
//! answers and its refusals, the long-poll's wake-up path, discovery and
//! the OpenAPI document.

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hanmadi_gateway::http::limits::RequestLimits;
use hanmadi_gateway::password::DEFAULT_WAIT;
use hanmadi_gateway::ServerOptions;
use hanmadi_proto::pb::ErrorCode;
use hanmadi_router::{Presence, RouterConfig};
use reqwest::Method;
use serde_json::{json, Value};

/// A JSON client of one node.
struct Api {
    http: reqwest::Client,
    base: String,
}

/// An answer: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    /// The protocol error code of an error answer.
    fn code(&self) -> i64 {
        self.body["error"]["code"].as_i64().unwrap_or(0)
    }

    /// Asserts the status and, for errors, the protocol code.
    #[track_caller]
    fn expect(&self, status: u16, code: Option<ErrorCode>) -> &Value {
        assert_eq!(self.status, status, "{self:?}");
        if let Some(code) = code {
            assert_eq!(self.code(), code as i64, "{self:?}");
            assert!(
                self.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{self:?}"
            );
        }
        &self.body
    }
}

impl Api {
    fn new(node: &common::Node) -> Self {
        let addr = node.server.http_addr().expect("http listener");
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// GETs `path`, asserts 200 and returns the body.
    async fn get_ok(&self, path: &str, token: &str) -> Value {
        self.get(path, token).await.expect(200, None).clone()
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn put(&self, path: &str, token: &str) -> Reply {
        self.call(Method::PUT, path, Some(token), None).await
    }

    async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// A GET without a token.
    async fn get_public(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, None).await
    }

    /// A POST without a token.
    async fn post_public(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, None, Some(body)).await
    }

    /// Signs `name` up and logs in: its id and token.
    async fn user(&self, name: &str) -> (u64, String) {
        let body = json!({"username": name, "password": "correct horse"});
        let r = self.post_public("/v1/users", body).await;
        let id = id_of(&r.expect(201, None)["user_id"]);
        (id, self.log_in(name).await)
    }

    /// Logs `name` in with the password [`Api::user`] gave it: a new token.
    async fn log_in(&self, name: &str) -> String {
        let body = json!({"username": name, "password": "correct horse"});
        let r = self.post_public("/v1/sessions", body).await;
        r.expect(200, None)["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// Creates the group `name` with `members` as `token`'s user: its id.
    async fn group(&self, token: &str, name: &str, members: &[u64]) -> u64 {
        let members: Vec<String> = members.iter().map(u64::to_string).collect();
        let r = self
            .post(
                "/v1/groups",
                token,
                json!({"name": name, "members": members}),
            )
            .await;
        id_of(&r.expect(201, None)["group_id"])
    }

    /// Sends `body` to `to` (`/v1/direct/{id}` or `/v1/groups/{id}`) and
    /// returns the ack.
    async fn send(&self, token: &str, to: &str, cmid: &str, body: &str) -> Value {
        let path = format!("{to}/messages");
        self.post(&path, token, json!({"client_msg_id": cmid, "body": body}))
            .await
            .expect(200, None)
            .clone()
    }
}

/// A 64-bit id, which JSON carries as a decimal string.
#[track_caller]
fn id_of(v: &Value) -> u64 {
    v.as_str()
        .unwrap_or_else(|| panic!("an id string, got {v}"))
        .parse()
        .expect("decimal id")
}

async fn setup() -> (common::Node, Api) {
    let node = common::start(ServerOptions::default()).await;
    let api = Api::new(&node);
    (node, api)
}

/// The message ids of a history page, in its order.
#[track_caller]
fn message_ids(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| id_of(&m["message_id"]))
        .collect()
}

/// Asserts that a sync batch holds no messages.
#[track_caller]
fn assert_no_messages(batch: &Value) {
    assert!(
        batch.get("messages").is_none_or(|m| m == &json!([])),
        "{batch}"
    );
}

/// URL-escaped `?after=` value of a cursor as the API returned it.
fn after(cursor: &Value) -> String {
    cursor
        .as_str()
        .unwrap_or_default()
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_and_log_in() {
    let (node, api) = setup().await;
    let r = api
        .post_public(
            "/v1/users",
            json!({"username": "Alice", "password": "correct horse", "display_name": "Al"}),
        )
        .await;
    let body = r.expect(201, None);
    let alice = id_of(&body["user_id"]);
    assert_eq!(body["username"], "Alice");

    // Usernames are unique regardless of case.
    let r = api
        .post_public(
            "/v1/users",
            json!({"username": "ALICE", "password": "another one"}),
        )
        .await;
    r.expect(409, Some(ErrorCode::AlreadyExists));
    for (username, password) in [
        ("a b", "correct horse"),
        ("", "correct horse"),
        (&"x".repeat(33) as &str, "correct horse"),
        ("bob", "short"),
        ("bob", &"p".repeat(1025)),
    ] {
        let body = json!({"username": username, "password": password});
        let r = api.post_public("/v1/users", body).await;
        r.expect(400, Some(ErrorCode::InvalidArgument));
    }

    let before = common::now_ms();
    let body = json!({"username": "alice", "password": "correct horse"});
    let r = api.post_public("/v1/sessions", body).await;
    let session = r.expect(200, None);
    assert_eq!(id_of(&session["user_id"]), alice);
    let week = 7 * 86_400_000;
    let expires = session["expires_at"].as_u64().expect("expires_at in ms");
    assert!((before + week..=common::now_ms() + week).contains(&expires));
    let token = session["token"].as_str().expect("token").to_owned();
    let me = api.get_ok("/v1/users/me", &token).await;
    assert_eq!(me["display_name"], "Al");
    // The same token opens a socket.
    let mut raw = common::Raw::connect(&node).await;
    let welcome = raw.hello(&token).await;
    assert_eq!(common::error_code(&welcome), None, "{welcome:?}");

    // A wrong password and an unknown user get the same answer.
    let wrong = api
        .post_public(
            "/v1/sessions",
            json!({"username": "alice", "password": "wrong horse"}),
        )
        .await;
    let unknown = api
        .post_public(
            "/v1/sessions",
            json!({"username": "nobody", "password": "correct horse"}),
        )
        .await;
    wrong.expect(401, Some(ErrorCode::Unauthenticated));
    unknown.expect(401, Some(ErrorCode::Unauthenticated));
    assert_eq!(wrong.body, unknown.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_answer_in_the_error_shape() {
    let (_node, api) = setup().await;
    let (_, token) = api.user("alice").await;
    let (bob, _) = api.user("bob").await;
    let url = format!("{}/v1/users", api.base);
    let send = |body: &'static str, content_type: Option<&'static str>| {
        let mut req = api.http.post(&url).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("a JSON error body");
            Reply { status, body }
        }
    };
    send("{not json", Some("application/json"))
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    send(r#"{"username": 5}"#, Some("application/json"))
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    send(r#"{"username": "a", "password": "b"}"#, None)
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));

    // Over the 64 KiB request limit.
    let huge = json!({"username": "carol", "password": "x".repeat(70 * 1024)});
    let r = api.post_public("/v1/users", huge).await;
    r.expect(413, Some(ErrorCode::BodyTooLarge));
    // Under it, but over the 16 KiB message body limit.
    let r = api
        .post(
            &format!("/v1/direct/{bob}/messages"),
            &token,
            json!({"client_msg_id": "m1", "body": "x".repeat(20 * 1024)}),
        )
        .await;
    r.expect(413, Some(ErrorCode::BodyTooLarge));

    // Bad path and query parameters, and unknown routes.
    api.get("/v1/users/abc", &token)
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    api.get("/v1/users/0", &token)
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    api.get("/v1/sync?limit=many", &token)
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    api.get("/v1/nope", &token)
        .await
        .expect(404, Some(ErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_route_refuses_bad_tokens() {
    let (node, api) = setup().await;
    let (alice, alice_token) = api.user("alice").await;
    let (bob, _) = api.user("bob").await;
    let group = api.group(&alice_token, "g", &[bob]).await;

    let now = common::now_ms();
    let forged = hanmadi_gateway::auth::TokenIssuer::new(b"some other secret entirely").issue(
        alice,
        now,
        Duration::from_secs(3600),
    );
    let expired = node
        .server
        .auth()
        .issue(alice, now - 7_200_000, Duration::from_secs(3600));
    let (carol, carol_token) = api.user("carol").await;
    api.delete("/v1/users/me", &carol_token)
        .await
        .expect(204, None);
    assert_ne!(carol, 0);

    let routes: Vec<(Method, String)> = vec![
        (Method::GET, "/v1/users/me".into()),
        (Method::PATCH, "/v1/users/me".into()),
        (Method::DELETE, "/v1/users/me".into()),
        (Method::DELETE, "/v1/sessions".into()),
        (Method::GET, format!("/v1/users/{bob}")),
        (Method::GET, "/v1/users/by-name/bob".into()),
        (Method::PUT, format!("/v1/users/me/blocks/{bob}")),
        (Method::DELETE, format!("/v1/users/me/blocks/{bob}")),
        (Method::POST, "/v1/groups".into()),
        (Method::GET, "/v1/groups".into()),
        (Method::GET, format!("/v1/groups/{group}")),
        (Method::POST, format!("/v1/groups/{group}/members")),
        (Method::DELETE, format!("/v1/groups/{group}/members/{bob}")),
        (Method::GET, "/v1/conversations".into()),
        (Method::POST, format!("/v1/direct/{bob}/messages")),
        (Method::GET, format!("/v1/direct/{bob}/messages")),
        (Method::POST, format!("/v1/groups/{group}/messages")),
        (Method::GET, format!("/v1/groups/{group}/messages")),
        (Method::GET, "/v1/sync".into()),
    ];
    for (method, path) in &routes {
        let body = (*method != Method::GET && *method != Method::DELETE).then(|| json!({}));
        let cases = [
            (None, ErrorCode::Unauthenticated),
            (Some("not-a-token"), ErrorCode::TokenInvalid),
            (Some(forged.as_str()), ErrorCode::TokenInvalid),
            (Some(expired.as_str()), ErrorCode::TokenExpired),
            (Some(carol_token.as_str()), ErrorCode::TokenInvalid),
        ];
        for (token, code) in cases {
            let r = api.call(method.clone(), path, token, body.clone()).await;
            assert_eq!(r.status, 401, "{method} {path} with {token:?}: {r:?}");
            assert_eq!(
                r.code(),
                code as i64,
                "{method} {path} with {token:?}: {r:?}"
            );
        }
    }
    // Nothing above changed anything.
    api.get(&format!("/v1/groups/{group}"), &alice_token)
        .await
        .expect(200, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_read_change_and_delete() {
    let (node, api) = setup().await;
    let (alice, token) = api.user("alice").await;
    let (bob, bob_token) = api.user("bob").await;

    let me = api.get_ok("/v1/users/me", &token).await;
    assert_eq!(id_of(&me["user_id"]), alice);
    assert_eq!(me["username"], "alice");
    assert!(me["created_at"].as_u64().is_some_and(|t| t > 0));
    for field in ["display_name", "status_text", "avatar_url"] {
        assert_eq!(me[field], "", "{field}");
    }

    let change = json!({"display_name": "Alice A.", "status_text": "busy",
        "avatar_url": "https://example.com/a.png"});
    let r = api.patch("/v1/users/me", &token, change).await;
    let changed = r.expect(200, None);
    assert_eq!(changed["display_name"], "Alice A.");
    assert_eq!(changed["status_text"], "busy");
    // Absent fields stay.
    let r = api
        .patch("/v1/users/me", &token, json!({"status_text": "free"}))
        .await;
    assert_eq!(r.expect(200, None)["display_name"], "Alice A.");
    for bad in [
        json!({"display_name": "x".repeat(65)}),
        json!({"status_text": "x".repeat(257)}),
        json!({"avatar_url": "javascript:alert(1)"}),
    ] {
        let r = api.patch("/v1/users/me", &token, bad).await;
        r.expect(400, Some(ErrorCode::InvalidArgument));
    }

    // Others see the profile.
    let seen = api.get_ok(&format!("/v1/users/{alice}"), &bob_token).await;
    assert_eq!(seen["status_text"], "free");
    assert_eq!(seen["avatar_url"], "https://example.com/a.png");
    api.get("/v1/users/12345", &bob_token)
        .await
        .expect(404, Some(ErrorCode::NotFound));
    // Found by username, in any case; names that cannot exist are unknown.
    let found = api.get_ok("/v1/users/by-name/ALICE", &bob_token).await;
    assert_eq!(
        (id_of(&found["user_id"]), &found["username"]),
        (alice, &json!("alice"))
    );
    for unknown in ["nobody", "no%20such", "%ED%95%9C", &"x".repeat(33)] {
        api.get(&format!("/v1/users/by-name/{unknown}"), &bob_token)
            .await
            .expect(404, Some(ErrorCode::NotFound));
    }

    // Deleting the account ends its tokens at once, on HTTP and sockets.
    api.delete("/v1/users/me", &token).await.expect(204, None);
    api.get("/v1/users/me", &token)
        .await
        .expect(401, Some(ErrorCode::TokenInvalid));
    let mut raw = common::Raw::connect(&node).await;
    let refused = raw.hello(&token).await;
    assert_eq!(common::error_code(&refused), Some(ErrorCode::TokenInvalid));
    api.get(&format!("/v1/users/{alice}"), &bob_token)
        .await
        .expect(404, Some(ErrorCode::NotFound));
    api.get("/v1/users/by-name/alice", &bob_token)
        .await
        .expect(404, Some(ErrorCode::NotFound));
    // The username is free again.
    api.user("alice").await;
    assert_ne!(bob, alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_stop_direct_messages_both_ways() {
    let (_node, api) = setup().await;
    let (alice, alice_token) = api.user("alice").await;
    let (bob, bob_token) = api.user("bob").await;
    let to_bob = format!("/v1/direct/{bob}");
    let to_alice = format!("/v1/direct/{alice}");
    api.send(&alice_token, &to_bob, "before", "hi").await;

    let block = format!("/v1/users/me/blocks/{bob}");
    api.put(&block, &alice_token).await.expect(204, None);
    for (token, to) in [(&alice_token, &to_bob), (&bob_token, &to_alice)] {
        let r = api
            .post(
                &format!("{to}/messages"),
                token,
                json!({"client_msg_id": "during", "body": "hello?"}),
            )
            .await;
        r.expect(403, Some(ErrorCode::Blocked));
    }
    api.delete(&block, &alice_token).await.expect(204, None);
    api.send(&bob_token, &to_alice, "after", "hello again")
        .await;

    let r = api.put("/v1/users/me/blocks/999999", &alice_token).await;
    r.expect(404, Some(ErrorCode::NotFound));
    let r = api
        .put(&format!("/v1/users/me/blocks/{alice}"), &alice_token)
        .await;
    r.expect(400, Some(ErrorCode::InvalidArgument));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_create_list_read_add_and_remove() {
    let (_node, api) = setup().await;
    let (alice, a) = api.user("alice").await;
    let (bob, b) = api.user("bob").await;
    let (carol, c) = api.user("carol").await;

    let r = api
        .post(
            "/v1/groups",
            &a,
            json!({"name": "climbers", "members": [bob.to_string()]}),
        )
        .await;
    let created = r.expect(201, None).clone();
    let group = id_of(&created["group_id"]);
    assert_eq!(created["name"], "climbers");
    assert_eq!(id_of(&created["owner"]), alice);
    assert_eq!(created["member_count"], 2);
    assert_eq!(created["max_members"], 1000);
    assert!(created["created_at"].as_u64().is_some_and(|t| t > 0));
    let roles: BTreeSet<(u64, String)> = created["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            assert!(id_of(&m["joined_at"]) > 0);
            (
                id_of(&m["user_id"]),
                m["role"].as_str().expect("role").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        BTreeSet::from([(alice, "owner".into()), (bob, "member".into())])
    );

    let listed = api.get_ok("/v1/groups", &b).await["groups"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(id_of(&listed[0]["group_id"]), group);
    assert_eq!(listed[0]["role"], "member");
    assert_eq!(id_of(&listed[0]["owner"]), alice);
    assert_eq!(listed[0]["name"], "climbers");
    assert_eq!(listed[0]["member_count"], 2);
    let none = api.get_ok("/v1/groups", &c).await;
    assert_eq!(none["groups"], json!([]));

    let path = format!("/v1/groups/{group}");
    api.get(&path, &b).await.expect(200, None);
    api.get(&path, &c)
        .await
        .expect(403, Some(ErrorCode::NotAMember));
    api.get("/v1/groups/424242", &a)
        .await
        .expect(404, Some(ErrorCode::NotFound));

    let members = format!("/v1/groups/{group}/members");
    let add_carol = json!({"user_ids": [carol.to_string()]});
    api.post(&members, &c, add_carol.clone())
        .await
        .expect(403, Some(ErrorCode::NotAMember));
    api.post(&members, &b, add_carol.clone())
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    api.post(&members, &a, json!({"user_ids": ["777777"]}))
        .await
        .expect(404, Some(ErrorCode::NotFound));
    let r = api.post(&members, &a, add_carol).await;
    assert_eq!(r.expect(200, None)["member_count"], 3);

    let remove_carol = format!("{members}/{carol}");
    api.delete(&remove_carol, &b)
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    api.delete(&remove_carol, &a).await.expect(204, None);

    // The owner grants admin; an admin manages members but grants no admin.
    let (dave, d) = api.user("dave").await;
    let (erin, _) = api.user("erin").await;
    let add_dave = json!({"user_ids": [dave.to_string()], "role": "admin"});
    api.post(&members, &b, add_dave.clone())
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    let r = api.post(&members, &a, add_dave).await;
    let roles = r.expect(200, None)["members"].clone();
    assert!(
        roles.as_array().is_some_and(|m| m
            .iter()
            .any(|m| id_of(&m["user_id"]) == dave && m["role"] == "admin")),
        "{roles}"
    );
    let add_erin_admin = json!({"user_ids": [erin.to_string()], "role": "admin"});
    api.post(&members, &d, add_erin_admin)
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    api.post(
        &members,
        &a,
        json!({"user_ids": [erin.to_string()], "role": "owner"}),
    )
    .await
    .expect(400, Some(ErrorCode::InvalidArgument));
    api.post(&members, &d, json!({"user_ids": [erin.to_string()]}))
        .await
        .expect(200, None);
    // An admin removes members, but not the owner.
    api.delete(&format!("{members}/{erin}"), &d)
        .await
        .expect(204, None);
    api.delete(&format!("{members}/{alice}"), &d)
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    api.delete(&format!("{members}/{dave}"), &d)
        .await
        .expect(204, None);
    api.get(&path, &c)
        .await
        .expect(403, Some(ErrorCode::NotAMember));
    // Leaving.
    api.delete(&format!("{members}/{bob}"), &b)
        .await
        .expect(204, None);
    let after = api.get_ok(&path, &a).await;
    assert_eq!(after["member_count"], 1);
    // The owner cannot leave: the group would have nobody to manage it.
    let r = api.delete(&format!("{members}/{alice}"), &a).await;
    r.expect(403, Some(ErrorCode::PermissionDenied));
    assert_eq!(api.get_ok(&path, &a).await["member_count"], 1);

    api.post("/v1/groups", &a, json!({"name": "", "members": []}))
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    api.post("/v1/groups", &a, json!({"name": "g", "members": ["31337"]}))
        .await
        .expect(404, Some(ErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_past_its_size_cap_is_refused() {
    let node = common::start(ServerOptions {
        router: RouterConfig {
            max_group_members: 2,
            ..RouterConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let api = Api::new(&node);
    let (_, a) = api.user("alice").await;
    let (bob, _) = api.user("bob").await;
    let (carol, _) = api.user("carol").await;
    let r = api
        .post(
            "/v1/groups",
            &a,
            json!({"name": "trio", "members": [bob.to_string(), carol.to_string()]}),
        )
        .await;
    r.expect(422, Some(ErrorCode::GroupFull));
    let r = api
        .post("/v1/groups", &a, json!({"name": "duo", "members": [bob]}))
        .await;
    let group = id_of(&r.expect(201, None)["group_id"]);
    let r = api
        .post(
            &format!("/v1/groups/{group}/members"),
            &a,
            json!({"user_ids": [carol]}),
        )
        .await;
    r.expect(422, Some(ErrorCode::GroupFull));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_exactly_once_and_history_pages_newest_first() {
    let (_node, api) = setup().await;
    let (alice, a) = api.user("alice").await;
    let (bob, b) = api.user("bob").await;
    let (_, c) = api.user("carol").await;
    let to_bob = format!("/v1/direct/{bob}");

    let ack = api.send(&a, &to_bob, "m-1", "one").await;
    assert_eq!(ack["client_msg_id"], STANDARD.encode("m-1"), "{ack}");
    let direct = &ack["conversation"]["direct"];
    assert_eq!(
        (id_of(&direct["user_low"]), id_of(&direct["user_high"])),
        (alice.min(bob), alice.max(bob))
    );
    let first = id_of(&ack["message_id"]);
    // Protocol objects keep protobuf's JSON mapping: uint64 as a string.
    assert!(id_of(&ack["sent_at"]) > 0);
    // The same client_msg_id again: the first ack, nothing new stored.
    let again = api.send(&a, &to_bob, "m-1", "one, again").await;
    assert_eq!(again, ack);
    let mut ids = vec![first];
    for i in 2..=5 {
        let ack = api
            .send(&a, &to_bob, &format!("m-{i}"), &format!("#{i}"))
            .await;
        ids.push(id_of(&ack["message_id"]));
    }

    // Bob pages back from the newest, two at a time.
    let history = format!("/v1/direct/{alice}/messages");
    let page = api.get_ok(&format!("{history}?limit=2"), &b).await;
    assert_eq!(message_ids(&page), vec![ids[4], ids[3]]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["messages"][0]["body"], "#5");
    assert_eq!(id_of(&page["messages"][0]["sender"]), alice);
    assert_eq!(page["messages"][0]["kind"], "MESSAGE_KIND_TEXT");
    let rest = api
        .get_ok(&format!("{history}?before={}&limit=", ids[3]), &b)
        .await;
    assert_eq!(message_ids(&rest), vec![ids[2], ids[1], ids[0]]);
    assert!(rest.get("has_more").is_none_or(|v| v == false), "{rest}");
    assert_eq!(rest["messages"][2]["body"], "one");

    // Refusals.
    let post = |path: String, token: &str, cmid: &str| {
        let body = json!({"client_msg_id": cmid, "body": "x"});
        let token = token.to_owned();
        let api = &api;
        async move { api.post(&path, &token, body).await }
    };
    post("/v1/direct/999999/messages".into(), &a, "x1")
        .await
        .expect(404, Some(ErrorCode::NotFound));
    post(format!("{to_bob}/messages"), &a, "")
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    post(format!("{to_bob}/messages"), &a, &"k".repeat(65))
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    api.get("/v1/direct/999999/messages", &a)
        .await
        .expect(404, Some(ErrorCode::NotFound));

    // Groups: members post and read; others are refused.
    let group = api.group(&a, "g", &[bob]).await;
    let in_group = format!("/v1/groups/{group}");
    let ack = api.send(&b, &in_group, "g-1", "hello group").await;
    assert_eq!(id_of(&ack["conversation"]["group_id"]), group);
    let page = api.get_ok(&format!("{in_group}/messages"), &a).await;
    assert_eq!(page["messages"][0]["body"], "hello group");
    // The group's creation is in its history as a system message.
    let kinds: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["MESSAGE_KIND_TEXT", "MESSAGE_KIND_GROUP_CREATED"]);
    post(format!("{in_group}/messages"), &c, "c-1")
        .await
        .expect(403, Some(ErrorCode::NotAMember));
    api.get(&format!("{in_group}/messages"), &c)
        .await
        .expect(403, Some(ErrorCode::NotAMember));
    post("/v1/groups/888888/messages".into(), &a, "x2")
        .await
        .expect(404, Some(ErrorCode::NotFound));
    api.get("/v1/groups/888888/messages", &a)
        .await
        .expect(404, Some(ErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_list_newest_activity_first_with_unread_counts() {
    let (_node, api) = setup().await;
    let (alice, a) = api.user("alice").await;
    let (bob, b) = api.user("bob").await;
    let (carol, c) = api.user("carol").await;
    api.patch("/v1/users/me", &b, json!({"display_name": "Bobby"}))
        .await
        .expect(200, None);

    api.send(&b, &format!("/v1/direct/{alice}"), "b1", "hi alice")
        .await;
    api.send(&b, &format!("/v1/direct/{alice}"), "b2", "are you there?")
        .await;
    let group = api.group(&c, "book club", &[alice]).await;
    api.send(&c, &format!("/v1/groups/{group}"), "c1", "chapter 3?")
        .await;
    let ack = api
        .send(&a, &format!("/v1/direct/{carol}"), "a1", "hello carol")
        .await;

    let list = api.get_ok("/v1/conversations", &a).await["conversations"].clone();
    let list = list.as_array().expect("conversations");
    assert_eq!(list.len(), 3, "{list:?}");

    // Newest first: the direct to Carol, the group, then Bob.
    assert_eq!(list[0]["type"], "direct");
    assert_eq!(id_of(&list[0]["peer_id"]), carol);
    assert_eq!(list[0]["name"], "carol");
    assert_eq!(list[0]["last_message"]["message_id"], ack["message_id"]);
    assert_eq!(list[0]["unread"], 0);
    assert_eq!(list[0]["conversation"], ack["conversation"]);
    assert!(list[0].get("group_id").is_none());

    assert_eq!(list[1]["type"], "group");
    assert_eq!(id_of(&list[1]["group_id"]), group);
    assert_eq!(list[1]["name"], "book club");
    assert_eq!(list[1]["last_message"]["body"], "chapter 3?");
    // The creation notice and the message, both from Carol.
    assert_eq!(list[1]["unread"], 2);
    assert_eq!(id_of(&list[1]["conversation"]["group_id"]), group);

    assert_eq!(list[2]["type"], "direct");
    assert_eq!(id_of(&list[2]["peer_id"]), bob);
    assert_eq!(list[2]["name"], "Bobby");
    assert_eq!(list[2]["last_message"]["body"], "are you there?");
    assert_eq!(list[2]["unread"], 2);

    // A page at a time: two, then the rest after the second's activity.
    let page = api.get_ok("/v1/conversations?limit=2", &a).await;
    assert_eq!(page["has_more"], true);
    let first: Vec<_> = page["conversations"].as_array().expect("page").clone();
    assert_eq!(first.as_slice(), &list[..2]);
    let before = first[1]["last_message"]["message_id"]
        .as_str()
        .expect("message id");
    let rest = api
        .get_ok(&format!("/v1/conversations?limit=2&before={before}"), &a)
        .await;
    assert_eq!(rest["has_more"], false);
    assert_eq!(rest["conversations"].as_array().expect("page"), &list[2..]);

    // A member who joins later counts only what they may see: the notice
    // of their joining.
    let (dave, d) = api.user("dave").await;
    api.post(
        &format!("/v1/groups/{group}/members"),
        &c,
        json!({"user_ids": [dave.to_string()]}),
    )
    .await
    .expect(200, None);
    let list = api.get_ok("/v1/conversations", &d).await["conversations"].clone();
    assert_eq!(list[0]["unread"], 1, "{list:?}");
}

/// Waits until `user`'s long-poll is registered: it counts as online.
async fn until_polling(node: &common::Node, user: u64) {
    let registry = node.server.registry();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !registry.is_online(user) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the long-poll registers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_long_poll_answers_at_the_commit_with_only_newer_messages() {
    let (node, api) = setup().await;
    let (alice, a) = api.user("alice").await;
    let (bob, b) = api.user("bob").await;
    api.send(&a, &format!("/v1/direct/{bob}"), "old", "before the cursor")
        .await;

    // Anything after the cursor is answered at once, whatever wait_ms.
    let started = Instant::now();
    let first = api.get_ok("/v1/sync?wait_ms=20000", &b).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(first["messages"][0]["message"]["body"], "before the cursor");
    assert!(first["messages"][0]["cursor"].is_string());
    let cursor = first["next"].clone();
    assert_eq!(cursor, first["messages"][0]["cursor"]);

    // Nothing after the cursor: the poll waits for the next commit.
    let poll = {
        let http = api.http.clone();
        let url = format!(
            "{}/v1/sync?after={}&wait_ms=20000",
            api.base,
            after(&cursor)
        );
        let token = b.clone();
        tokio::spawn(async move {
            let resp = http.get(url).bearer_auth(token).send().await.expect("poll");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("json");
            (status, body, Instant::now())
        })
    };
    until_polling(&node, bob).await;
    let sent = Instant::now();
    let ack = api
        .send(&a, &format!("/v1/direct/{bob}"), "new", "after the cursor")
        .await;
    let (status, batch, answered) = poll.await.expect("poll task");
    let took = answered.duration_since(sent);
    assert_eq!(status, 200, "{batch}");
    assert!(
        took < Duration::from_millis(50),
        "answered {took:?} after the send"
    );
    let messages = batch["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{batch}");
    assert_eq!(messages[0]["message"]["message_id"], ack["message_id"]);
    assert_eq!(id_of(&messages[0]["message"]["sender"]), alice);
    assert_ne!(batch["next"], cursor);
    // The poll is gone from presence once answered.
    assert!(!node.server.registry().is_online(bob));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_without_commits_answers_empty_after_wait_ms() {
    let (node, api) = setup().await;
    let (alice, a) = api.user("alice").await;
    let (bob, b) = api.user("bob").await;
    api.send(&a, &format!("/v1/direct/{bob}"), "m", "hello")
        .await;
    let cursor = api.get_ok("/v1/sync", &b).await["next"].clone();

    // A commit for somebody else does not answer Bob's poll.
    let (carol, _) = api.user("carol").await;
    let started = Instant::now();
    let path = format!("/v1/sync?after={}&wait_ms=300", after(&cursor));
    let poll = api.get(&path, &b);
    let other = async {
        until_polling(&node, bob).await;
        api.send(&a, &format!("/v1/direct/{carol}"), "c", "for carol")
            .await;
    };
    let (r, ()) = tokio::join!(poll, other);
    let waited = started.elapsed();
    let batch = r.expect(200, None);
    assert_no_messages(batch);
    assert_eq!(batch["next"], cursor);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_ne!(alice, bob);

    // Bad cursors.
    api.get("/v1/sync?after=%21%21", &b)
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    api.get("/v1/sync?after=AAAA", &b)
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_takes_any_base64_cursor_and_answers_410_past_retention() {
    let (node, api) = setup().await;
    let (_, a) = api.user("alice").await;
    let (bob, b) = api.user("bob").await;
    for i in 0..3 {
        api.send(&a, &format!("/v1/direct/{bob}"), &format!("m{i}"), "x")
            .await;
    }
    let page = api.get_ok("/v1/sync?limit=1", &b).await;
    assert_eq!(page["has_more"], true);
    let cursor = page["next"].as_str().expect("cursor").to_owned();
    let raw = STANDARD.decode(&cursor).expect("standard base64");
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
    // Every flavour names the same place: two entries follow.
    for text in [after(&json!(cursor)), url_safe, cursor.replace('+', " ")] {
        let r = api.get_ok(&format!("/v1/sync?after={text}"), &b).await;
        assert_eq!(
            r["messages"].as_array().map(Vec::len),
            Some(2),
            "{text}: {r}"
        );
    }

    // Retention trims the inbox: the old cursor is gone.
    node.server
        .router()
        .store()
        .trim_inbox(bob, common::now_ms() + 60_000)
        .await
        .expect("trim");
    api.get(&format!("/v1/sync?after={}", after(&json!(cursor))), &b)
        .await
        .expect(410, Some(ErrorCode::CursorExpired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_at_once_when_the_node_drains() {
    let (node, api) = setup().await;
    let (bob, b) = api.user("bob").await;
    let poll = api.get("/v1/sync?wait_ms=25000", &b);
    let drain = async {
        until_polling(&node, bob).await;
        let common::Node { server, _dir, .. } = node;
        let started = Instant::now();
        server.shutdown().await;
        started
    };
    let (r, drain_started) = tokio::join!(
        async {
            let r = poll.await;
            (r, Instant::now())
        },
        drain
    );
    let (r, answered) = r;
    let batch = r.expect(200, None);
    assert_no_messages(batch);
    let took = answered.saturating_duration_since(drain_started);
    assert!(
        took < Duration::from_secs(2),
        "answered {took:?} into the drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_live_nodes_ranked_for_the_client() {
    let (node, api) = setup().await;
    let (_, token) = api.user("alice").await;
    let mut raw = common::Raw::connect(&node).await;
    raw.hello(&token).await;

    let r = api.get_public("/v1/discovery").await;
    let nodes = r.expect(200, None)["nodes"].clone();
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    let me = &nodes[0];
    assert_eq!(me["node_id"], "0");
    assert_eq!(me["region"], "local");
    assert_eq!(me["draining"], false);
    assert_eq!(me["connections"], 1);
    assert_eq!(me["max_connections"], 100_000);
    let host = me["hostname"].as_str().expect("hostname");
    assert!(!host.is_empty());
    let s = &node.server;
    let port = |a: Option<std::net::SocketAddr>| a.expect("listener").port();
    let endpoints = &me["endpoints"];
    assert_eq!(endpoints["tcp"], format!("{host}:{}", port(s.tcp_addr())));
    assert_eq!(endpoints["tls"], format!("{host}:{}", port(s.tls_addr())));
    assert_eq!(
        endpoints["ws"],
        format!("ws://{host}:{}/ws", port(s.http_addr()))
    );
    assert_eq!(
        endpoints["wss"],
        format!("wss://{host}:{}/ws", port(s.https_addr()))
    );
    // Ranking among several live nodes: gateway/tests/cluster.rs, with
    // real nodes.
}

/// Every route of DESIGN §4 but `/ws` (served by the WebSocket module).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_provisions_accounts_without_passwords() {
    let (node, api) = setup().await;
    let admin = hanmadi_gateway::auth::TokenIssuer::new(common::SECRET).admin_token();
    let (_, user_token) = api.user("carol").await;
    let batch =
        json!({"users": [{"username": "bot-1"}, {"username": "bot-2", "display_name": "봇 🤖"}]});

    // Only the admin token opens the route.
    let path = "/v1/admin/users:batch";
    api.post_public(path, batch.clone())
        .await
        .expect(401, Some(ErrorCode::Unauthenticated));
    api.post(path, &user_token, batch.clone())
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    let forged = format!("{}A", &admin[..admin.len() - 1]);
    api.post(path, &forged, batch.clone())
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    // And the admin token is no user's token.
    api.get("/v1/users/me", &admin)
        .await
        .expect(401, Some(ErrorCode::TokenInvalid));

    let first = api
        .post(path, &admin, batch.clone())
        .await
        .expect(200, None)
        .clone();
    let users = first["users"].as_array().expect("users");
    assert_eq!(users.len(), 2);
    assert!(users.iter().all(|u| u["created"] == true), "{first}");
    assert_eq!(users[1]["username"], "bot-2");
    // Repeating the call changes nothing and answers the same ids.
    let again = json!({"users": [{"username": "bot-1"}, {"username": "bot-2"}]});
    let second = api
        .post(path, &admin, again)
        .await
        .expect(200, None)
        .clone();
    for i in 0..2 {
        assert_eq!(second["users"][i]["user_id"], first["users"][i]["user_id"]);
        assert_eq!(second["users"][i]["created"], false);
    }
    // A username someone signed up for with a password is theirs: the
    // batch is refused, and stores nothing.
    let taken = json!({"users": [{"username": "bot-3"}, {"username": "carol"}]});
    api.post(path, &admin, taken)
        .await
        .expect(409, Some(ErrorCode::AlreadyExists));
    let third = api
        .post(path, &admin, json!({"users": [{"username": "bot-3"}]}))
        .await
        .expect(200, None)
        .clone();
    assert_eq!(third["users"][0]["created"], true, "{third}");

    // The account has no password; the application's JWT lets it in.
    let bot = id_of(&first["users"][1]["user_id"]);
    let jwt = node.jwt(bot);
    let me = api.get_ok("/v1/users/me", &jwt).await;
    assert_eq!(me["display_name"], "봇 🤖");
    api.post_public(
        "/v1/sessions",
        json!({"username": "bot-2", "password": "anything at all"}),
    )
    .await
    .expect(401, Some(ErrorCode::Unauthenticated));

    // Batches are bounded and validated.
    api.post(path, &admin, json!({"users": []}))
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"username": format!("u{i}")}))
        .collect();
    api.post(path, &admin, json!({"users": many}))
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
    api.post(path, &admin, json!({"users": [{"username": "no spaces"}]}))
        .await
        .expect(400, Some(ErrorCode::InvalidArgument));
}

const ROUTES: &[&str] = &[
    "/healthz",
    "/metrics",
    "/v1/admin/token",
    "/v1/admin/users:batch",
    "/v1/conversations",
    "/v1/conversations/{id}/mute",
    "/v1/devices",
    "/v1/devices/{device_id}/push",
    "/v1/direct/{user_id}/messages",
    "/v1/discovery",
    "/v1/groups",
    "/v1/groups/{id}",
    "/v1/groups/{id}/members",
    "/v1/groups/{id}/members/{user_id}",
    "/v1/groups/{id}/messages",
    "/v1/openapi.json",
    "/v1/sessions",
    "/v1/sync",
    "/v1/users",
    "/v1/users/me",
    "/v1/users/by-name/{username}",
    "/v1/users/me/blocks/{id}",
    "/v1/users/{id}",
    "/ws",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_served_routes() {
    let (_node, api) = setup().await;
    let (alice, a) = api.user("alice").await;
    let (bob, _) = api.user("bob").await;
    let group = api.group(&a, "g", &[bob]).await;

    let doc = api.get_public("/v1/openapi.json").await;
    let doc = doc.expect(200, None).clone();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    let listed: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(listed, ROUTES.iter().copied().collect::<BTreeSet<_>>());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    for schema in [
        "ErrorBody",
        "SendAck",
        "SyncBatch",
        "HistoryPage",
        "Message",
        "Conversation",
    ] {
        assert!(
            doc["components"]["schemas"][schema]["properties"].is_object(),
            "{schema} has no schema: {}",
            doc["components"]["schemas"]
        );
    }

    // Every listed operation is served: never 404 or 405. Deleting the
    // account goes last, since it ends the token.
    let mut operations: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("path item");
            item.keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(|m| (m.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    operations.sort_by_key(|(m, p)| (m == "delete" && p == "/v1/users/me", p.clone()));
    for (method, path) in operations {
        let id = if path.starts_with("/v1/groups/") {
            group
        } else {
            bob
        };
        let concrete = path
            .replace("{id}", &id.to_string())
            .replace("{user_id}", &bob.to_string())
            .replace("{username}", "bob");
        let method: Method = method.to_uppercase().parse().expect("method");
        let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
        let r = api.call(method.clone(), &concrete, Some(&a), body).await;
        assert!(
            r.status != 404 && r.status != 405,
            "{method} {concrete} is listed but not served: {r:?}"
        );
    }
    assert_ne!(alice, bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_and_operator_view_are_served_with_a_strict_policy() {
    let (_node, api) = setup().await;
    let pages = [
        ("/", "text/html", "/web/app.js"),
        ("/admin", "text/html", "/web/admin.js"),
        ("/web/app.js", "text/javascript", "/v1/conversations"),
        ("/web/connection.js", "text/javascript", "hanmadi.v1.json"),
        ("/web/api.js", "text/javascript", "authorization"),
        ("/web/admin.js", "text/javascript", "/v1/discovery"),
        ("/web/style.css", "text/css", "@media"),
    ];
    for (path, media, needle) in pages {
        let resp = api
            .http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(media), "{path}");
        let policy = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let body = resp.text().await.expect("body");
        assert!(body.contains(needle), "{path} does not mention {needle}");
    }
    // Only the embedded files are served; anything else is the API's 404.
    for path in [
        "/web/",
        "/web/missing.js",
        "/web/../Cargo.toml",
        "/index.html",
    ] {
        api.get_public(path)
            .await
            .expect(404, Some(ErrorCode::NotFound));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_check_takes_the_admin_token_only() {
    let (node, api) = setup().await;
    let (_, user_token) = api.user("alice").await;
    let admin = node.server.auth().admin_token();
    let r = api.get(ADMIN_TOKEN_CHECK, &admin).await;
    assert_eq!(r.status, 204, "{r:?}");
    api.get(ADMIN_TOKEN_CHECK, &user_token)
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    api.get(ADMIN_TOKEN_CHECK, &format!("{admin}x"))
        .await
        .expect(403, Some(ErrorCode::PermissionDenied));
    api.get_public(ADMIN_TOKEN_CHECK)
        .await
        .expect(401, Some(ErrorCode::Unauthenticated));
}

const ADMIN_TOKEN_CHECK: &str = "/v1/admin/token";

/// Log-ins are paced per username, whatever addresses they come from:
/// five at once, then six a minute; past that `429 RATE_LIMITED` before
/// any password is checked. Other usernames are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_ins_as_one_username_are_paced() {
    let (_node, api) = setup().await;
    api.user("dave").await;
    api.user("erin").await;
    let log_in = |name: &str, password: &str| {
        api.post_public(
            "/v1/sessions",
            json!({"username": name, "password": password}),
        )
    };
    // `api.user` logged in once already.
    for _ in 0..4 {
        log_in("dave", "wrong guess")
            .await
            .expect(401, Some(ErrorCode::Unauthenticated));
    }
    log_in("DAVE", "wrong guess")
        .await
        .expect(429, Some(ErrorCode::RateLimited));
    log_in("dave", "correct horse")
        .await
        .expect(429, Some(ErrorCode::RateLimited));
    log_in("erin", "correct horse").await.expect(200, None);
}

/// A flood of log-ins from one address, more than the node can hash
/// within a request's wait, leaves another address its turn: that
/// address's log-in is answered at once, not after the flood's requests
/// queued before it (or refused as busy behind them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_in_flood_from_one_address_leaves_others_their_turn() {
    let node = common::start(ServerOptions {
        max_password_hashes: 1,
        http_requests: RequestLimits {
            rate_per_sec: 100_000,
            burst: 100_000,
            ..RequestLimits::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let api = Api::new(&node);
    api.user("gina").await;
    let started = Instant::now();
    api.post_public(
        "/v1/sessions",
        json!({"username": "gina", "password": "wrong guess"}),
    )
    .await
    .expect(401, Some(ErrorCode::Unauthenticated));
    let per_hash = started.elapsed().max(Duration::from_millis(1));
    // Enough log-ins in flight at all times to take twice the wait to
    // hash one at a time, each sent again as soon as it is answered.
    // At most 300, two sockets each in this process, within the usual
    // limit of open files; 300 still take more than half the wait to
    // hash while a hash takes over 8.4 ms (about 30 ms here).
    let flooders = ((2 * DEFAULT_WAIT.as_millis() / per_hash.as_millis().max(1)) as usize).min(300);
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let flood: Vec<_> = (0..flooders)
        .map(|i| {
            let api = Api {
                http: api.http.clone(),
                base: api.base.clone(),
            };
            let answered = answered.clone();
            tokio::spawn(async move {
                loop {
                    let r = api
                        .post_public(
                            "/v1/sessions",
                            json!({"username": format!("nobody{i}"), "password": "a guess"}),
                        )
                        .await;
                    if answered.send(r.status).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(answered);
    // Twenty answers in, every flooder has its log-in queued.
    let mut statuses = Vec::new();
    while statuses.len() < 20 {
        let status = tokio::time::timeout(DEFAULT_WAIT * 2, answers.recv())
            .await
            .expect("the flood is answered")
            .expect("the flood runs");
        statuses.push(status);
    }
    let elsewhere = Api {
        http: reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .expect("client"),
        base: api.base.clone(),
    };
    let asked = Instant::now();
    elsewhere.log_in("gina").await;
    // Behind the flood it would wait until the log-ins queued before it
    // were hashed or had expired: the whole wait.
    assert!(
        asked.elapsed() < DEFAULT_WAIT / 2,
        "answered after {:?}, behind {flooders} log-ins ({per_hash:?} a hash)",
        asked.elapsed()
    );
    for f in flood {
        f.abort();
    }
    while let Ok(status) = answers.try_recv() {
        statuses.push(status);
    }
    // The flood itself: each answered in its turn or refused as busy.
    assert!(
        statuses.iter().all(|s| [401, 503].contains(s)),
        "{statuses:?}"
    );
}

/// `DELETE /v1/sessions` logs out everywhere: every token issued before
/// it (log-in tokens and the application's JWTs) is refused, the
/// account's sockets close with `TOKEN_INVALID`, and a new log-in works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_everywhere_voids_every_earlier_token_and_socket() {
    let (node, api) = setup().await;
    let (id, first) = api.user("frank").await;
    let second = api.log_in("frank").await;
    let jwt = node.jwt(id);
    let mut socket = common::Raw::logged_in(&node, &second).await;

    api.delete("/v1/sessions", &first).await.expect(204, None);
    for token in [&first, &second, &jwt] {
        api.get("/v1/users/me", token)
            .await
            .expect(401, Some(ErrorCode::TokenInvalid));
    }
    let reply = socket.recv().await.expect("an error frame");
    assert_eq!(common::error_code(&reply), Some(ErrorCode::TokenInvalid));
    assert!(socket.recv().await.is_none(), "the socket is closed");

    let fresh = api.log_in("frank").await;
    assert_eq!(
        api.get_ok("/v1/users/me", &fresh).await["username"],
        "frank"
    );
}
