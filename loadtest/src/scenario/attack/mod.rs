//! `attack`: one kind of abuse for a bounded time, from several loopback
//! source addresses, with a tally of how the node answered it (codes,
//! closes) and the node's memory and CPU meanwhile.
//!
//! An attack first sets itself up (accounts, a filled inbox), then writes
//! `attack under way` to stderr, so a script can start its well-behaved
//! `direct` run on that event and compare it with a run without attack
//! (`scripts/abuse-figures.sh`).

mod raw;
mod signup;
mod sockets;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hanmadi_client::{Client, ClientConfig, ClientError, Deliveries};
use parking_lot::Mutex;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::run_config;
use crate::cli::{AttackArgs, AttackKind};
use crate::control::{Control, ServerUsage, User};
use crate::report::Report;

/// How long an attacking request may wait for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the node's memory and CPU are read during the attack.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// `attack`.
pub(super) async fn run(a: &AttackArgs, control: &Control) -> anyhow::Result<Report> {
    let target = Target::new(a, control).await?;
    let tally = Arc::new(Tally::default());
    // Set-up (accounts, inboxes) happens before the clock starts.
    let attack = match a.kind {
        AttackKind::SyncLoop => sockets::sync_loop(a, control, &target, &tally).await?,
        AttackKind::Receipts => sockets::receipts(a, control, &target, &tally).await?,
        AttackKind::SelfDm => sockets::self_dm(a, control, &target, &tally).await?,
        AttackKind::Signup => signup::run(a, control, &target, &tally).await?,
        AttackKind::HalfOpen => raw::half_open(a, &target, &tally),
        AttackKind::Slowloris => raw::slowloris(a, &target, &tally),
        AttackKind::BadFrames => raw::bad_frames(a, control, &target, &tally).await?,
    };
    let before = control.usage(a.common.server_pid).await.ok();
    eprintln!(
        "attack under way: {} for {:.0} s",
        a.kind.name(),
        a.common.duration.as_secs_f64()
    );
    let started = Instant::now();
    let deadline = started + a.common.duration;
    let mut peak_rss = before.map_or(0.0, |u| u.rss_bytes);
    while Instant::now() < deadline {
        tokio::time::sleep(SAMPLE_EVERY.min(deadline - Instant::now())).await;
        if let Ok(u) = control.usage(a.common.server_pid).await {
            peak_rss = peak_rss.max(u.rss_bytes);
        }
    }
    let elapsed = started.elapsed();
    let after = control.usage(a.common.server_pid).await.ok();
    attack.abort_all();
    let mut report = Report {
        config: run_config(&a.common, a.common.connections, 1),
        ..Report::default()
    };
    report.config.rate = 0.0;
    report.config.duration_s = elapsed.as_secs_f64();
    tally.fill(&mut report, a, elapsed, before, after, peak_rss);
    Ok(report)
}

/// The attacking accounts: one per `--per-account` connections, named
/// after the attack.
async fn accounts(a: &AttackArgs, control: &Control, name: &str) -> anyhow::Result<Vec<User>> {
    let count = a.common.connections.div_ceil(a.per_account.max(1)).max(1);
    control
        .provision(&super::prefix(&a.common, &format!("attack-{name}")), count)
        .await
}

/// The account attacking connection `i` speaks for.
fn account_of<'a>(a: &AttackArgs, users: &'a [User], i: usize) -> &'a User {
    &users[i / a.per_account.max(1)]
}

/// Where the attack goes, and where it comes from.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The node's raw TCP listener.
    tcp: SocketAddr,
    /// The node's HTTP listener.
    http: SocketAddr,
    /// The loopback addresses the attack comes from.
    sources: Vec<IpAddr>,
}

impl Target {
    async fn new(a: &AttackArgs, control: &Control) -> anyhow::Result<Self> {
        let dialer = crate::net::Dialer::new(&a.common, control).await?;
        let tcp = resolve(dialer.addr(0)).await?;
        let http = resolve(crate::net::host_port(a.common.http_url()).as_str()).await?;
        let sources = (0..a.sources)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
            .collect();
        Ok(Self { tcp, http, sources })
    }

    /// The source address of attacker number `i`.
    fn source(&self, i: usize) -> IpAddr {
        self.sources[i % self.sources.len()]
    }

    /// A TCP connection from source `i` to `to`.
    async fn connect(&self, i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.source(i), 0))?;
        socket.connect(to).await
    }

    /// An authenticated connection from source `i` through the client
    /// library.
    async fn client(
        &self,
        i: usize,
        token: &str,
        device: String,
    ) -> Result<(Client, Deliveries), ClientError> {
        let stream = self.connect(i, self.tcp).await?;
        let mut config = ClientConfig::new(self.tcp.to_string(), token, device);
        config.request_timeout = REQUEST_TIMEOUT;
        Client::handshake(stream, config).await
    }
}

