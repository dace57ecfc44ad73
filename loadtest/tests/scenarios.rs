//! Each scenario of `hanmadi-loadtest` for a few seconds against a real
//! node on 127.0.0.1:0, and proof that the tool fails when the server
//! loses or repeats a delivery (a proxy in front of the node drops or
//! doubles one `Deliver` frame).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hanmadi_gateway::{Listeners, Server, ServerOptions};
use hanmadi_proto::pb::{server_frame, ServerFrame};
use hanmadi_proto::prost::Message as _;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "load test secret, thirty-two bytes or more";

struct Node {
    server: Server<EmbeddedKv<FjallBackend>>,
    dir: tempfile::TempDir,
    cert: PathBuf,
}

async fn start() -> Node {
    start_with(ServerOptions::default()).await
}

/// A node like `hanmadi serve` starts one (a single writer on the embedded
/// store), with `options` but for its secret and HTTP request budget.
async fn start_with(options: ServerOptions) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    hanmadi_gateway::tls::generate_self_signed(&["localhost".into()], &cert, &key).unwrap();
    let tls = hanmadi_gateway::tls::server_config(&cert, &key).unwrap();
    let https_tls = hanmadi_gateway::tls::server_config_with_alpn(
        &cert,
        &key,
        &[hanmadi_gateway::tls::ALPN_HTTP_1_1],
    )
    .unwrap();
    let bind = || TcpListener::bind("127.0.0.1:0");
    let backend = FjallBackend::open(&dir.path().join("store"), FjallOptions::default()).unwrap();
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).unwrap();
    let server = Server::start(
        ChatStore::new(kv, StoreConfig::single_node()),
        Listeners {
            tcp: Some(bind().await.unwrap()),
            tls: Some((bind().await.unwrap(), tls)),
            http: Some(bind().await.unwrap()),
            https: Some((bind().await.unwrap(), https_tls)),
            link: None,
        },
        ServerOptions {
            secret: SECRET.as_bytes().to_vec(),
            // The tool drives the HTTP API from one address, far faster
            // than the per-address default allows.
            http_requests: hanmadi_gateway::http::limits::RequestLimits {
                rate_per_sec: 1_000_000,
                burst: 1_000_000,
                ..Default::default()
            },
            ..options
        },
    );
    Node { server, dir, cert }
}

impl Node {
    fn http(&self) -> String {
        format!("http://{}", self.server.http_addr().unwrap())
    }
}

