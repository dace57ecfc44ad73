//! The HTTP listener's operational routes over a real socket.

#[allow(dead_code)]
mod common;

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
