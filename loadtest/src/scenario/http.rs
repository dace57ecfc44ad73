//! `http`: users in pairs send over the HTTP API; each reads its inbox
//! with long-poll `GET /v1/sync`, as a client that cannot keep a socket
//! would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use super::sockets::{direct_shape, measured_window};
use super::{run_config, run_id, spawn_ticker};
use crate::cli::Common;
use crate::control::Control;
use crate::ledger::{Body, Received};
use crate::load::{HttpSender, Sender};
use crate::report::Report;
use crate::stats::Stats;

/// How long one long-poll waits for news, ms.
const WAIT_MS: u64 = 5000;

/// Entries per sync answer.
const SYNC_LIMIT: u32 = 500;

#[derive(Deserialize)]
struct SyncBatch {
    #[serde(default)]
    messages: Vec<Entry>,
    #[serde(default)]
    next: String,
}

#[derive(Deserialize)]
struct Entry {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    message_id: String,
    #[serde(default)]
    body: String,
}

/// `http`.
pub(super) async fn run(c: &Common, control: &Control) -> anyhow::Result<Report> {
    let shape = direct_shape(c, control, "http").await?;
    let stats = Arc::new(Stats::new());
    let run = run_id();
    let stopping = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(shape.users.len());
    for (i, user) in shape.users.iter().enumerate() {
        let (stats, control, token) = (Arc::clone(&stats), control.clone(), user.token.clone());
        let mut stopped = stopped.clone();
        readers.push(tokio::spawn(async move {
            let mut received = Received::default();
            let mut after = String::new();
            loop {
                let poll = control
                    .client()
                    .get(control.url("/v1/sync"))
                    .bearer_auth(&token)
                    .query(&[
                        ("after", after.as_str()),
                        ("limit", &SYNC_LIMIT.to_string()),
                        ("wait_ms", &WAIT_MS.to_string()),
                    ])
                    .send();
                let response = tokio::select! {
                    r = poll => r,
                    _ = stopped.changed() => break,
                };
                let batch = match response {
                    Ok(r) if r.status().is_success() => r.json::<SyncBatch>().await,
                    Ok(r) => {
                        tracing::warn!(reader = i, status = %r.status(), "long-poll refused");
                        stats.other_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(reader = i, "long-poll failed: {e}");
                        stats.other_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(batch) = batch else {
                    stats.other_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                for entry in &batch.messages {
                    let Some(body) = Body::parse(&entry.message.body) else {
                        continue;
                    };
                    let Ok(id) = entry.message.message_id.parse::<u64>() else {
                        continue;
                    };
                    if body.run == run {
                        received.record(body.conversation, id);
                        stats.record_delivery(i, body.due_us);
                    }
                }
                if !batch.next.is_empty() {
                    after = batch.next;
                }
            }
            received
        }));
    }
    let senders = shape
        .users
        .iter()
        .map(|u| {
            Sender::Http(HttpSender {
                client: control.client().clone(),
                base: control.url(""),
                token: u.token.clone(),
            })
        })
        .collect();
    let load = shape.load(run, senders, c, &stats);
    let (ticker, bar) = spawn_ticker(Arc::clone(&stats), c, control);
    let mut report = Report {
        config: run_config(c, shape.users.len(), 1),
        ..Report::default()
    };
    report.config.transport = "http".into();
    report.config.encoding = "json".into();
    measured_window(c, control, &load, &mut report).await?;
    ticker.abort();
    bar.finish_and_clear();
    stopping.store(true, Ordering::Relaxed);
    let _ = stop.send(true);
    shape.reckon(load, readers, &mut report).await?;
    Ok(report)
}
