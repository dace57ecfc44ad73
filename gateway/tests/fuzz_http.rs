//! Fuzzes the HTTP API's JSON bodies on a real node: arbitrary bytes and
//! damaged valid bodies, sent to every route that reads a JSON body, are
//! answered with a status below 500 (or 503 for a busy node) in the API's
//! error shape, and the node keeps serving.

#[allow(dead_code)]
mod common;

use hanmadi_gateway::http::limits::RequestLimits;
use hanmadi_gateway::ServerOptions;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Routes with a JSON body, and a valid body for each.
fn routes(group: u64, peer: u64) -> Vec<(reqwest::Method, String, &'static str)> {
    use reqwest::Method;
    vec![
        (
            Method::POST,
            "/v1/users".into(),
            r#"{"username":"fuzz","password":"correct horse"}"#,
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            r#"{"username":"fuzz","password":"correct horse"}"#,
        ),
        (
            Method::PATCH,
            "/v1/users/me".into(),
            r#"{"display_name":"F","status_text":"hi"}"#,
        ),
        (
            Method::POST,
            "/v1/groups".into(),
            r#"{"name":"g","members":[]}"#,
        ),
        (
            Method::POST,
            format!("/v1/groups/{group}/members"),
            r#"{"user_ids":["1"],"role":"member"}"#,
        ),
        (
            Method::POST,
            format!("/v1/groups/{group}/messages"),
            r#"{"client_msg_id":"m","body":"hi"}"#,
        ),
        (
            Method::POST,
            format!("/v1/direct/{peer}/messages"),
            r#"{"client_msg_id":"m","body":"hi"}"#,
        ),
        (
            Method::POST,
            "/v1/admin/users:batch".into(),
            r#"{"users":[{"username":"a"}]}"#,
        ),
    ]
}

/// A body: arbitrary bytes, or a valid body with bytes changed or cut.
fn arb_body(valid: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<prop::sample::Index>(),
        )
            .prop_map(move |(flips, cut)| {
                let mut bytes = valid.as_bytes().to_vec();
                for (at, byte) in flips {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                bytes
            }),
    ]
}

#[test]
fn json_bodies_never_make_the_server_fail() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let node = runtime.block_on(common::start(ServerOptions {
        http_requests: RequestLimits {
            rate_per_sec: 1_000_000,
            burst: 1_000_000,
            ..RequestLimits::default()
        },
        ..ServerOptions::default()
    }));
    let (token, group, peer) = runtime.block_on(async {
        let group = node.group_of("fuzz", &[1, 2]).await;
        (node.token(1), group, 2u64)
    });
    let base = format!("http://{}", node.server.http_addr().expect("http"));
    let admin = node.server.auth().admin_token();
    let client = reqwest::Client::new();

    for (method, path, valid) in routes(group, peer) {
        let bearer = if path.starts_with("/v1/admin") {
            admin.clone()
        } else {
            token.clone()
        };
        // Sign-ups hash a password per valid body: fewer cases there.
        let cases = if path == "/v1/users" || path == "/v1/sessions" {
            24
        } else {
            64
        };
        let mut runner = TestRunner::new(Config::with_cases(cases));
        runner
            .run(&arb_body(valid), |body| {
                let status = runtime.block_on(async {
                    let r = client
                        .request(method.clone(), format!("{base}{path}"))
                        .bearer_auth(&bearer)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the node answers");
                    let status = r.status().as_u16();
                    if status >= 400 {
                        let error: serde_json::Value = r.json().await.expect("an error body");
                        assert!(error["error"]["code"].is_i64(), "{path}: {error}");
                    }
                    status
                });
                prop_assert!(
                    status < 500 || status == 503,
                    "{} {}: {}",
                    method,
                    path,
                    status
                );
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    }
    let health = runtime.block_on(async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status()
    });
    assert_eq!(health, 200);
}