/// Runs the tool; its exit code and its JSON report.
async fn loadtest(dir: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let json = dir.join(format!("report-{}.json", rand_suffix()));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hanmadi-loadtest"))
        .args(args)
        .args(["--secret", SECRET, "--quiet", "--json"])
        .arg(&json)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the tool finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    let code = output.status.code().unwrap_or(-1);
    let report = std::fs::read_to_string(&json)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (code, report)
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn n(report: &serde_json::Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

/// What every clean run must show.
fn assert_clean(code: i32, report: &serde_json::Value) {
    assert_eq!(code, 0, "{report}");
    assert!(n(report, "acked") > 0.0, "{report}");
    assert!(n(report, "delivered") >= n(report, "acked"), "{report}");
    assert_eq!(n(report, "lost"), 0.0, "{report}");
    assert_eq!(n(report, "duplicated"), 0.0, "{report}");
    assert_eq!(n(report, "reordered"), 0.0, "{report}");
    assert!(n(report, "p99_ms") > 0.0, "{report}");
}

const SHORT: [&str; 6] = ["--duration", "1500ms", "--warmup", "300ms", "--drain", "5s"];

/// A short run of `scenario` against `node`, with `args` besides.
async fn short_run(node: &Node, scenario: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let http = node.http();
    let mut all = vec![scenario, "--http", &http];
    all.extend(args);
    all.extend(SHORT);
    loadtest(node.dir.path(), &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_over_tcp_and_json_websocket() {
    let node = start().await;
    for transport in [
        &["--transport", "tcp"][..],
        &["--transport", "ws", "--encoding", "json"],
    ] {
        let mut args = vec!["--connections", "40", "--rate", "400"];
        args.extend(transport);
        let (code, report) = short_run(&node, "direct", &args).await;
        assert_clean(code, &report);
        assert_eq!(report["config"]["connections"], 40);
        assert!(
            report["server"]["cpu_us_per_message"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        let series = report["timeseries"].as_array().unwrap();
        assert!(!series.is_empty());
        assert!(
            series
                .iter()
                .any(|s| s["server_rss_mib"].as_f64().unwrap() > 1.0),
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_over_tls_with_an_html_report() {
    let node = start().await;
    let cert = node.cert.display().to_string();
    let report_dir = node.dir.path().join("html");
    let report_arg = report_dir.display().to_string();
    let mut args = vec![
        "--transport",
        "tls",
        "--ca",
        &cert,
        "--tls-name",
        "localhost",
    ];
    args.extend([
        "--connections",
        "20",
        "--rate",
        "200",
        "--report",
        &report_arg,
    ]);
    let (code, report) = short_run(&node, "direct", &args).await;
    assert_clean(code, &report);
    let html = std::fs::read_to_string(report_dir.join("index.html")).unwrap();
    assert!(html.contains("throughput.svg"));
    for plot in [
        "throughput.svg",
        "latency.svg",
        "distribution.svg",
        "server.svg",
    ] {
        let svg = std::fs::read_to_string(report_dir.join(plot)).unwrap();
        assert!(svg.starts_with("<svg"), "{plot}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fan_out() {
    let node = start().await;
    let args = ["--groups", "4", "--members", "10", "--rate", "100"];
    let (code, report) = short_run(&node, "group", &args).await;
    assert_clean(code, &report);
    // Every member's device, the sender's included, gets each message.
    assert_eq!(
        n(&report, "expected"),
        n(&report, "acked") * 10.0,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_the_in_flight_cap_wait_for_acks_and_are_all_answered() {
    let node = start().await;
    // One send in flight per pacer, due every millisecond: most sends fall
    // due while the one before still waits for its fsync.
    let args = [
        "--connections",
        "10",
        "--rate",
        "2000",
        "--in-flight",
        "2",
        "--workers",
        "1",
    ];
    let (code, report) = short_run(&node, "direct", &args).await;
    assert_clean(code, &report);
    assert_eq!(report["config"]["tool_workers"], 1, "{report}");
    assert!(n(&report, "held_by_in_flight_cap") > 0.0, "{report}");
    assert_eq!(n(&report, "acked"), n(&report, "sent"), "{report}");
    assert_eq!(n(&report, "delivered"), n(&report, "expected"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_report_memory() {
    let node = start().await;
    let http = node.http();
    let args = [
        "idle",
        "--http",
        &http,
        "--connections",
        "200",
        "--duration",
        "500ms",
    ];
    let (code, report) = loadtest(node.dir.path(), &args).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["extra"]["connections_open_at_end"], 200);
    assert!(report["extra"]["server_rss_after_bytes"].as_f64().unwrap() > 1e6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_loses_nothing() {
    let node = start().await;
    let args = ["--connections", "40", "--rate", "400"];
    let (code, report) = short_run(&node, "reconnect", &args).await;
    assert_clean(code, &report);
    assert!(report["extra"]["storm_reconnect_seconds"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sends_and_long_polls() {
    let node = start().await;
    let args = ["--connections", "20", "--rate", "200"];
    let (code, report) = short_run(&node, "http", &args).await;
    assert_clean(code, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_reports_the_highest_rate_that_held() {
    let node = start().await;
    let http = node.http();
    let args = [
        "direct",
        "--http",
        &http,
        "--connections",
        "20",
        "--rate",
        "200",
        "--find-max",
        "--step-duration",
        "700ms",
        "--max-rate",
        "500",
        "--step-factor",
        "1.5",
        "--p99-ms",
        "1000",
        "--warmup",
        "200ms",
        "--drain",
        "3s",
    ];
    let (code, report) = loadtest(node.dir.path(), &args).await;
    assert_eq!(code, 0, "{report}");
    // Steps of 200, 300 and 450/s (675 is above --max-rate): the search
    // stops at the first that fails, and reports the last that held. A
    // busy machine may fail a step early; what is reported must agree.
    let steps = report["find_max"]["steps"].as_array().unwrap();
    let rates: Vec<f64> = steps.iter().map(|s| s["rate"].as_f64().unwrap()).collect();
    assert_eq!(rates, [200.0, 300.0, 450.0][..rates.len()], "{report}");
    let held: Vec<bool> = steps.iter().map(|s| s["held"].as_bool().unwrap()).collect();
    let first_failed = held.iter().position(|h| !h);
    assert!(first_failed.is_none_or(|i| i == held.len() - 1), "{report}");
    assert_eq!(first_failed.is_none(), rates.len() == 3, "{report}");
    let best = steps
        .iter()
        .rev()
        .find(|s| s["held"] == true)
        .map(|s| s["rate"].as_f64().unwrap());
    let max_rate = report["find_max"]["max_rate"].as_f64().unwrap();
    assert_eq!(max_rate, best.unwrap_or(0.0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_the_servers_rate_are_counted_as_refused() {
    // 20 frames/s per connection, and the tool offers 40 per connection.
    let node = start_with(ServerOptions {
        conn: hanmadi_gateway::conn::ConnConfig {
            rate_per_sec: 20,
            rate_burst: 20,
            ..Default::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let args = ["--connections", "10", "--rate", "400"];
    let (code, report) = short_run(&node, "direct", &args).await;
    assert_eq!(code, 0, "refusals lose nothing: {report}");
    assert!(
        report["errors"]["rate_limited"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(n(&report, "acked") > 0.0, "{report}");
    assert_eq!(
        n(&report, "sent"),
        n(&report, "acked") + report["errors"]["rate_limited"].as_f64().unwrap(),
        "{report}"
    );
    assert_eq!(
        n(&report, "lost") + n(&report, "duplicated") + n(&report, "reordered"),
        0.0,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_no_server_and_a_wrong_secret() {
    let (code, _) = loadtest(
        Path::new("/tmp"),
        &["direct", "--http", "http://127.0.0.1:1"],
    )
    .await;
    assert_eq!(code, 2);
    let node = start().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hanmadi-loadtest"))
        .args([
            "direct",
            "--http",
            &node.http(),
            "--secret",
            "not the node's secret at all, no",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("--secret"),
        "{stderr}"
    );
}

/// What the proxy does to the first `Deliver` frame past the threshold.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Drop,
    Duplicate,
}

/// A TCP proxy in front of the node that passes frames through, except one
/// `Deliver` (the `after`-th overall) that it drops or sends twice.
async fn faulty_proxy(upstream: SocketAddr, fault: Fault, after: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut buf = BytesMut::new();
                loop {
                    if sr.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    while buf.len() >= 4 {
                        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                        if buf.len() < 4 + len {
                            break;
                        }
                        let frame = buf.split_to(4 + len);
                        let decoded = ServerFrame::decode(&frame[4..]).unwrap();
                        let mut copies = 1;
                        if matches!(decoded.kind, Some(server_frame::Kind::Deliver(_)))
                            && seen.fetch_add(1, Ordering::Relaxed) == after
                        {
                            copies = match fault {
                                Fault::Drop => 0,
                                Fault::Duplicate => 2,
                            };
                        }
                        for _ in 0..copies {
                            if cw.write_all(&frame).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A `direct` run through a proxy that commits `fault` on the 50th
/// delivery: the tool's exit code and report.
async fn run_through(fault: Fault) -> (i32, serde_json::Value) {
    let node = start().await;
    let proxy = faulty_proxy(node.server.tcp_addr().unwrap(), fault, 50)
        .await
        .to_string();
    let args = ["--target", &proxy, "--connections", "10", "--rate", "200"];
    short_run(&node, "direct", &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delivery_fails_the_run() {
    let (code, report) = run_through(Fault::Drop).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(n(&report, "lost"), 1.0, "{report}");
    assert_eq!(n(&report, "duplicated"), 0.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delivery_fails_the_run() {
    let (code, report) = run_through(Fault::Duplicate).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(n(&report, "duplicated"), 1.0, "{report}");
    assert_eq!(n(&report, "lost"), 0.0, "{report}");
}

/// `attack --kind KIND` for a second against a node started with
/// `options`; its report's `extra`.
async fn attack(options: ServerOptions, kind: &str, args: &[&str]) -> serde_json::Value {
    let node = start_with(options).await;
    let http = node.http();
    let mut all = vec![
        "attack",
        "--kind",
        kind,
        "--http",
        &http,
        "--duration",
        "1s",
    ];
    all.extend(args);
    let (code, report) = loadtest(node.dir.path(), &all).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["scenario"], format!("attack {kind}"));
    report["extra"].clone()
}

/// How often the node answered the attack with `outcome` (summed over
/// outcomes that contain it).
fn answered(extra: &serde_json::Value, outcome: &str) -> u64 {
    extra["outcomes"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains(outcome))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_bad_frames_is_refused_with_its_codes() {
    let extra = attack(
        ServerOptions::default(),
        "bad-frames",
        &["--connections", "4"],
    )
    .await;
    assert!(answered(&extra, "FRAME_TOO_LARGE") > 0, "{extra}");
    assert!(answered(&extra, "MALFORMED_FRAME") > 0, "{extra}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_receipts_is_rate_limited() {
    let args = ["--connections", "4", "--per-account", "2"];
    let extra = attack(ServerOptions::default(), "receipts", &args).await;
    assert!(answered(&extra, "RATE_LIMITED") > 0, "{extra}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_sync_loop_reads_pages() {
    let args = [
        "--connections",
        "4",
        "--per-account",
        "2",
        "--fill",
        "20",
        "--body-size",
        "15000",
    ];
    let extra = attack(ServerOptions::default(), "sync-loop", &args).await;
    assert!(extra["served"].as_u64().unwrap() > 0, "{extra}");
    assert!(extra["served_mib"].as_f64().unwrap() > 0.0, "{extra}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_self_dm_meets_the_users_send_allowance() {
    let args = ["--connections", "4", "--body-size", "1000"];
    let extra = attack(ServerOptions::default(), "self-dm", &args).await;
    assert!(extra["served"].as_u64().unwrap() > 0, "{extra}");
    assert!(answered(&extra, "RATE_LIMITED") > 0, "{extra}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_signup_leaves_log_ins_working() {
    let extra = attack(ServerOptions::default(), "signup", &["--connections", "4"]).await;
    assert!(answered(&extra, "HTTP 201") > 0, "{extra}");
    assert!(extra["login_ok"].as_u64().unwrap() > 0, "{extra}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_half_open_meets_the_handshake_deadline() {
    let options = ServerOptions {
        conn: hanmadi_gateway::conn::ConnConfig {
            handshake_timeout: Duration::from_millis(200),
            ..Default::default()
        },
        ..ServerOptions::default()
    };
    let extra = attack(options, "half-open", &["--connections", "20"]).await;
    assert!(answered(&extra, "HANDSHAKE_TIMEOUT") > 0, "{extra}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_slowloris_meets_the_header_deadline() {
    let options = ServerOptions {
        http_header_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let extra = attack(options, "slowloris", &["--connections", "20"]).await;
    assert!(extra["closed_by_server"].as_u64().unwrap() > 0, "{extra}");
}
