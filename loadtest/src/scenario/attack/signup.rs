//! `signup`: HTTP sign-ups as fast as they are answered, while a log-in
//! is tried every 100 ms from an address the flood does not use.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;

use super::{Attack, Tally, Target as Node};
use crate::cli::AttackArgs;
use crate::control::Control;

/// How often the probe logs in.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// A sign-up's password: long enough for the node's rule.
const PASSWORD: &str = "attack password 123";

/// `signup`: `--connections` concurrent sign-up loops spread over the
/// source addresses, and the log-in probe.
pub(super) async fn run(
    a: &AttackArgs,
    control: &Control,
    node: &Node,
    tally: &Arc<Tally>,
) -> anyhow::Result<Attack> {
    let base = format!("http://{}", node.http);
    let run = rand::random::<u32>();
    let probe_user = format!("probe{}x{run:08x}", a.common.seed);
    let created = control
        .client()
        .post(format!("{base}/v1/users"))
        .json(&json!({ "username": probe_user, "password": PASSWORD }))
        .send()
        .await
        .context("signing up the log-in probe's account")?;
    anyhow::ensure!(
        created.status().is_success(),
        "signing up the log-in probe's account: {}",
        created.status()
    );
    let clients = node
        .sources
        .iter()
        .map(|ip| {
            reqwest::Client::builder()
                .local_address(*ip)
                .build()
                .context("an HTTP client")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut attack = Attack::default();
    for i in 0..a.common.connections {
        let (http, tally, base) = (
            clients[i % clients.len()].clone(),
            Arc::clone(tally),
            base.clone(),
        );
        attack.spawn(async move {
            for n in 0u64.. {
                let body =
                    json!({ "username": format!("f{run:08x}x{i:x}x{n:x}"), "password": PASSWORD });
                tally.attempts.fetch_add(1, Ordering::Relaxed);
                match http
                    .post(format!("{base}/v1/users"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) => {
                        if r.status().is_success() {
                            tally.served.fetch_add(1, Ordering::Relaxed);
                        }
                        tally.count(format!("HTTP {}", r.status().as_u16()));
                    }
                    Err(_) => tally.count("HTTP failed"),
                }
            }
        });
    }
    attack.spawn(probe(
        control.client().clone(),
        base,
        probe_user,
        Arc::clone(tally),
    ));
    Ok(attack)
}

/// Logs in every [`PROBE_EVERY`]; keeps the tally's `login_*` figures
/// current.
async fn probe(http: reqwest::Client, base: String, username: String, tally: Arc<Tally>) {
    let Ok(latency) = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3) else {
        return;
    };
    let latency = Mutex::new(latency);
    let (mut ok, mut refused) = (0u64, 0u64);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let answer = http
            .post(format!("{base}/v1/sessions"))
            .json(&json!({ "username": username, "password": PASSWORD }))
            .send()
            .await;
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match answer {
            Ok(r) if r.status().is_success() => {
                ok += 1;
                let _ = latency.lock().record(took.max(1));
            }
            Ok(r) => {
                refused += 1;
                tally.count(format!("login HTTP {}", r.status().as_u16()));
            }
            Err(_) => {
                refused += 1;
                tally.count("login failed");
            }
        }
        let h = latency.lock();
        let ms = |q: f64| (h.value_at_quantile(q) as f64 / 10.0).round() / 100.0;
        let mut extra = tally.extra.lock();
        extra.insert("login_ok".into(), ok.into());
        extra.insert("login_refused".into(), refused.into());
        extra.insert("login_p50_ms".into(), ms(0.5).into());
        extra.insert("login_p99_ms".into(), ms(0.99).into());
        extra.insert("login_max_ms".into(), ms(1.0).into());
    }
}
