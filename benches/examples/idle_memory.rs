//! Server memory per idle, authenticated connection: starts the `hanmadi`
//! binary, opens N connections (each says `Hello` and then stays idle), and
//! reads the server's resident set size before and after.
//!
//! ```sh
//! cargo build --release --bin hanmadi
//! cargo run --release -p hanmadi-benches --example idle_memory -- 10000 tcp
//! cargo run --release -p hanmadi-benches --example idle_memory -- 10000 tls
//! cargo run --release -p hanmadi-benches --example idle_memory -- 10000 ws
//! cargo run --release -p hanmadi-benches --example idle_memory -- 10000 wss
//! ```
//!
//! `ws` and `wss` speak binary WebSocket to the HTTP and HTTPS listeners.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hanmadi_client::{Client, ClientConfig, Encoding, TlsOptions};
use hanmadi_gateway::auth::TokenIssuer;

const SECRET: &str = "idle-memory-secret-0123456789abcdef";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let transport = args.next().unwrap_or_else(|| "tcp".to_owned());
    let tls = matches!(transport.as_str(), "tls" | "wss");
    let websocket = matches!(transport.as_str(), "ws" | "wss");
    let exe = std::env::current_exe().expect("exe");
    let hanmadi = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("hanmadi"))
        .expect("target dir");
    let rt = hanmadi_benches::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let store = hanmadi_benches::open_store(&dir.path().join("store"));
        hanmadi_benches::create_users(&store, n).await;
    });
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    hanmadi_gateway::tls::generate_self_signed(&["localhost".into()], &cert, &key).expect("cert");
    let mut child = Command::new(&hanmadi)
        .args(["serve", "--tcp", "127.0.0.1:0", "--tls", "127.0.0.1:0"])
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--secret",
            SECRET,
        ])
        .args(["--max-conns-per-ip", "100000"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", hanmadi.display()));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addrs = std::collections::HashMap::new();
    while addrs.len() < 4 {
        let line = lines.next().expect("listener line").expect("read");
        if let Some((kind, addr)) = line
            .strip_prefix("listening ")
            .and_then(|l| l.split_once(' '))
        {
            addrs.insert(kind.to_owned(), addr.to_owned());
        }
    }
    let listener = match transport.as_str() {
        "ws" => "http",
        "wss" => "https",
        other => other,
    };
    let addr = addrs
        .get(listener)
        .unwrap_or_else(|| panic!("no {listener} listener"))
        .clone();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let issuer = TokenIssuer::new(SECRET.as_bytes());
    let trust = hanmadi_gateway::tls::client_config_trusting(&cert).expect("trust");
    let clients = rt.block_on(async {
        let mut clients = Vec::with_capacity(n as usize);
        for u in 1..=n {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let token = issuer.issue(u, now, Duration::from_secs(3600));
            let mut config = ClientConfig::new(addr.clone(), token, "idle");
            if tls {
                config = config.with_tls(TlsOptions {
                    server_name: "localhost".into(),
                    config: Arc::clone(&trust),
                });
            }
            if websocket {
                config = config.with_websocket(Encoding::Binary);
            }
            config.event_capacity = 16;
            clients.push(Client::connect(config).await.expect("connect"));
        }
        clients
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!(
        "{n} idle {transport} connections: server RSS {before} KiB -> {after} KiB, {per:.0} bytes per connection"
    );
    // A drain, not a kill, so profilers wrapped around the server can write
    // their reports.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    drop(clients);
}
