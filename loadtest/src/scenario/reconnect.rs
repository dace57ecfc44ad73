//! `reconnect`: direct traffic through reconnecting clients; halfway
//! through the measured window every connection is dropped at once, and
//! each client reconnects and syncs from its last cursor. What the clients
//! hand their users must still be every acknowledged message exactly once,
//! in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use hanmadi_client::{ReconnectOptions, ReconnectingClient};

use super::sockets::{direct_shape, measured_window};
use super::{run_config, run_id, spawn_ticker};
use crate::cli::Common;
use crate::control::Control;
use crate::ledger::{Body, Received};
use crate::load::Sender;
use crate::net::Dialer;
use crate::report::Report;
use crate::stats::Stats;

/// `reconnect`.
pub(super) async fn run(c: &Common, control: &Control) -> anyhow::Result<Report> {
    let shape = direct_shape(c, control, "reconnect").await?;
    let dialer = Dialer::new(c, control).await?;
    let stats = Arc::new(Stats::new());
    let run = run_id();
    let stopping = Arc::new(AtomicBool::new(false));
    let clients: Vec<ReconnectingClient> = stream::iter(shape.users.iter().enumerate())
        .map(|(i, u)| {
            let config = dialer.config(i, &u.token);
            async move {
                ReconnectingClient::start(config, ReconnectOptions::default())
                    .await
                    .context("starting a reconnecting client")
            }
        })
        .buffered(c.connect_concurrency.max(1))
        .try_collect()
        .await?;
    let handles: Vec<_> = clients.iter().map(ReconnectingClient::handle).collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut receivers = Vec::with_capacity(clients.len());
    for (i, mut client) in clients.into_iter().enumerate() {
        let (stats, stopping) = (Arc::clone(&stats), Arc::clone(&stopping));
        let mut stopped = stopped.clone();
        receivers.push(tokio::spawn(async move {
            let mut received = Received::default();
            loop {
                let next = tokio::select! {
                    next = client.next() => next,
                    _ = stopped.changed() => break,
                };
                let Some(next) = next else { break };
                match next {
                    Ok(r) => {
                        let Some(body) = Body::parse(&r.message.body) else {
                            continue;
                        };
                        if body.run == run {
                            received.record(body.conversation, r.message.message_id);
                            stats.record_delivery(i, body.due_us);
                        }
                    }
                    Err(e) => {
                        if !stopping.load(Ordering::Relaxed) {
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(connection = i, "reconnecting client gave up: {e}");
                        }
                        break;
                    }
                }
            }
            client.close().await;
            received
        }));
    }
    let senders = handles.iter().cloned().map(Sender::Reconnecting).collect();
    let load = shape.load(run, senders, c, &stats);
    // The storm: halfway through the window, every connection drops at once.
    let storm = {
        let handles = handles.clone();
        let at = c.warmup + c.duration / 2;
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let started = tokio::time::Instant::now();
            for h in &handles {
                if let Some(client) = h.client() {
                    client.close().await;
                }
            }
            // Back when every client holds a live connection again.
            loop {
                let up = handles
                    .iter()
                    .filter(|h| h.client().is_some_and(|c| !c.is_closed()))
                    .count();
                if up == handles.len() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            started.elapsed().as_secs_f64()
        })
    };
    let (ticker, bar) = spawn_ticker(Arc::clone(&stats), c, control);
    let mut report = Report {
        config: run_config(c, handles.len(), dialer.endpoint_count()),
        ..Report::default()
    };
    measured_window(c, control, &load, &mut report).await?;
    let storm_seconds = storm.await.context("the storm task failed")?;
    // Deliveries that were in flight during the storm come through sync.
    load.drain(c.drain).await;
    ticker.abort();
    bar.finish_and_clear();
    stopping.store(true, Ordering::Relaxed);
    let _ = stop.send(true);
    shape.reckon(load, receivers, &mut report).await?;
    report.extra.insert(
        "storm_reconnect_seconds".into(),
        serde_json::json!(storm_seconds),
    );
    Ok(report)
}
