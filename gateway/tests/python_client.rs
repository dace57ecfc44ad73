//! A client in another language: `tests/python/chat_client.py` signs up,
//! logs in, chats over `/ws` with the JSON subprotocol with a Rust client,
//! goes offline, reconnects and syncs.
//!
//! Needs `python3` with websocket-client (Debian: `python3-websocket`;
//! `scripts/test` installs it). Without it the test says it skipped, unless
//! `HANMADI_REQUIRE_PYTHON=1`, which makes that a failure.

#[allow(dead_code)]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Transport;
use hanmadi_client::{Event, Target};
use hanmadi_gateway::ServerOptions;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// A Python with websocket-client: `HANMADI_PYTHON`, else the system's.
fn python() -> Option<String> {
    let candidates = match std::env::var("HANMADI_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["/usr/bin/python3".to_owned(), "python3".to_owned()],
    };
    candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import websocket"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_chats_with_a_rust_client() {
    let Some(python) = python() else {
        assert!(
            std::env::var("HANMADI_REQUIRE_PYTHON").is_err(),
            "HANMADI_REQUIRE_PYTHON is set but no python3 with websocket-client was found"
        );
        println!("skipped: no python3 with websocket-client (apt install python3-websocket)");
        return;
    };
    let node = common::start(ServerOptions::default()).await;
    let http = node.server.http_addr().expect("http listener");
    node.user(7).await;
    let (bob, mut bob_deliveries) = node.connect(7, "rust", Transport::Tcp).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/chat_client.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(format!("http://{http}"))
        .arg("7")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the Python client answers within 20 s")
            .expect("read")
            .expect("the Python client exited early")
    };

    let ready = next_line().await;
    let alice: u64 = ready
        .strip_prefix("READY ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("expected READY <user id>, got {ready:?}"));
    assert_eq!(next_line().await, "SENT");
    let hello = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), bob_deliveries.recv())
            .await
            .expect("a delivery within 10 s")
            .expect("open");
        if let Event::Deliver { message, .. } = event {
            break message;
        }
    };
    assert_eq!(
        (hello.sender, hello.body.as_str()),
        (alice, "hello from python")
    );
    bob.send(Target::User(alice), "hello from rust")
        .await
        .expect("reply");

    assert_eq!(next_line().await, "OFFLINE");
    for i in 0..3 {
        bob.send(Target::User(alice), format!("offline {i}"))
            .await
            .expect("send while the Python client is away");
    }
    stdin.write_all(b"GO\n").await.expect("write");
    stdin.flush().await.expect("flush");
    assert_eq!(next_line().await, "OK");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the Python client exits")
        .expect("wait");
    assert!(status.success(), "the Python client failed: {status}");
}
