//! The command line: a scenario and its options. Flag names are a stable
//! interface that scripts and CI rely on.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `hanmadi-loadtest`: drives real connections against a Hanmadi node or
/// cluster and reports throughput, latency and whether anything
/// acknowledged was lost, duplicated or reordered.
#[derive(Debug, Parser)]
#[command(name = "hanmadi-loadtest", version, about)]
pub struct Cli {
    /// The traffic to make.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Runtime worker threads (default: one per core). On the machine of
    /// the node under test, 1 leaves more of the cores to the node: one
    /// worker never wakes another to hand it a send, an ack or a delivery.
    /// Near that worker's limit, though, its own queue adds to the
    /// latencies reported (sends fired late count from their due time),
    /// so tails are measured with the default.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N connections in pairs; each sends 1:1 messages to its partner.
    Direct(Common),
    /// G groups of M members; members post to their group (fan-out).
    Group(GroupArgs),
    /// N connections that say Hello and then only heartbeat; reports the
    /// server's memory per connection.
    Idle(Common),
    /// Direct traffic through reconnecting clients; halfway through, every
    /// connection is dropped at once and resumes with Sync.
    Reconnect(Common),
    /// Sends over the HTTP API; recipients read with long-poll `/v1/sync`.
    Http(Common),
    /// Abuses the node in one way for `--duration` (run it beside a
    /// `direct` run to see what the abuse costs well-behaved users) and
    /// reports how the node refused it.
    Attack(AttackArgs),
}

impl Scenario {
    /// The options every scenario shares.
    pub fn common(&self) -> &Common {
        match self {
            Self::Direct(c) | Self::Idle(c) | Self::Reconnect(c) | Self::Http(c) => c,
            Self::Group(g) => &g.common,
            Self::Attack(a) => &a.common,
        }
    }

    /// The scenario's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Direct(_) => "direct",
            Self::Group(_) => "group",
            Self::Idle(_) => "idle",
            Self::Reconnect(_) => "reconnect",
            Self::Http(_) => "http",
            Self::Attack(_) => "attack",
        }
    }
}

/// `group`'s options.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// Options shared by every scenario (`--connections` is ignored:
    /// groups × members connections are opened).
    #[command(flatten)]
    pub common: Common,
    /// How many groups.
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    /// Members per group, each with one connection.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
}

/// `attack`'s options.
#[derive(Debug, Args)]
pub struct AttackArgs {
    /// Options shared by every scenario: `--connections` is the number of
    /// attacking connections (or concurrent requests for `signup`),
    /// `--duration` how long the attack lasts once it is ready,
    /// `--body-size` the body of the messages `sync-loop` and `self-dm`
    /// write.
    #[command(flatten)]
    pub common: Common,
    /// The abuse.
    #[arg(long, value_enum)]
    pub kind: AttackKind,
    /// Loopback source addresses the attack comes from, 127.0.0.2 onward,
    /// so that per-address limits meet it as they would meet that many
    /// hosts.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub sources: u8,
    /// `sync-loop`: messages put in each attacking account's inbox before
    /// the attack.
    #[arg(long, default_value_t = 100)]
    pub fill: usize,
    /// `sync-loop` and `receipts`: connections per attacking account.
    #[arg(long, default_value_t = 10)]
    pub per_account: usize,
}

/// The abuses `attack` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttackKind {
    /// Authenticated connections that page through a full inbox with
    /// `Sync` again and again, as fast as they are answered.
    SyncLoop,
    /// Authenticated connections that send `Ack` and `Read` frames as
    /// fast as the socket takes them.
    Receipts,
    /// One account's connections sending messages to itself as fast as
    /// they are acknowledged, filling one inbox.
    SelfDm,
    /// HTTP sign-ups as fast as they are answered, while a log-in is
    /// tried every 100 ms from another address.
    Signup,
    /// TCP connections that never say `Hello`, reopened when closed.
    HalfOpen,
    /// HTTP requests whose headers arrive one line a second and never
    /// end.
    Slowloris,
    /// Oversized and malformed frames, before and after `Hello`, on
    /// connection after connection.
    BadFrames,
}

