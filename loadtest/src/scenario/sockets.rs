//! `direct` and `group`: open-loop sends over plain connections, every
//! delivery checked, with an optional capacity search.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hanmadi_client::Target;
use tokio::task::JoinHandle;

use super::{fill_counters, fill_window, prefix, run_config, run_id, spawn_ticker, Snapshot};
use crate::cli::{Common, GroupArgs};
use crate::control::{Control, User};
use crate::ledger::{reckon, Acked, Received, BODY_HEADER_MAX};
use crate::load::{spawn_receiver, Load, Route, Sender};
use crate::net::Dialer;
use crate::report::{FindMax, Report, Step};
use crate::stats::{ms, Latencies, Stats};

/// Who talks to whom: each sender's route, the connections of each
/// conversation, and the conversations of each connection.
#[derive(Debug)]
pub(super) struct Shape {
    pub users: Vec<User>,
    pub routes: Vec<Route>,
    pub members: Vec<u32>,
    pub conversations_of: Vec<Vec<u32>>,
}

impl Shape {
    /// The run's load: these routes, sent through `senders` (by
    /// connection index).
    pub(super) fn load(
        &self,
        run: u32,
        senders: Vec<Sender>,
        c: &Common,
        stats: &Arc<Stats>,
    ) -> Arc<Load> {
        Arc::new(Load {
            run,
            clients: senders,
            routes: self.routes.clone(),
            members: self.members.clone(),
            body_size: c.body_size,
            in_flight: c.in_flight,
            stats: Arc::clone(stats),
            acked: Acked::new(self.members.len()),
            expected: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            seed: c.seed,
        })
    }

    /// Collects what each device received (its receiver must be ending)
    /// and checks it against what `load` had acknowledged.
    pub(super) async fn reckon(
        &self,
        load: Arc<Load>,
        receivers: Vec<JoinHandle<Received>>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let mut received = Vec::with_capacity(receivers.len());
        for r in receivers {
            received.push(r.await.context("a receiver task failed")?);
        }
        let stats = Arc::clone(&load.stats);
        let Ok(load) = Arc::try_unwrap(load) else {
            bail!("the load is still in use after the run");
        };
        let acked = load.acked.into_sorted();
        let devices = received
            .iter()
            .zip(self.conversations_of.iter().map(Vec::as_slice));
        report.set_verdict(reckon(&acked, devices));
        fill_counters(report, &stats);
        Ok(())
    }
}

/// Users in pairs, each sending to its partner.
pub(super) async fn direct_shape(
    c: &Common,
    control: &Control,
    scenario: &str,
) -> anyhow::Result<Shape> {
    let n = c.connections.max(2) / 2 * 2;
    let users = control.provision(&prefix(c, scenario), n).await?;
    let mut routes = Vec::with_capacity(n);
    for pair in 0..n / 2 {
        let (a, b) = (2 * pair, 2 * pair + 1);
        let conversation = u32::try_from(pair).context("too many connections")?;
        routes.push(Route {
            connection: a,
            conversation,
            target: Target::User(users[b].id),
        });
        routes.push(Route {
            connection: b,
            conversation,
            target: Target::User(users[a].id),
        });
    }
    let conversations_of = (0..n).map(|i| vec![(i / 2) as u32]).collect();
    Ok(Shape {
        users,
        routes,
        members: vec![2; n / 2],
        conversations_of,
    })
}

/// `direct`.
pub(super) async fn direct(c: &Common, control: &Control) -> anyhow::Result<Report> {
    let shape = direct_shape(c, control, "direct").await?;
    socket_load(c, control, shape).await
}

/// `group`.
pub(super) async fn group(g: &GroupArgs, control: &Control) -> anyhow::Result<Report> {
    let c = &g.common;
    if g.groups == 0 || g.members < 2 {
        bail!("--groups must be at least 1 and --members at least 2");
    }
    let n = g.groups * g.members;
    let users = control.provision(&prefix(c, "group"), n).await?;
    let mut routes = Vec::with_capacity(n);
    for gi in 0..g.groups {
        let first = gi * g.members;
        let rest: Vec<u64> = users[first + 1..first + g.members]
            .iter()
            .map(|u| u.id)
            .collect();
        let group_id = control
            .create_group(&users[first], &format!("loadtest {gi}"), &rest)
            .await?;
        for connection in first..first + g.members {
            routes.push(Route {
                connection,
                conversation: gi as u32,
                target: Target::Group(group_id),
            });
        }
    }
    let shape = Shape {
        users,
        routes,
        members: vec![g.members as u32; g.groups],
        conversations_of: (0..n).map(|i| vec![(i / g.members) as u32]).collect(),
    };
    let mut report = socket_load(c, control, shape).await?;
    report.extra.insert("groups".into(), g.groups.into());
    report
        .extra
        .insert("members_per_group".into(), g.members.into());
    Ok(report)
}

