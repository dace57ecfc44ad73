//! The HTTP listener's operational routes over a real socket.

#[allow(dead_code)]
mod common;

use hanmadi_gateway::http::limits::RequestLimits;
use hanmadi_gateway::ServerOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET; returns the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics() {
    let node = common::start(ServerOptions::default()).await;
    let addr = node.server.http_addr().expect("http listener");
    let token = node.user(1).await;
    let mut raw = common::Raw::connect(&node).await;
    raw.hello(&token).await;

    let (status, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("hanmadi_connections{transport=\"tcp\"} 1"),
        "{body}"
    );
    assert!(body.contains("hanmadi_frames_in_total"), "{body}");
    assert!(body.contains("hanmadi_commit_seconds"), "{body}");
    let (status, _) = get(addr, "/nope").await;
    assert_eq!(status, 404);
}

/// A connection that sends half a request, or nothing after its last one,
/// is closed at the header deadline; one past the per-address limit at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_excess_http_connections_are_closed() {
    let node = common::start(ServerOptions {
        http_header_timeout: std::time::Duration::from_millis(300),
        registry: hanmadi_gateway::registry::RegistryLimits {
            per_ip: 3,
            ..ServerOptions::default().registry
        },
        ..ServerOptions::default()
    })
    .await;
    let addr = node.server.http_addr().expect("http listener");
    let mut half = tokio::net::TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .expect("write");
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    // Two connections are open; a third fits, a fourth does not.
    let third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Refused at accept with a reset, which the client may meet already
    // at connect.
    if let Ok(mut fourth) = tokio::net::TcpStream::connect(addr).await {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            fourth.read_to_end(&mut buf),
        )
        .await
        .expect("the fourth connection is closed at once");
        assert!(closed.is_err() || buf.is_empty(), "{buf:?}");
    }
    assert!(
        node.server
            .metrics()
            .render()
            .contains("reason=\"too_many_from_address\"} 1"),
        "the fourth was refused for its address"
    );
    drop(third);
    for (name, mut stream) in [("half a request", half), ("an idle keep-alive", idle)] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut buf),
        )
        .await;
        assert!(read.is_ok(), "{name}: still open after 5 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_an_addresss_rate_are_refused_with_429() {
    let node = common::start(ServerOptions {
        http_requests: RequestLimits {
            rate_per_sec: 1,
            burst: 5,
            ..RequestLimits::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let addr = node.server.http_addr().expect("http listener");
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/discovery");

    let mut allowed = 0;
    let refused = loop {
        let r = client.get(&url).send().await.expect("request");
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200);
        allowed += 1;
        // One token a second comes back; a bucket of 5 runs dry long
        // before 50 requests, however slow the machine.
        assert!(allowed < 50, "never limited");
    };
    assert!(allowed >= 5, "only {allowed} requests before the limit");
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await.expect("error body");
    assert_eq!(body["error"]["code"], 1001, "{body}");

    // Health checks and scrapes are not limited.
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_answered_503_in_the_error_shape() {
    let node = common::start(ServerOptions {
        http_requests: RequestLimits {
            // An argon2id hash takes far longer than a millisecond.
            deadline: std::time::Duration::from_millis(1),
            ..RequestLimits::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let addr = node.server.http_addr().expect("http listener");
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/users"))
        .json(&serde_json::json!({"username": "slow", "password": "correct horse"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = r.json().await.expect("error body");
    assert_eq!(body["error"]["code"], 1002, "{body}");
}

/// Writes `head` and `body` (the node may answer and close before all of
/// it is written) and reads the node's answer to the end; returns its
/// status line's code, or `None` when it closed without one.
async fn raw_exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the node answers or closes within 10 s");
    if read.is_err() && raw.is_empty() {
        return None;
    }
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// A chunked body past the 64 KiB request limit, with no `Content-Length`
/// to refuse it by: `413` once the limit is passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_chunked_body_is_refused_with_413() {
    let node = common::start(ServerOptions::default()).await;
    let addr = node.server.http_addr().expect("http listener");
    let head = "POST /v1/users HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
    let body = format!("{}0\r\n\r\n", chunk.repeat(10));
    assert_eq!(raw_exchange(addr, head, body.as_bytes()).await, Some(413));
}

/// A request whose body stops coming: answered `503` at the request
/// deadline, not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_coming_is_answered_at_the_deadline() {
    let node = common::start(ServerOptions {
        http_requests: RequestLimits {
            deadline: std::time::Duration::from_millis(300),
            ..RequestLimits::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let addr = node.server.http_addr().expect("http listener");
    let head = "POST /v1/users HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\nConnection: close\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(b"{\"username\": ").await.expect("write");
    let mut raw = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut raw),
    )
    .await
    .expect("answered within 10 s")
    .expect("read");
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
}

/// Headers past what the node parses: refused (`431`) or closed, never
/// held, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let node = common::start(ServerOptions::default()).await;
    let addr = node.server.http_addr().expect("http listener");
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(1 << 20)
    );
    let status = raw_exchange(addr, &head, b"").await;
    assert!(matches!(status, None | Some(431)), "{status:?}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
}
