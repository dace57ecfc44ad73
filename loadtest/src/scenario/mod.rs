//! The scenarios, and what socket scenarios share: setting up users and
//! connections, the warm-up and measured window, the progress line, the
//! capacity search and the final reckoning.

mod attack;
mod http;
mod idle;
mod reconnect;
mod sockets;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use crate::cli::{Common, Scenario};
use crate::control::{Control, ServerUsage};
use crate::report::{Errors, Report, RunConfig, ServerFigures};
use crate::stats::Stats;

/// Runs `scenario` and reports.
pub async fn run(scenario: &Scenario) -> anyhow::Result<Report> {
    let common = scenario.common();
    let control = Control::new(
        common.http_url(),
        &common.secret,
        common.admin_token.as_deref(),
    )?;
    control.check_reachable().await?;
    let cpu_before = own_cpu_seconds();
    let mut report = match scenario {
        Scenario::Direct(c) => sockets::direct(c, &control).await?,
        Scenario::Group(g) => sockets::group(g, &control).await?,
        Scenario::Reconnect(c) => reconnect::run(c, &control).await?,
        Scenario::Idle(c) => idle::run(c, &control).await?,
        Scenario::Http(c) => http::run(c, &control).await?,
        Scenario::Attack(a) => attack::run(a, &control).await?,
    };
    report.scenario = match scenario {
        Scenario::Attack(a) => format!("attack {}", a.kind.name()),
        _ => scenario.name().to_owned(),
    };
    report.loadtest_cpu_seconds = own_cpu_seconds() - cpu_before;
    Ok(report)
}

/// The run's id, written into every body so other runs' messages are told
/// apart.
fn run_id() -> u32 {
    rand::random::<u32>() >> 1
}

/// Account names of a scenario: one seed, one set of accounts.
fn prefix(common: &Common, scenario: &str) -> String {
    format!("lt{}-{scenario}", common.seed)
}

/// What the run was asked for.
fn run_config(common: &Common, connections: usize, endpoints: usize) -> RunConfig {
    RunConfig {
        transport: common.transport.name().to_owned(),
        encoding: format!("{:?}", common.encoding).to_lowercase(),
        connections,
        rate: common.rate,
        duration_s: common.duration.as_secs_f64(),
        warmup_s: common.warmup.as_secs_f64(),
        body_size: common.body_size,
        in_flight: common.in_flight,
        seed: common.seed,
        endpoints,
        tool_workers: tokio::runtime::Handle::current().metrics().num_workers(),
    }
}

/// Counters at one instant, to take rates over a window.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: tokio::time::Instant,
    acked: u64,
    delivered: u64,
    usage: Option<ServerUsage>,
}

impl Snapshot {
    async fn take(stats: &Stats, control: &Control, pid: Option<u32>) -> Self {
        // Counters first: the scrape of the server's usage takes time.
        let at = tokio::time::Instant::now();
        let acked = stats.acked.load(Ordering::Relaxed);
        let delivered = stats.delivered.load(Ordering::Relaxed);
        Self {
            at,
            acked,
            delivered,
            usage: control.usage(pid).await.ok(),
        }
    }
}

/// Fills throughput, server figures and counters from the window
/// `[start, end]`.
fn fill_window(report: &mut Report, stats: &Stats, start: &Snapshot, end: &Snapshot) {
    let secs = (end.at - start.at).as_secs_f64().max(1e-9);
    let acked = end.acked - start.acked;
    report.acked_per_s = acked as f64 / secs;
    report.delivered_per_s = (end.delivered - start.delivered) as f64 / secs;
    if let (Some(before), Some(after)) = (start.usage, end.usage) {
        let cpu = after.cpu_seconds - before.cpu_seconds;
        report.server = Some(ServerFigures {
            before,
            after,
            cpu_seconds: cpu,
            cores: cpu / secs,
            cpu_us_per_message: if acked > 0 {
                cpu * 1e6 / acked as f64
            } else {
                0.0
            },
        });
    }
    fill_counters(report, stats);
}

/// Copies the run's counters into the report.
fn fill_counters(report: &mut Report, stats: &Stats) {
    report.sent = stats.sent.load(Ordering::Relaxed);
    report.acked = stats.acked.load(Ordering::Relaxed);
    report.delivered = stats.delivered.load(Ordering::Relaxed);
    report.errors = Errors {
        rate_limited: stats.rate_limited.load(Ordering::Relaxed),
        busy: stats.busy.load(Ordering::Relaxed),
        timeouts: stats.timeouts.load(Ordering::Relaxed),
        other: stats.other_errors.load(Ordering::Relaxed),
    };
    report.held_by_in_flight_cap = stats.held.load(Ordering::Relaxed);
    report.disconnects = stats.disconnects.load(Ordering::Relaxed);
    report.timeseries = stats.series();
}

/// The once-a-second ticker: closes each second of the statistics, notes
/// the server's memory and CPU beside it, and draws the progress line (on
/// a terminal; elsewhere a plain line every five seconds, unless
/// `--quiet`).
fn spawn_ticker(stats: Arc<Stats>, c: &Common, control: &Control) -> (JoinHandle<()>, ProgressBar) {
    let bar = if c.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar
    };
    let plain = !c.quiet && bar.is_hidden();
    let task_bar = bar.clone();
    let (control, pid) = (control.clone(), c.server_pid);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut n = 0u64;
        let mut last_cpu: Option<(tokio::time::Instant, f64)> = None;
        loop {
            tick.tick().await;
            let s = stats.tick();
            if let Ok(usage) = control.usage(pid).await {
                let now = tokio::time::Instant::now();
                let cores = last_cpu.map_or(0.0, |(at, cpu)| {
                    (usage.cpu_seconds - cpu) / (now - at).as_secs_f64().max(1e-3)
                });
                last_cpu = Some((now, usage.cpu_seconds));
                stats.annotate_server(usage.rss_bytes / 1_048_576.0, cores);
            }
            let line = format!(
                "sent {}/s  acked {}/s  delivered {}/s  deliver p50 {:.1} ms p99 {:.1} ms  errors {}",
                s.sent, s.acked, s.delivered, s.deliver_p50_ms, s.deliver_p99_ms, stats.errors()
            );
            n += 1;
            if plain && n % 5 == 0 {
                eprintln!("[{:>4.0} s] {line}", s.t);
            }
            task_bar.set_message(line);
            task_bar.tick();
        }
    });
    (task, bar)
}

/// This process's CPU time, seconds (0 where `/proc` is missing).
fn own_cpu_seconds() -> f64 {
    crate::control::proc_usage(std::process::id()).map_or(0.0, |u| u.cpu_seconds)
}