/// Connects every user, runs the traffic, and checks every device.
async fn socket_load(c: &Common, control: &Control, shape: Shape) -> anyhow::Result<Report> {
    if c.body_size < BODY_HEADER_MAX {
        bail!("--body-size must be at least {BODY_HEADER_MAX}");
    }
    let dialer = Dialer::new(c, control).await?;
    let stats = Arc::new(Stats::new());
    let run = run_id();
    let tokens = shape
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| (i, u.token.clone()))
        .collect();
    let connect_start = tokio::time::Instant::now();
    let connected = dialer.connect_all(tokens, c.connect_concurrency).await?;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    let stopping = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::with_capacity(connected.len());
    let mut receivers = Vec::with_capacity(connected.len());
    for (i, (client, deliveries)) in connected.into_iter().enumerate() {
        receivers.push(spawn_receiver(
            i,
            deliveries,
            run,
            Arc::clone(&stats),
            Arc::clone(&stopping),
        ));
        clients.push(client);
    }
    let senders = clients.iter().cloned().map(Sender::Plain).collect();
    let load = shape.load(run, senders, c, &stats);
    let (ticker, bar) = spawn_ticker(Arc::clone(&stats), c, control);
    let mut report = Report {
        config: run_config(c, clients.len(), dialer.endpoint_count()),
        ..Report::default()
    };
    if c.find_max {
        find_max(c, control, &load, &mut report).await;
    } else {
        measured_window(c, control, &load, &mut report).await?;
    }
    ticker.abort();
    bar.finish_and_clear();

    stopping.store(true, Ordering::Relaxed);
    for client in clients {
        client.close().await;
    }
    shape.reckon(load, receivers, &mut report).await?;
    report
        .extra
        .insert("connect_seconds".into(), serde_json::json!(connect_seconds));
    Ok(report)
}

/// Warm-up, then the measured window at `--rate`, then the drain.
pub(super) async fn measured_window(
    c: &Common,
    control: &Control,
    load: &Arc<Load>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let stats = Arc::clone(&load.stats);
    let window = {
        let (stats, control, pid) = (Arc::clone(&stats), control.clone(), c.server_pid);
        let (warmup, duration) = (c.warmup, c.duration);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            stats.measuring.store(true, Ordering::Relaxed);
            let start = Snapshot::take(&stats, &control, pid).await;
            tokio::time::sleep(duration).await;
            let end = Snapshot::take(&stats, &control, pid).await;
            (start, end)
        })
    };
    load.pace(c.rate, c.warmup + c.duration).await;
    let (start, end) = window.await.context("the measuring task failed")?;
    load.drain(c.drain).await;
    stats.tick();
    report.set_latencies(&stats.totals());
    fill_window(report, &stats, &start, &end);
    Ok(())
}

/// `--find-max`: one warm-up, then steps of rising rate until one fails.
async fn find_max(c: &Common, control: &Control, load: &Arc<Load>, report: &mut Report) {
    let stats = Arc::clone(&load.stats);
    load.pace(c.rate, c.warmup).await;
    load.drain(c.drain.min(Duration::from_secs(3))).await;
    let mut search = FindMax {
        p99_bound_ms: c.p99_ms,
        ..FindMax::default()
    };
    let mut best: Option<(Latencies, Snapshot, Snapshot)> = None;
    let mut rate = c.rate;
    while rate <= c.max_rate {
        stats.tick();
        stats.reset_totals();
        stats.measuring.store(true, Ordering::Relaxed);
        let errors_before = stats.errors();
        let start = Snapshot::take(&stats, control, c.server_pid).await;
        load.pace(rate, c.step_duration).await;
        let end = Snapshot::take(&stats, control, c.server_pid).await;
        load.drain(c.drain.min(Duration::from_secs(3))).await;
        stats.tick();
        stats.measuring.store(false, Ordering::Relaxed);
        let totals = stats.totals();
        let secs = (end.at - start.at).as_secs_f64().max(1e-9);
        let errors = stats.errors() - errors_before;
        let caught_up =
            stats.delivered.load(Ordering::Relaxed) >= load.expected.load(Ordering::Relaxed);
        let step = Step {
            rate,
            acked_per_s: (end.acked - start.acked) as f64 / secs,
            delivered_per_s: (end.delivered - start.delivered) as f64 / secs,
            p99_ms: ms(&totals.deliver, 0.99),
            ack_p99_ms: ms(&totals.ack, 0.99),
            errors,
            held: false,
        };
        // Held: (nearly) every send of the step was acknowledged, the acks
        // kept up (the step did not overrun its length waiting for them),
        // nothing was refused, deliveries caught up, and the p99 is in bound.
        let step_secs = c.step_duration.as_secs_f64();
        let answered = (end.acked - start.acked) as f64 >= 0.95 * rate * step_secs;
        let kept_up = secs <= step_secs * 1.2 + 0.5;
        let held = step.p99_ms <= c.p99_ms && answered && kept_up && errors == 0 && caught_up;
        search.steps.push(Step { held, ..step });
        if !held {
            break;
        }
        search.max_rate = rate;
        search.max_delivered_per_s = step.delivered_per_s;
        best = Some((totals, start, end));
        rate *= c.step_factor.max(1.01);
    }
    if let Some((totals, start, end)) = best {
        report.set_latencies(&totals);
        fill_window(report, &stats, &start, &end);
        report.config.rate = search.max_rate;
    }
    report.config.duration_s = c.step_duration.as_secs_f64();
    report.find_max = Some(search);
}