async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{addr} has no IPv4 address"))
}

/// The running attack: its tasks, stopped when the time is up.
#[derive(Debug, Default)]
pub(super) struct Attack(tokio::task::JoinSet<()>);

impl Attack {
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.spawn(task);
    }

    fn abort_all(mut self) {
        self.0.abort_all();
        self.0.detach_all();
    }
}

/// How the node answered the attack.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Connections opened, or requests made.
    attempts: AtomicU64,
    /// Connections the node closed.
    closed_by_server: AtomicU64,
    /// Connections that could not be opened or refused at `Hello`.
    connect_failures: AtomicU64,
    /// Connections open now, and the most at once.
    open: AtomicU64,
    peak_open: AtomicU64,
    /// Work the node did for the attacker: pages, acknowledged messages,
    /// created accounts.
    served: AtomicU64,
    /// Bytes the node sent the attacker in answers.
    served_bytes: AtomicU64,
    /// Answers by code (`RATE_LIMITED`, HTTP `429`, ...).
    outcomes: Mutex<BTreeMap<String, u64>>,
    /// Figures particular to one attack (the log-in probe's).
    extra: Mutex<serde_json::Map<String, serde_json::Value>>,
}

impl Tally {
    fn count(&self, outcome: impl Into<String>) {
        *self.outcomes.lock().entry(outcome.into()).or_default() += 1;
    }

    fn opened(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(now, Ordering::Relaxed);
    }

    fn closed(&self, by_server: bool) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if by_server {
            self.closed_by_server.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts how a client-library connection ended.
    fn closed_with(&self, error: Option<&ClientError>) {
        match error {
            Some(e) => self.count(format!("close {}", error_name(e))),
            None => self.count("close clean"),
        }
    }

    fn fill(
        &self,
        report: &mut Report,
        a: &AttackArgs,
        elapsed: Duration,
        before: Option<ServerUsage>,
        after: Option<ServerUsage>,
        peak_rss: f64,
    ) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let extra = &mut report.extra;
        let mut put = |k: &str, v: serde_json::Value| {
            extra.insert(k.to_owned(), v);
        };
        put("attack", a.kind.name().into());
        put("sources", a.sources.into());
        put("attempts", load(&self.attempts).into());
        put(
            "attempts_per_s",
            round(load(&self.attempts) as f64 / secs).into(),
        );
        put("served", load(&self.served).into());
        put(
            "served_per_s",
            round(load(&self.served) as f64 / secs).into(),
        );
        put(
            "served_mib",
            round(load(&self.served_bytes) as f64 / 1_048_576.0).into(),
        );
        put("closed_by_server", load(&self.closed_by_server).into());
        put("connect_failures", load(&self.connect_failures).into());
        put("peak_open", load(&self.peak_open).into());
        put(
            "outcomes",
            serde_json::to_value(&*self.outcomes.lock()).unwrap_or_default(),
        );
        if let (Some(b), Some(e)) = (before, after) {
            let mib = |x: f64| round(x / 1_048_576.0);
            put("server_rss_before_mib", mib(b.rss_bytes).into());
            put("server_rss_peak_mib", mib(peak_rss.max(e.rss_bytes)).into());
            put("server_rss_after_mib", mib(e.rss_bytes).into());
            put(
                "server_cores",
                round((e.cpu_seconds - b.cpu_seconds) / secs).into(),
            );
        }
        for (k, v) in self.extra.lock().iter() {
            put(k, v.clone());
        }
    }
}

/// Two decimals are plenty for a report.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// An error's short name: the server's code without its prefix, else the
/// kind of failure.
fn error_name(e: &ClientError) -> String {
    match e.server_error() {
        Some(server) => server
            .error_code()
            .map_or_else(|| format!("code {}", server.code), code_name),
        None => match e {
            ClientError::Timeout(_) => "timeout".into(),
            // Why it closed, when known.
            ClientError::Closed { cause: Some(cause) } => error_name(cause),
            ClientError::Closed { cause: None } => "closed".into(),
            ClientError::Io(_) => "io".into(),
            _ => "other".into(),
        },
    }
}

/// `RATE_LIMITED` for `ERROR_CODE_RATE_LIMITED`.
fn code_name(code: hanmadi_proto::ErrorCode) -> String {
    let name = code.as_str_name();
    name.strip_prefix("ERROR_CODE_").unwrap_or(name).to_owned()
}
