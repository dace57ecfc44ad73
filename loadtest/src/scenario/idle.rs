//! `idle`: connections that say Hello and then only heartbeat; the
//! server's memory per connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use futures::stream::{self, StreamExt as _};
use hdrhistogram::Histogram;

use super::{fill_counters, prefix, run_config, spawn_ticker};
use crate::cli::Common;
use crate::control::Control;
use crate::net::{connect, Dialer};
use crate::report::Report;
use crate::stats::{ms, Stats};

/// `idle`.
pub(super) async fn run(c: &Common, control: &Control) -> anyhow::Result<Report> {
    let users = control.provision(&prefix(c, "idle"), c.connections).await?;
    let dialer = Dialer::new(c, control).await?;
    let stats = Arc::new(Stats::new());
    let before = control
        .usage(c.server_pid)
        .await
        .context("reading the server's memory")?;
    let mut handshakes =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let results: Vec<anyhow::Result<(_, std::time::Duration)>> =
        stream::iter(users.iter().enumerate())
            .map(|(i, u)| {
                let config = dialer.config(i, &u.token);
                async move {
                    let t = tokio::time::Instant::now();
                    let connection = connect(config).await?;
                    Ok((connection, t.elapsed()))
                }
            })
            .buffer_unordered(c.connect_concurrency.max(1))
            .collect()
            .await;
    let mut clients = Vec::with_capacity(results.len());
    for r in results {
        let ((client, deliveries), took) = r?;
        let _ = handshakes.record(crate::stats::micros(took).max(1));
        clients.push((client, deliveries));
    }
    let (ticker, bar) = spawn_ticker(Arc::clone(&stats), c, control);
    // Hold them idle; the client library pings when the line is silent.
    tokio::time::sleep(c.duration).await;
    let after = control
        .usage(c.server_pid)
        .await
        .context("reading the server's memory")?;
    let still_open = clients
        .iter()
        .filter(|(client, _)| !client.is_closed())
        .count();
    ticker.abort();
    bar.finish_and_clear();
    let n = clients.len();
    for (client, _) in clients {
        client.close().await;
    }
    stats
        .disconnects
        .fetch_add((n - still_open) as u64, Ordering::Relaxed);
    let mut report = Report {
        config: run_config(c, n, dialer.endpoint_count()),
        ..Report::default()
    };
    fill_counters(&mut report, &stats);
    let per_connection = (after.rss_bytes - before.rss_bytes) / n.max(1) as f64;
    let extra = &mut report.extra;
    extra.insert("connections_open_at_end".into(), still_open.into());
    extra.insert(
        "server_rss_before_bytes".into(),
        serde_json::json!(before.rss_bytes),
    );
    extra.insert(
        "server_rss_after_bytes".into(),
        serde_json::json!(after.rss_bytes),
    );
    extra.insert(
        "server_rss_per_connection_bytes".into(),
        serde_json::json!(per_connection.round()),
    );
    extra.insert(
        "handshake_p50_ms".into(),
        serde_json::json!(ms(&handshakes, 0.5)),
    );
    extra.insert(
        "handshake_p99_ms".into(),
        serde_json::json!(ms(&handshakes, 0.99)),
    );
    Ok(report)
}