impl AttackKind {
    /// The kind as typed.
    pub fn name(self) -> &'static str {
        match self {
            Self::SyncLoop => "sync-loop",
            Self::Receipts => "receipts",
            Self::SelfDm => "self-dm",
            Self::Signup => "signup",
            Self::HalfOpen => "half-open",
            Self::Slowloris => "slowloris",
            Self::BadFrames => "bad-frames",
        }
    }
}

/// The socket transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// Length-prefixed protobuf over TCP.
    Tcp,
    /// The same over TLS.
    Tls,
    /// WebSocket at `/ws`.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl TransportArg {
    /// The name discovery lists the endpoint under.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// Whether it speaks TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }
}

/// The frame encoding on WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncodingArg {
    /// Protobuf frames (`hanmadi.v1.proto`).
    Binary,
    /// Protobuf's JSON mapping (`hanmadi.v1.json`).
    Json,
}

/// Options every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The node's HTTP API, `http://HOST:PORT`: accounts, groups, HTTP
    /// sends, metrics, and discovery of its socket endpoints.
    #[arg(long, value_name = "URL", required_unless_present = "discovery")]
    pub http: Option<String>,
    /// A node's HTTP API whose discovery lists the cluster: connections are
    /// spread over every node it lists (used for `--http` too when that is
    /// absent).
    #[arg(long, value_name = "URL")]
    pub discovery: Option<String>,
    /// Connect sockets to this `HOST:PORT` (or `ws://`/`wss://` URL)
    /// instead of the endpoints discovery lists.
    #[arg(long, value_name = "ADDR")]
    pub target: Option<String>,
    /// The node's token secret: mints HS256 JWTs for the test users and
    /// derives the admin token that provisions them.
    #[arg(long, env = "HANMADI_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The admin token, when it is not the one derived from `--secret`.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Socket transport.
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: TransportArg,
    /// Frame encoding on WebSocket transports.
    #[arg(long, value_enum, default_value = "binary")]
    pub encoding: EncodingArg,
    /// Connections (users, one device each).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Messages sent per second, all connections together.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to measure, after the warm-up (`10s`, `1m`, `500ms`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Traffic before measuring starts; its latencies are not reported.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// How long to wait after the last send for deliveries to arrive.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Message body size in bytes (at least the 40-byte header the tool
    /// writes into each body).
    #[arg(long, default_value_t = 100)]
    pub body_size: usize,
    /// Most sends waiting for their ack at once; sends due beyond it wait,
    /// and their latency counts from when they were due.
    #[arg(long, default_value_t = 20_000)]
    pub in_flight: usize,
    /// Seed for the choice of senders and targets; also names this run's
    /// accounts, so two runs with one seed reuse the same users.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Certificate authority (PEM) to trust for `tls` and `wss`.
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// Name to check the server's certificate against (default: the host
    /// name discovery gives).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Accept any server certificate (test rigs with throwaway certificates).
    #[arg(long)]
    pub insecure: bool,
    /// Raise the rate step by step until the p99 passes `--p99-ms` or
    /// acknowledgements fall behind; report the highest rate that held.
    #[arg(long)]
    pub find_max: bool,
    /// The p99 send→deliver bound of `--find-max`, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    pub p99_ms: f64,
    /// Each `--find-max` step's length.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub step_duration: Duration,
    /// Factor by which `--find-max` raises the rate at each step.
    #[arg(long, default_value_t = 1.25)]
    pub step_factor: f64,
    /// Highest rate `--find-max` tries.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// The server's process id, to read its memory and CPU from `/proc`
    /// (default: from its `/metrics`).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Write every figure as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an HTML report with SVG plots into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl Common {
    /// The HTTP API to talk to.
    pub fn http_url(&self) -> &str {
        self.http
            .as_deref()
            .or(self.discovery.as_deref())
            .unwrap_or_default()
            .trim_end_matches('/')
    }
}
