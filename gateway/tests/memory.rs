//! The real `hanmadi` binary's resident memory: many sign-ups (an argon2id
//! hash of ~19 MiB each) leave the node's RSS within a fixed bound instead of
//! growing with every hash, and the store's memory is capped by its options
//! and exported for operators to watch.

use std::time::Duration;

mod binary;

use binary::Serve;
use futures::stream::{self, StreamExt as _};

const SECRET: &str = "memory-test-secret-0123456789abcdef0123";

/// Sign-ups in the test. With glibc's arenas keeping every hash's memory a
/// node grew by ~0.86 MiB per sign-up (well over the bound after this
/// many); now 1,000 sign-ups grow it by ~25 MiB (docs/PERFORMANCE.md).
const SIGN_UPS: usize = 150;

/// Largest RSS growth allowed over [`SIGN_UPS`] sign-ups: a few hashes'
/// worth of memory in flight, not one per sign-up.
const MAX_GROWTH_KIB: u64 = 96 * 1024;

/// A field of `/proc/PID/status` in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc status")
}

/// The real binary with only its HTTP listener, on a free port, and `extra`
/// options.
fn http_node(data: &std::path::Path, extra: &[&str]) -> Serve {
    let mut args = vec![
        "--http",
        "127.0.0.1:0",
        "--tcp",
        "off",
        "--tls",
        "off",
        "--https",
        "off",
        "--secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    Serve::start(data, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_bounded_over_many_sign_ups() {
    let data = tempfile::tempdir().expect("tempdir");
    let node = http_node(
        data.path(),
        &[
            "--max-password-hashes",
            "4",
            "--http-rate-per-sec",
            "100000",
            "--http-rate-burst",
            "100000",
        ],
    );
    let pid = node.pid();
    let addr = node.listening("http");

    // Four addresses: a node hashes one password at a time per address,
    // and the four hashing threads should all be busy.
    let clients: Vec<reqwest::Client> = (1..=4u8)
        .map(|host| {
            reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 0, host]))
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client")
        })
        .collect();
    let sign_up = |i: usize| {
        let client = clients[i % clients.len()].clone();
        let url = format!("http://{addr}/v1/users");
        async move {
            let r = client
                .post(url)
                .json(&serde_json::json!({"username": format!("rss{i}"), "password": "correct horse"}))
                .send()
                .await
                .expect("sign-up request");
            assert_eq!(r.status(), 201, "sign-up {i}");
        }
    };
    // A first round warms the allocator and the store up.
    stream::iter(0..8).for_each_concurrent(4, sign_up).await;
    let start = status_kib(pid, "VmRSS");
    stream::iter(8..8 + SIGN_UPS)
        .for_each_concurrent(4, sign_up)
        .await;
    let end = status_kib(pid, "VmRSS");
    let growth = end.saturating_sub(start);
    assert!(
        growth <= MAX_GROWTH_KIB,
        "RSS grew by {growth} KiB over {SIGN_UPS} sign-ups ({start} -> {end} KiB)"
    );
}

/// The value of an unlabelled series in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_cache_is_capped_by_its_option_and_exported() {
    let data = tempfile::tempdir().expect("tempdir");
    let node = http_node(data.path(), &["--store-cache-mb", "8"]);
    let addr = node.listening("http");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    assert_eq!(
        metric(&text, "hanmadi_store_cache_capacity_bytes"),
        Some(8 << 20),
        "{text}"
    );
    let cached = metric(&text, "hanmadi_store_cache_bytes").expect("cache gauge");
    assert!(cached <= 8 << 20, "cache holds {cached} bytes over its cap");
    assert!(
        metric(&text, "hanmadi_store_write_buffer_bytes").is_some(),
        "{text}"
    );
}
