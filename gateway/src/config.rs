//! The `hanmadi` command line and a node's configuration.
//!
//! A setting comes from the first source that has it: a flag, then an
//! environment variable, then the TOML file named by `--config` /
//! `HANMADI_CONFIG`, then the default. Every setting has one name in three
//! spellings: `--data-dir`, `HANMADI_DATA_DIR`, `data_dir`. An environment
//! variable set to the empty string counts as unset. Relative paths are
//! relative to the working directory, wherever they were given.
//!
//! Listener addresses take `IP:PORT`, `:PORT` (all IPv4 interfaces), or `off`
//! / `none` to disable the listener; port 0 asks the OS for a free port, and
//! the node prints the bound address (`listening <kind> <addr>`). The `tls`
//! and `https` listeners start only when both `cert` and `key` are set.
//!
//! | flag | environment | TOML key | default | meaning |
//! |---|---|---|---|---|
//! | `--config` | `HANMADI_CONFIG` | — | none | TOML file to read settings from |
//! | `--data-dir` | `HANMADI_DATA_DIR` | `data_dir` | `./hanmadi-data` | embedded store and the generated token secret |
//! | `--tcp` | `HANMADI_TCP` | `tcp` | `0.0.0.0:7070` | raw TCP listener (length-prefixed protobuf) |
//! | `--tls` | `HANMADI_TLS` | `tls` | `0.0.0.0:7071` | TCP-over-TLS listener; needs `cert` and `key` |
//! | `--http` | `HANMADI_HTTP` | `http` | `0.0.0.0:7080` | HTTP API and WebSocket (`/ws`) listener |
//! | `--https` | `HANMADI_HTTPS` | `https` | `0.0.0.0:7443` | HTTPS API and WSS listener; needs `cert` and `key` |
//! | `--cert` | `HANMADI_CERT` | `cert` | none | PEM certificate chain for `tls` and `https` |
//! | `--key` | `HANMADI_KEY` | `key` | none | PEM private key for `cert` |
//! | `--region` | `HANMADI_REGION` | `region` | `local` | region this node serves; discovery ranks same-region nodes first |
//! | `--secret` | `HANMADI_SECRET` | `secret` | contents of `<data_dir>/secret`, created on first start | token secret (HMAC and HS256 JWT key), at least 32 bytes; every node of a cluster needs the same one |
//! | `--store` | `HANMADI_STORE` | `store` | `embedded` | storage engine: `embedded`, `fdb`, or `rocksdb` (the embedded store on RocksDB, for comparing engines; needs a build with the `rocksdb` feature) |
//! | `--fdb-cluster-file` | `HANMADI_FDB_CLUSTER_FILE` | `fdb_cluster_file` | FoundationDB's default | cluster file for `--store fdb` |
//! | `--store-cache-mb` | `HANMADI_STORE_CACHE_MB` | `store_cache_mb` | `256` | with the embedded store: its block cache, in MiB (most of the node's memory once warm) |
//! | `--store-memtable-mb` | `HANMADI_STORE_MEMTABLE_MB` | `store_memtable_mb` | `64` | with the embedded store: the size at which its memtable is flushed to disk, in MiB; smaller uses less memory and flushes more often |
//! | `--store-background-nice` | `HANMADI_STORE_BACKGROUND_NICE` | `store_background_nice` | `19` | with the embedded store: the nice value (0–19) of its flush, compaction and memory-freeing threads; 19 keeps their bursts off the commit path, and under sustained saturation lets memtables that wait for their flush take up to about 1 GiB; 0 runs them at the node's priority |
//! | `--node-id` | `HANMADI_NODE_ID` | `node_id` | `0` | node number in message ids, 0 to 1023 (embedded store; a cluster node takes its id from a lease) |
//! | `--lease-expiry-ms` | `HANMADI_LEASE_EXPIRY_MS` | `lease_expiry_ms` | `10000` | with `--store fdb`: a node id whose lease is not renewed for this long may be taken by another node (renewed every fifth of it) |
//! | `--cluster-link` | `HANMADI_CLUSTER_LINK` | `cluster_link` | `0.0.0.0:7090` | with `--store fdb`: where the node-to-node link listens; other nodes dial it at `hostname` (or this address when it names one) |
//! | `--cluster-backstop-ms` | `HANMADI_CLUSTER_BACKSTOP_MS` | `cluster_backstop_ms` | `1000` | with `--store fdb`: how often the node reads the change feed, the bound on a delivery whose link notification was lost |
//! | `--hostname` | `HANMADI_HOSTNAME` | `hostname` | the machine's hostname | name clients reach this node by, and its TLS name, in discovery |
//! | `--max-frame-bytes` | `HANMADI_MAX_FRAME_BYTES` | `max_frame_bytes` | `65536` | largest protocol frame; a larger one closes the connection. The node's own frames stay within it: it must hold `max_body_bytes` plus 512, and a list of `max_group_members` at 10 bytes each plus 512 |
//! | `--max-body-bytes` | `HANMADI_MAX_BODY_BYTES` | `max_body_bytes` | `16384` | largest message body, at most `max_frame_bytes` − 512 |
//! | `--handshake-timeout-ms` | `HANMADI_HANDSHAKE_TIMEOUT_MS` | `handshake_timeout_ms` | `5000` | time from accept to a valid `Hello`; on TLS the TLS handshake has a deadline of this length first, and `Hello` this long after it |
//! | `--heartbeat-ms` | `HANMADI_HEARTBEAT_MS` | `heartbeat_ms` | `30000` | how often clients are told to ping |
//! | `--idle-timeout-ms` | `HANMADI_IDLE_TIMEOUT_MS` | `idle_timeout_ms` | 2.5 × `heartbeat_ms` (`75000`) | a connection silent this long is closed |
//! | `--write-timeout-ms` | `HANMADI_WRITE_TIMEOUT_MS` | `write_timeout_ms` | `10000` | longest a socket write may stall before the connection is closed |
//! | `--drain-timeout-ms` | `HANMADI_DRAIN_TIMEOUT_MS` | `drain_timeout_ms` | `4000` | on SIGTERM, longest to wait for connections to close |
//! | `--rate-per-sec` | `HANMADI_RATE_PER_SEC` | `rate_per_sec` | `100` | frames per second one connection may send, on average |
//! | `--rate-burst` | `HANMADI_RATE_BURST` | `rate_burst` | `200` | frames one connection may send in a burst |
//! | `--max-conns-per-user` | `HANMADI_MAX_CONNS_PER_USER` | `max_conns_per_user` | `16` | live connections per user on this node |
//! | `--max-conns-per-ip` | `HANMADI_MAX_CONNS_PER_IP` | `max_conns_per_ip` | `1000` | live connections per remote address on this node (an IPv6 address counts with its whole /64) |
//! | `--outbound-queue-bytes` | `HANMADI_OUTBOUND_QUEUE_BYTES` | `outbound_queue_bytes` | `1048576` | per-connection outbound backlog before it is closed as a slow consumer |
//! | `--max-connections` | `HANMADI_MAX_CONNECTIONS` | `max_connections` | `100000` | capacity this node advertises to discovery |
//! | `--max-group-members` | `HANMADI_MAX_GROUP_MEMBERS` | `max_group_members` | `1000` | size cap of new groups (at most 5000) |
//! | `--page-bytes-per-sec` | `HANMADI_PAGE_BYTES_PER_SEC` | `page_bytes_per_sec` | `67108864` (64 MiB) | message bytes per second that `Sync` and `History` pages of all clients together may read; a page waits when they are spent |
//! | `--commit-linger-us` | `HANMADI_COMMIT_LINGER_US` | `commit_linger_us` | `1000` | with the embedded store, while sends arrive at 2 or more per linger: commits start at most this far apart, so each fsync carries more messages (less CPU per message, up to this much more latency); `0` commits every batch at once |
//! | `--max-send-wait-ms` | `HANMADI_MAX_SEND_WAIT_MS` | `max_send_wait_ms` | `1000` | when no send has been acknowledged within this for 100 ms (or none at all for this long), HTTP sends past the first 1,024 in flight (socket sends counted) are refused with `503 SERVER_BUSY` rather than queued; socket sends wait, as they do for a full queue; `0` refuses only when the queue is full |
//! | `--workers` | `HANMADI_WORKERS` | `workers` | the number of cores | threads that run connections, the HTTP API and the router; with the embedded store on a machine of few cores, one fewer than the cores leaves one to the commit thread: less CPU per message at moderate load, a lower peak (docs/PERFORMANCE.md, "Runtime threads") |
//! | `--max-password-hashes` | `HANMADI_MAX_PASSWORD_HASHES` | `max_password_hashes` | the number of cores | password hashes (sign-up, log-in) running at once |
//! | `--http-header-timeout-ms` | `HANMADI_HTTP_HEADER_TIMEOUT_MS` | `http_header_timeout_ms` | `30000` | an HTTP request's headers must arrive within this; an idle keep-alive connection is closed after it |
//! | `--http-rate-per-sec` | `HANMADI_HTTP_RATE_PER_SEC` | `http_rate_per_sec` | `100` | HTTP API requests per second one remote address (IPv6: one /64) may make, on average; more are answered `429` |
//! | `--http-rate-burst` | `HANMADI_HTTP_RATE_BURST` | `http_rate_burst` | `200` | HTTP API requests one remote address may make at once |
//! | `--http-request-timeout-ms` | `HANMADI_HTTP_REQUEST_TIMEOUT_MS` | `http_request_timeout_ms` | `10000` | longest an HTTP API request may take before it is answered `503` (a long-poll sync gets its wait on top) |
//! | `--token-ttl-secs` | `HANMADI_TOKEN_TTL_SECS` | `token_ttl_secs` | `604800` (7 days) | lifetime of tokens issued at log-in |
//! | `--max-token-ttl-secs` | `HANMADI_MAX_TOKEN_TTL_SECS` | `max_token_ttl_secs` | `2592000` (30 days) | longest lifetime a token may claim: a Hanmadi token or JWT whose expiry is further than this from its issue time, or from now, is refused; at least `token_ttl_secs` |
//! | `--retention-days` | `HANMADI_RETENTION_DAYS` | `retention_days` | `30` | days messages are kept; `0` keeps them forever |
//! | `--push-webhook` | `HANMADI_PUSH_WEBHOOK` | `push_webhook` | none (no pushes) | `http://` URL that receives one POST per push to an offline recipient |
//! | `--push-delay-ms` | `HANMADI_PUSH_DELAY_MS` | `push_delay_ms` | `2000` | how long a message waits for its recipient to connect, sync or ack before it is pushed |
//! | `--push-preview` | `HANMADI_PUSH_PREVIEW` | `push_preview` | `true` | whether pushes carry the newest message's text (`true` / `false`) |
//! | `--push-format` | `HANMADI_PUSH_FORMAT` | `push_format` | `hanmadi` | request shape: `hanmadi`, or `gorush` (Gorush's `POST /api/push`) |
//! | `--push-max-in-flight` | `HANMADI_PUSH_MAX_IN_FLIGHT` | `push_max_in_flight` | `64` | push requests in flight at once |
//! | `--push-timeout-ms` | `HANMADI_PUSH_TIMEOUT_MS` | `push_timeout_ms` | `10000` | longest one push request may take |
//! | `--push-max-attempts` | `HANMADI_PUSH_MAX_ATTEMPTS` | `push_max_attempts` | `10` | attempts of one push (5xx, timeouts, refused connections) before it is dropped |
//! | `--push-retry-base-ms` | `HANMADI_PUSH_RETRY_BASE_MS` | `push_retry_base_ms` | `1000` | wait before the first retry, doubled for each next one (with jitter) |
//! | `--push-retry-max-ms` | `HANMADI_PUSH_RETRY_MAX_MS` | `push_retry_max_ms` | `300000` | longest wait between two attempts |
//!
//! Each setting is declared once, as a field of [`Config`]: its name gives
//! the flag, the environment variable and the TOML key, its doc comment the
//! `--help` line, and [`Config::default`] its default. Serde reads the file
//! over the defaults (a key the file lacks keeps its default); clap parses
//! the environment's values and the flags with the same parsers, and each
//! one given overwrites the field it names
//! ([`clap::FromArgMatches::update_from_arg_matches`]).
//!
//! `hanmadi gen-cert` is in [`crate::tls::gen_cert`].

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Deserializer};

use crate::push::{PushConfig, PushFormat};
use crate::server::ServerOptions;
use crate::tls::GenCertArgs;

/// Prefix of every environment variable Hanmadi reads.
pub const ENV_PREFIX: &str = "HANMADI_";

/// Shortest token secret accepted, in bytes: RFC 7518 §3.2 requires an
/// HS256 key at least as long as the hash output.
pub const MIN_SECRET_LEN: usize = 32;

/// Name of the generated token secret inside the data directory.
pub const SECRET_FILE: &str = "secret";

/// The largest `max_group_members` a node accepts: a group message commits
/// in one transaction, which stays under FoundationDB's 1 MB guidance.
pub const MAX_GROUP_MEMBERS: u32 = 5000;

/// Bytes of `max_frame_bytes` kept for what travels around a message's
/// body or member list in the largest frame that carries one message (a
/// `Deliver`, or a one-entry sync or history page): ids, the
/// `client_msg_id` (up to 64 bytes), the cursor, field keys and lengths,
/// about 220 bytes at most.
pub const FRAME_ENVELOPE: usize = 512;

/// Most bytes one member takes in a membership event's list (a varint).
const BYTES_PER_MEMBER: usize = 10;

/// The `hanmadi` command line.
#[derive(Debug, Parser)]
#[command(name = "hanmadi", version, about = "Hanmadi chat server")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `hanmadi`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a chat node.
    Serve(ServeArgs),
    /// Write a self-signed certificate and key for local TLS.
    GenCert(GenCertArgs),
    /// Print the operator's admin token (for `/v1/admin/` routes), derived
    /// from the token secret that `serve` with the same settings uses.
    AdminToken(ServeArgs),
}

/// The `hanmadi serve` flags that were given: [`Config`]'s fields as flags,
/// every one optional, kept as clap parsed them so that
/// [`Config::from_sources`] lays exactly these over the file and the
/// environment.
#[derive(Clone)]
pub struct ServeArgs(ArgMatches);

impl ServeArgs {
    /// The config file the flags name (`--config`), if any.
    #[must_use]
    pub fn config_file(&self) -> Option<&Path> {
        self.0
            .get_one::<PathBuf>("config_file")
            .map(PathBuf::as_path)
    }
}

impl fmt::Debug for ServeArgs {
    /// The names of the flags given, not their values: one may be the
    /// secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.ids().map(clap::Id::as_str))
            .finish()
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(matches.clone()))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        // Every flag is optional: an absent one leaves the value from the
        // environment, the file or the default.
        Config::augment_args(cmd).mut_args(|arg| arg.required(false))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// A node's configuration: every `hanmadi serve` setting, declared once.
///
/// A field is a setting of the module table: its name is the TOML key, and
/// with dashes the flag and upper-cased after `HANMADI_` the environment
/// variable; its doc comment is the flag's help. `*_ms` and `*_secs`
/// settings are held as [`Duration`]s. Build one with [`Config::load`] or
/// [`Config::from_sources`], which validate it; clap's own
/// `Config::from_arg_matches` needs every flag and is not meant for use.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(after_help = "Each flag may also be set by the environment variable \
HANMADI_<FLAG> (e.g. HANMADI_DATA_DIR) or by the key <flag> with underscores \
(e.g. data_dir) in the --config TOML file. Flags win over the environment, the \
environment over the file.")]
pub struct Config {
    /// TOML file to read settings from.
    // A file cannot name another file: the key `config` is refused.
    #[arg(long = "config", value_name = "PATH")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Embedded store and generated token secret [default: ./hanmadi-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Raw TCP listener, or `off` [default: 0.0.0.0:7070].
    #[arg(long, value_name = "ADDR")]
    pub tcp: Listen,
    /// TLS listener (needs --cert and --key), or `off` [default: 0.0.0.0:7071].
    #[arg(long, value_name = "ADDR")]
    pub tls: Listen,
    /// HTTP API and WebSocket listener, or `off` [default: 0.0.0.0:7080].
    #[arg(long, value_name = "ADDR")]
    pub http: Listen,
    /// HTTPS API and WSS listener (needs --cert and --key), or `off`
    /// [default: 0.0.0.0:7443].
    #[arg(long, value_name = "ADDR")]
    pub https: Listen,
    /// PEM certificate chain for the TLS listeners.
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Region this node serves [default: local].
    #[arg(long)]
    pub region: String,
    /// Token secret, at least 32 bytes [default: the file `secret` in the data
    /// directory, created on first start]. Prefer HANMADI_SECRET: flags show
    /// in process lists.
    #[arg(long)]
    pub secret: Option<Secret>,
    /// Storage engine [default: embedded].
    #[arg(long, value_enum, ignore_case = true)]
    pub store: StoreKind,
    /// FoundationDB cluster file [default: FoundationDB's own].
    #[arg(long, value_name = "PATH")]
    pub fdb_cluster_file: Option<PathBuf>,
    /// The embedded store's block cache, in MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub store_cache_mb: u64,
    /// The embedded store's memtable size, in MiB [default: 64].
    #[arg(long, value_name = "MIB")]
    pub store_memtable_mb: u64,
    /// The nice value of the embedded store's background threads, 0 to 19
    /// [default: 19].
    #[arg(long, value_name = "NICE")]
    pub store_background_nice: i32,
    /// Node number in message ids [default: 0].
    #[arg(long)]
    pub node_id: u16,
    /// Name clients reach this node by, also its TLS name [default: the
    /// machine's hostname].
    #[arg(long)]
    pub hostname: String,
    /// Largest protocol frame [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: usize,
    /// Largest message body [default: 16384].
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Time from accept to a valid Hello; on TLS, the TLS handshake's
    /// deadline, then Hello's from its end [default: 5000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub handshake_timeout_ms: Duration,
    /// How often clients are told to ping [default: 30000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub heartbeat_ms: Duration,
    /// A silent connection is closed after this [default: 2.5 × heartbeat].
    // `None` until set: `Config::idle_timeout` derives it from the heartbeat
    // that wins, wherever that came from.
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "some_millis")]
    pub idle_timeout_ms: Option<Duration>,
    /// Longest a socket write may stall [default: 10000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub write_timeout_ms: Duration,
    /// On SIGTERM, longest to wait for connections to close [default: 4000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub drain_timeout_ms: Duration,
    /// With `--store fdb`: a node id whose lease is not renewed for this
    /// long may be taken by another node [default: 10000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub lease_expiry_ms: Duration,
    /// With `--store fdb`: where the node-to-node link listens
    /// [default: 0.0.0.0:7090].
    #[arg(long, value_name = "ADDR")]
    pub cluster_link: SocketAddr,
    /// With `--store fdb`: how often the change feed is read, the bound on
    /// a delivery whose link notification was lost [default: 1000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub cluster_backstop_ms: Duration,
    /// Frames per second per connection, on average [default: 100].
    #[arg(long, value_name = "N")]
    pub rate_per_sec: u32,
    /// Frames per connection in a burst [default: 200].
    #[arg(long, value_name = "N")]
    pub rate_burst: u32,
    /// Live connections per user [default: 16].
    #[arg(long, value_name = "N")]
    pub max_conns_per_user: usize,
    /// Live connections per remote address [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_conns_per_ip: usize,
    /// Outbound backlog per connection before it is closed [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub outbound_queue_bytes: usize,
    /// Capacity advertised to discovery [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_connections: u64,
    /// Size cap of new groups, at most 5000 [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_group_members: u32,
    /// Message bytes per second all Sync and History pages together may
    /// read [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub page_bytes_per_sec: u64,
    /// Microseconds a commit batch may wait for more sends under steady
    /// load; 0 never waits [default: 1000].
    #[arg(long, value_name = "US")]
    pub commit_linger_us: u64,
    /// HTTP sends past the first 1,024 in flight are refused as busy while
    /// none is acknowledged within this; 0 refuses only when the queue is
    /// full [default: 1000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub max_send_wait_ms: Duration,
    /// Threads that run connections, the HTTP API and the router
    /// [default: the number of cores].
    #[arg(long, value_name = "N")]
    pub workers: usize,
    /// Password hashes running at once [default: the number of cores].
    #[arg(long, value_name = "N")]
    pub max_password_hashes: usize,
    /// An HTTP request's headers must arrive within this, and an idle
    /// keep-alive connection is closed after it [default: 30000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub http_header_timeout_ms: Duration,
    /// HTTP API requests per second per remote address [default: 100].
    #[arg(long, value_name = "N")]
    pub http_rate_per_sec: u32,
    /// HTTP API requests one remote address may make at once [default: 200].
    #[arg(long, value_name = "N")]
    pub http_rate_burst: u32,
    /// Longest an HTTP API request may take [default: 10000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub http_request_timeout_ms: Duration,
    /// Lifetime of tokens issued at log-in [default: 604800].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    #[serde(deserialize_with = "secs")]
    pub token_ttl_secs: Duration,
    /// Longest lifetime an accepted token may claim [default: 2592000].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    #[serde(deserialize_with = "secs")]
    pub max_token_ttl_secs: Duration,
    /// Days messages are kept; 0 keeps them forever [default: 30].
    #[arg(long, value_name = "DAYS")]
    pub retention_days: u32,
    /// URL that receives one POST per push to an offline recipient
    /// [default: none, no pushes].
    #[arg(long, value_name = "URL")]
    pub push_webhook: Option<String>,
    /// How long a message waits for its recipient before it is pushed
    /// [default: 2000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub push_delay_ms: Duration,
    /// Whether pushes carry the newest message's text [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub push_preview: bool,
    /// Push request shape [default: hanmadi].
    #[arg(long, value_enum, ignore_case = true)]
    pub push_format: PushFormat,
    /// Push requests in flight at once [default: 64].
    #[arg(long, value_name = "N")]
    pub push_max_in_flight: usize,
    /// Longest one push request may take [default: 10000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub push_timeout_ms: Duration,
    /// Attempts of one push before it is dropped [default: 10].
    #[arg(long, value_name = "N")]
    pub push_max_attempts: u32,
    /// Wait before the first push retry, doubled for each next one
    /// [default: 1000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub push_retry_base_ms: Duration,
    /// Longest wait between two push attempts [default: 300000].
    #[arg(long, value_name = "MS", value_parser = parse_millis)]
    #[serde(deserialize_with = "millis")]
    pub push_retry_max_ms: Duration,
}

impl Default for Config {
    /// The defaults of the module table: the server's own
    /// ([`ServerOptions::default`]) in this configuration's units, with the
    /// machine's hostname.
    fn default() -> Self {
        let server = ServerOptions::default();
        let conn = server.conn;
        let push = server.push;
        let any = |port| Listen(Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))));
        Self {
            config_file: None,
            data_dir: PathBuf::from("./hanmadi-data"),
            tcp: any(7070),
            tls: any(7071),
            http: any(7080),
            https: any(7443),
            cert: None,
            key: None,
            region: server.region,
            secret: None,
            store: StoreKind::Embedded,
            fdb_cluster_file: None,
            store_cache_mb: hanmadi_storage::backend::fjall::FjallOptions::default().cache_size
                >> 20,
            store_memtable_mb: hanmadi_storage::backend::fjall::FjallOptions::default()
                .max_memtable_size
                >> 20,
            store_background_nice: hanmadi_storage::backend::fjall::FjallOptions::default()
                .background_nice,
            node_id: server.router.node,
            hostname: machine_hostname(),
            max_frame_bytes: conn.max_frame,
            max_body_bytes: conn.max_body,
            handshake_timeout_ms: conn.handshake_timeout,
            heartbeat_ms: conn.heartbeat,
            // Follows whichever heartbeat wins; see `Config::idle_timeout`.
            idle_timeout_ms: None,
            write_timeout_ms: conn.write_timeout,
            drain_timeout_ms: server.drain_timeout,
            lease_expiry_ms: crate::cluster::LeaseTiming::default().expiry,
            cluster_link: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7090)),
            cluster_backstop_ms: server.cluster_backstop,
            rate_per_sec: conn.rate_per_sec,
            rate_burst: conn.rate_burst,
            max_conns_per_user: server.registry.per_user,
            max_conns_per_ip: server.registry.per_ip,
            outbound_queue_bytes: server.registry.outbound_bytes,
            max_connections: server.max_connections,
            max_group_members: server.router.max_group_members,
            page_bytes_per_sec: server.router.page_bytes_per_sec,
            commit_linger_us: u64::try_from(server.router.appender.linger.as_micros())
                .unwrap_or(u64::MAX),
            max_send_wait_ms: server.router.appender.max_wait,
            workers: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            max_password_hashes: server.max_password_hashes,
            http_header_timeout_ms: server.http_header_timeout,
            http_rate_per_sec: server.http_requests.rate_per_sec,
            http_rate_burst: server.http_requests.burst,
            http_request_timeout_ms: server.http_requests.deadline,
            token_ttl_secs: server.token_ttl,
            max_token_ttl_secs: server.max_token_ttl,
            retention_days: server.retention.map_or(0, |r| {
                u32::try_from(r.as_secs() / 86_400).unwrap_or(u32::MAX)
            }),
            push_webhook: push.webhook,
            push_delay_ms: push.delay,
            push_preview: push.preview,
            push_format: push.format,
            push_max_in_flight: push.max_in_flight,
            push_timeout_ms: push.timeout,
            push_max_attempts: push.max_attempts,
            push_retry_base_ms: push.retry_base,
            push_retry_max_ms: push.retry_max,
        }
    }
}

/// Parses a `*_ms` flag or variable: whole milliseconds.
fn parse_millis(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_millis)
}

/// Parses a `*_secs` flag or variable: whole seconds.
fn parse_secs(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_secs)
}

/// Reads a `*_ms` TOML key: whole milliseconds.
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// Reads an optional `*_ms` TOML key; called only when the key is present.
fn some_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    millis(d).map(Some)
}

/// Reads a `*_secs` TOML key: whole seconds.
fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// A listener address, or `None` for a disabled listener.
///
/// Parses `IP:PORT`, `[IPv6]:PORT`, `:PORT` (meaning `0.0.0.0:PORT`), and
/// `off` or `none` in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
            return Ok(Self(None));
        }
        let parsed = match s.strip_prefix(':') {
            Some(port) => port
                .parse::<u16>()
                .map(|port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                .ok(),
            None => s.parse::<SocketAddr>().ok(),
        };
        parsed
            .map(|a| Self(Some(a)))
            .ok_or_else(|| format!("invalid listen address {s:?}: expected IP:PORT, :PORT, or off"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which storage engine a node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded single-node store under `data_dir`.
    #[default]
    Embedded,
    /// A FoundationDB cluster shared by every node.
    Fdb,
    /// The embedded store on RocksDB instead of fjall, for comparing the two
    /// engines; needs a build with the `rocksdb` feature (docs/STORAGE.md).
    Rocksdb,
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "embedded" => Ok(Self::Embedded),
            "fdb" => Ok(Self::Fdb),
            "rocksdb" => Ok(Self::Rocksdb),
            _ => Err(format!(
                "unknown store {s:?}: expected embedded, fdb or rocksdb"
            )),
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Embedded => "embedded",
            Self::Fdb => "fdb",
            Self::Rocksdb => "rocksdb",
        })
    }
}

/// The token secret. Its `Debug` output is redacted so a logged [`Config`]
/// never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps raw key bytes.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The key bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key bytes, consuming the secret.
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s.as_bytes().to_vec()))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self::new(s.into_bytes()))
    }
}

/// Why a configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An environment variable holds a value its setting cannot take.
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A `HANMADI_*` environment variable is not valid Unicode.
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    /// Parsed flags that do not fit [`Config`]: [`ServeArgs`] not made by
    /// this build's command line.
    #[error("command line: {0}")]
    Flags(#[source] clap::Error),
    /// The config file could not be read.
    #[error("reading config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys or bad values.
    #[error("config file {path}: {source}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and key.
        #[source]
        source: toml::de::Error,
    },
    /// Settings that are each well formed but do not work together, or a
    /// value out of range.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The setting (TOML spelling) at fault.
        setting: &'static str,
        /// What is wrong and what would work.
        reason: String,
    },
    /// The token secret is too short to be safe.
    #[error(
        "the token secret is {len} bytes; at least {MIN_SECRET_LEN} are required \
         (or leave it unset to have one generated in the data directory)"
    )]
    SecretTooShort {
        /// Its length.
        len: usize,
    },
    /// The secret file in the data directory could not be read or created.
    #[error("token secret file {path}: {source}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The idle deadline when none is configured: two missed heartbeats plus
/// half of one for network delay, so one lost ping never costs a connection.
fn default_idle_timeout(heartbeat: Duration) -> Duration {
    heartbeat.saturating_mul(5) / 2
}

/// The machine's host name, or `localhost` when it has none usable.
pub(crate) fn machine_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The environment variable of the flag `--<long>`.
fn env_var(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.replace('-', "_").to_ascii_uppercase()
    )
}

/// The `serve` flags as a command of their own, for parsing environment
/// values with the flags' own parsers.
fn settings_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("hanmadi serve"))
        .no_binary_name(true)
        .disable_help_flag(true)
}

/// Why clap refused a value, without its usage hints: the value parser's
/// own message when there is one.
fn clap_reason(e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    let text = e.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = text.split("\n\n").next().unwrap_or(text);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The environment's settings: one parse for each `HANMADI_<FLAG>` variable
/// that is set and not empty, by its flag's parser, in flag order. Other
/// `HANMADI_*` variables (the test suites' own) are not settings and are
/// left alone.
fn env_matches(env: &HashMap<String, String>) -> Result<Vec<ArgMatches>, ConfigError> {
    let cmd = settings_command();
    let mut layers = Vec::new();
    for long in cmd.get_arguments().filter_map(clap::Arg::get_long) {
        let var = env_var(long);
        let value = match env.get(&var) {
            None => continue,
            Some(v) if v.is_empty() => continue,
            Some(v) => v.trim(),
        };
        // `--flag=value` keeps a value that starts with `-` a value.
        let matches = cmd
            .clone()
            .try_get_matches_from([format!("--{long}={value}")])
            .map_err(|e| ConfigError::Env {
                reason: clap_reason(&e),
                var,
                value: value.to_owned(),
            })?;
        layers.push(matches);
    }
    Ok(layers)
}

impl Config {
    /// Assembles the configuration from `args`, the process environment and
    /// the config file they name.
    ///
    /// # Errors
    ///
    /// As [`Config::load_with_env`], plus [`ConfigError::EnvNotUnicode`] for
    /// a `HANMADI_*` variable that is not UTF-8.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut env = HashMap::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            let value = value
                .into_string()
                .map_err(|_| ConfigError::EnvNotUnicode(name.to_owned()))?;
            env.insert(name.to_owned(), value);
        }
        Self::load_with_env(args, &env)
    }

    /// Like [`Config::load`] with `env` in place of the process environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ReadFile`] / [`ConfigError::ParseFile`] for the config
    /// file, otherwise as [`Config::from_sources`].
    pub fn load_with_env(
        args: &ServeArgs,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let path = match args.config_file() {
            Some(path) => Some(path.to_owned()),
            None => env_matches(env)?
                .iter()
                .find_map(|m| m.get_one::<PathBuf>("config_file").cloned()),
        };
        let file = path.as_deref().map(Self::read_toml).transpose()?;
        Self::from_sources(args, env, file)
    }

    /// Reads a TOML config file over the defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ReadFile`] if it cannot be read,
    /// [`ConfigError::ParseFile`] for TOML errors, unknown keys and bad values
    /// (the message gives the line and key).
    pub fn read_toml(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_toml(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses TOML text over the defaults; nothing is validated yet.
    ///
    /// # Errors
    ///
    /// The TOML error, which names the offending line and key.
    pub fn parse_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Lays the environment (`HANMADI_*` variables in `env`), then `args`,
    /// over `file` (or the defaults without one), and validates the result.
    /// Reads nothing from the process or the file system, apart from the
    /// machine's hostname for its default.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Env`] for an environment value that does not parse,
    /// [`ConfigError::SecretTooShort`] for a short configured secret, and
    /// [`ConfigError::Invalid`] for values out of range or that contradict
    /// each other (`cert` without `key`, a body larger than a frame, an idle
    /// deadline not above the heartbeat, ...).
    pub fn from_sources(
        args: &ServeArgs,
        env: &HashMap<String, String>,
        file: Option<Self>,
    ) -> Result<Self, ConfigError> {
        let mut config = file.unwrap_or_default();
        for matches in env_matches(env)?.iter().chain([&args.0]) {
            config
                .update_from_arg_matches(matches)
                .map_err(ConfigError::Flags)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// A silent connection is closed after this: `idle_timeout_ms`, else
    /// 2.5 × `heartbeat_ms`.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout_ms
            .unwrap_or_else(|| default_idle_timeout(self.heartbeat_ms))
    }

    /// Pushes to offline recipients: the `push_*` settings.
    #[must_use]
    pub fn push(&self) -> PushConfig {
        PushConfig {
            webhook: self.push_webhook.clone(),
            delay: self.push_delay_ms,
            preview: self.push_preview,
            format: self.push_format,
            max_in_flight: self.push_max_in_flight,
            timeout: self.push_timeout_ms,
            max_attempts: self.push_max_attempts,
            retry_base: self.push_retry_base_ms,
            retry_max: self.push_retry_max_ms,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_owned(),
            })
        };
        match (&self.cert, &self.key) {
            (Some(_), None) => return invalid("cert", "a certificate needs its key (--key)"),
            (None, Some(_)) => return invalid("key", "a key needs its certificate (--cert)"),
            _ => {}
        }
        if let Some(secret) = &self.secret {
            if secret.as_bytes().len() < MIN_SECRET_LEN {
                return Err(ConfigError::SecretTooShort {
                    len: secret.as_bytes().len(),
                });
            }
        }
        if self.region.trim().is_empty() {
            return invalid("region", "must not be empty");
        }
        if self.node_id > hanmadi_router::ids::MAX_NODE {
            return invalid(
                "node_id",
                "must be at most 1023 (the 10 node bits of message ids)",
            );
        }
        if !(1..=1 << 20).contains(&self.store_cache_mb) {
            return invalid("store_cache_mb", "must be between 1 and 1048576");
        }
        if !(1..=1024).contains(&self.store_memtable_mb) {
            return invalid("store_memtable_mb", "must be between 1 and 1024");
        }
        if !(0..=19).contains(&self.store_background_nice) {
            return invalid("store_background_nice", "must be between 0 and 19");
        }
        if self.lease_expiry_ms < Duration::from_millis(500) {
            return invalid("lease_expiry_ms", "must be at least 500");
        }
        if self.workers > 1024 {
            return invalid("workers", "must be at most 1024");
        }
        if self.commit_linger_us > 100_000 {
            return invalid("commit_linger_us", "must be at most 100000");
        }
        if self.cluster_backstop_ms < Duration::from_millis(10) {
            return invalid("cluster_backstop_ms", "must be at least 10");
        }
        if self.hostname.trim().is_empty() {
            return invalid("hostname", "must not be empty");
        }
        // Frame lengths travel in a 4-byte prefix.
        if self.max_frame_bytes < 1024 || u32::try_from(self.max_frame_bytes).is_err() {
            return invalid("max_frame_bytes", "must be between 1024 and 4294967295");
        }
        if self.max_body_bytes == 0 || self.max_body_bytes + FRAME_ENVELOPE > self.max_frame_bytes {
            // A body travels inside a frame with its envelope, and the node
            // never sends a frame past the limit it announces: a message it
            // could not deliver whole would stop its recipients' sync there.
            return invalid(
                "max_body_bytes",
                "must be above 0 and leave 512 bytes of max_frame_bytes for the envelope",
            );
        }
        if self.outbound_queue_bytes < self.max_frame_bytes {
            // Otherwise one largest frame would mark its reader slow.
            return invalid("outbound_queue_bytes", "must be at least max_frame_bytes");
        }
        for (setting, value) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("heartbeat_ms", self.heartbeat_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("http_request_timeout_ms", self.http_request_timeout_ms),
            ("token_ttl_secs", self.token_ttl_secs),
            ("push_timeout_ms", self.push_timeout_ms),
            ("push_retry_base_ms", self.push_retry_base_ms),
        ] {
            if value.is_zero() {
                return invalid(setting, "must be above 0");
            }
        }
        if let Some(url) = &self.push_webhook {
            // The client speaks plain HTTP: push gateways run beside the
            // node (Gorush, Sygnal) or behind a local TLS-terminating proxy.
            let ok = reqwest::Url::parse(url)
                .is_ok_and(|u| u.scheme() == "http" && u.host_str().is_some());
            if !ok {
                return invalid("push_webhook", "must be an http:// URL");
            }
        }
        if self.push_retry_max_ms < self.push_retry_base_ms {
            return invalid("push_retry_max_ms", "must be at least push_retry_base_ms");
        }
        if self.token_ttl_secs > self.max_token_ttl_secs {
            // Tokens issued at log-in would be refused at once.
            return invalid("max_token_ttl_secs", "must be at least token_ttl_secs");
        }
        if self.idle_timeout() <= self.heartbeat_ms {
            // A client that pings on schedule would still be cut off.
            return invalid("idle_timeout_ms", "must be above heartbeat_ms");
        }
        if self.max_group_members > MAX_GROUP_MEMBERS {
            // A group message commits in one transaction, about 200 bytes
            // per member: a larger group would pass FoundationDB's 1 MB
            // guidance, and by 50,000 members the 10 MB limit of both
            // stores, failing every message sent to it.
            return invalid("max_group_members", "must be at most 5000");
        }
        if self.max_group_members as usize * BYTES_PER_MEMBER + FRAME_ENVELOPE
            > self.max_frame_bytes
        {
            // A group's creation is a message listing every member: it must
            // fit one frame like any other.
            return invalid(
                "max_group_members",
                "must let a list of every member (10 bytes each) fit max_frame_bytes with its envelope",
            );
        }
        for (setting, value) in [
            ("rate_per_sec", u64::from(self.rate_per_sec)),
            ("rate_burst", u64::from(self.rate_burst)),
            ("max_conns_per_user", self.max_conns_per_user as u64),
            ("max_conns_per_ip", self.max_conns_per_ip as u64),
            ("max_group_members", u64::from(self.max_group_members)),
            ("page_bytes_per_sec", self.page_bytes_per_sec),
            ("workers", self.workers as u64),
            ("max_password_hashes", self.max_password_hashes as u64),
            ("push_max_in_flight", self.push_max_in_flight as u64),
            ("push_max_attempts", u64::from(self.push_max_attempts)),
            ("http_rate_per_sec", u64::from(self.http_rate_per_sec)),
            ("http_rate_burst", u64::from(self.http_rate_burst)),
        ] {
            if value == 0 {
                return invalid(setting, "must be above 0");
            }
        }
        Ok(())
    }

    /// The certificate and key paths, when both are set.
    #[must_use]
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert.as_deref()?, self.key.as_deref()?))
    }

    /// The TLS listener's address, if it is enabled (`tls`) and a
    /// certificate is configured.
    #[must_use]
    pub fn tls_listener(&self) -> Option<SocketAddr> {
        self.tls_files().and(self.tls.0)
    }

    /// The HTTPS listener's address, if it is enabled (`https`) and a
    /// certificate is configured.
    #[must_use]
    pub fn https_listener(&self) -> Option<SocketAddr> {
        self.tls_files().and(self.https.0)
    }

    /// Where the generated token secret lives: `<data_dir>/secret`.
    #[must_use]
    pub fn secret_path(&self) -> PathBuf {
        self.data_dir.join(SECRET_FILE)
    }

    /// The token secret: the configured one, else the contents of
    /// `<data_dir>/secret`, which is created on first use (64 hex digits
    /// from the OS's random generator, mode 0600).
    ///
    /// Keeping a generated secret in the data directory lets tokens survive
    /// restarts without any setup. The file's text, without surrounding
    /// whitespace, is the key, so an application backend can copy it to
    /// mint HS256 JWTs. Nodes of a cluster must share one secret, so with
    /// `store = fdb` set it explicitly.
    ///
    /// # Errors
    ///
    /// [`ConfigError::SecretFile`] if the file cannot be read or created,
    /// [`ConfigError::SecretTooShort`] if it holds fewer than
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn resolve_secret(&self) -> Result<Secret, ConfigError> {
        if let Some(secret) = &self.secret {
            return Ok(secret.clone());
        }
        let path = self.secret_path();
        let secret = match read_secret_file(&path)? {
            Some(secret) => secret,
            None => create_secret_file(&self.data_dir, &path)?,
        };
        if secret.as_bytes().len() < MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort {
                len: secret.as_bytes().len(),
            });
        }
        Ok(secret)
    }
}

fn secret_error(path: &Path) -> impl Fn(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::SecretFile {
        path: path.to_owned(),
        source,
    }
}

/// The secret in `path`, or `None` if the file does not exist.
fn read_secret_file(path: &Path) -> Result<Option<Secret>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(secret_error(path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the token secret file is readable by other users; chmod 600 it"
                );
            }
        }
    }
    Ok(Some(Secret::new(text.trim().as_bytes().to_vec())))
}

/// Writes a fresh secret to `path` unless another process got there first,
/// in which case that one wins and is returned.
fn create_secret_file(data_dir: &Path, path: &Path) -> Result<Secret, ConfigError> {
    use rand::RngCore as _;

    std::fs::create_dir_all(data_dir).map_err(secret_error(data_dir))?;

    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();

    // Written whole under a private name, then linked into place: a reader
    // never sees a half-written secret, and `hard_link` refuses to replace
    // a secret another process linked first.
    let tmp = data_dir.join(format!(
        ".{SECRET_FILE}.{:016x}.tmp",
        rand::rng().next_u64()
    ));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(hex.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new token secret");
            Ok(Secret::new(hex.into_bytes()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_secret_file(path)?
            .ok_or_else(|| secret_error(path)(std::io::ErrorKind::NotFound.into())),
        Err(e) => Err(secret_error(path)(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = ["hanmadi", "serve"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a,
            Command::GenCert(_) | Command::AdminToken(_) => unreachable!(),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn file(text: &str) -> Config {
        Config::parse_toml(text).unwrap()
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn defaults() {
        let c = Config::from_sources(&serve(&[]), &HashMap::new(), None).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./hanmadi-data"));
        assert_eq!(c.tcp.0, addr("0.0.0.0:7070"));
        assert_eq!(c.tls.0, addr("0.0.0.0:7071"));
        assert_eq!(c.http.0, addr("0.0.0.0:7080"));
        assert_eq!(c.https.0, addr("0.0.0.0:7443"));
        assert_eq!((c.tls_listener(), c.https_listener()), (None, None));
        assert_eq!(c.region, "local");
        assert_eq!(c.store, StoreKind::Embedded);
        assert_eq!(c.node_id, 0);
        assert!(!c.hostname.is_empty());
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.max_body_bytes, 16384);
        assert_eq!(c.handshake_timeout_ms, Duration::from_secs(5));
        assert_eq!(c.heartbeat_ms, Duration::from_secs(30));
        assert_eq!(c.idle_timeout(), Duration::from_secs(75));
        assert_eq!((c.rate_per_sec, c.rate_burst), (100, 200));
        assert_eq!((c.max_conns_per_user, c.max_conns_per_ip), (16, 1000));
        assert_eq!(c.outbound_queue_bytes, 1 << 20);
        assert_eq!(c.max_connections, 100_000);
        assert_eq!(c.retention_days, 30);
        assert_eq!(c.push(), PushConfig::default());
        assert_eq!(c.push().webhook, None);
        assert_eq!(c.push().delay, Duration::from_secs(2));
        assert!(c.push().preview);
        assert!(c.secret.is_none());
        assert!(c.config_file.is_none());
    }

    #[test]
    fn file_overrides_defaults_env_overrides_file_flag_overrides_env() {
        let f = file(
            r#"
            tcp = "127.0.0.1:1"
            region = "file"
            heartbeat_ms = 1000
            rate_burst = 7
            "#,
        );
        let e = env(&[("HANMADI_TCP", "127.0.0.1:2"), ("HANMADI_REGION", "env")]);

        let c = Config::from_sources(&serve(&[]), &HashMap::new(), Some(f.clone())).unwrap();
        assert_eq!(c.tcp.0, addr("127.0.0.1:1"));
        assert_eq!(c.region, "file");

        let c = Config::from_sources(&serve(&[]), &e, Some(f.clone())).unwrap();
        assert_eq!(c.tcp.0, addr("127.0.0.1:2"));
        assert_eq!(c.region, "env");
        assert_eq!(c.rate_burst, 7); // only the file has it

        let c = Config::from_sources(&serve(&["--tcp", "127.0.0.1:3"]), &e, Some(f)).unwrap();
        assert_eq!(c.tcp.0, addr("127.0.0.1:3"));
        assert_eq!(c.region, "env");
        // Idle follows the file's heartbeat when nobody sets it.
        assert_eq!(c.heartbeat_ms, Duration::from_secs(1));
        assert_eq!(c.idle_timeout(), Duration::from_millis(2500));
    }

    #[test]
    fn empty_env_counts_as_unset() {
        let f = file(r#"region = "file""#);
        let c =
            Config::from_sources(&serve(&[]), &env(&[("HANMADI_REGION", "")]), Some(f)).unwrap();
        assert_eq!(c.region, "file");
        // Variables that name no setting (the test suites' own) are ignored.
        let e = env(&[("HANMADI_PYTHON", "/usr/bin/python3")]);
        assert!(Config::from_sources(&serve(&[]), &e, None).is_ok());
    }

    #[test]
    fn the_store_background_nice_is_a_nice_value() {
        let nice = |v: &str| {
            Config::from_sources(
                &serve(&[]),
                &env(&[("HANMADI_STORE_BACKGROUND_NICE", v)]),
                None,
            )
            .map(|c| c.store_background_nice)
        };
        assert_eq!(nice("0").unwrap(), 0);
        assert_eq!(nice("19").unwrap(), 19);
        let err = nice("20").unwrap_err().to_string();
        assert!(err.contains("store_background_nice"), "{err}");
        assert!(nice("-1").is_err());
    }

    #[test]
    fn every_flag_parses() {
        let a = serve(&[
            "--config",
            "c.toml",
            "--data-dir",
            "/d",
            "--tcp",
            ":0",
            "--tls",
            "off",
            "--http",
            "[::1]:8080",
            "--https",
            "none",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--region",
            "eu",
            "--secret",
            "0123456789abcdef0123456789abcdef",
            "--store",
            "fdb",
            "--fdb-cluster-file",
            "/etc/fdb.cluster",
            "--node-id",
            "3",
            "--hostname",
            "n1",
            "--max-frame-bytes",
            "2048",
            "--max-body-bytes",
            "1024",
            "--handshake-timeout-ms",
            "1",
            "--heartbeat-ms",
            "2",
            "--idle-timeout-ms",
            "3",
            "--write-timeout-ms",
            "4",
            "--drain-timeout-ms",
            "5",
            "--rate-per-sec",
            "6",
            "--rate-burst",
            "7",
            "--max-conns-per-user",
            "8",
            "--max-conns-per-ip",
            "9",
            "--outbound-queue-bytes",
            "4096",
            "--max-connections",
            "11",
            "--max-group-members",
            "12",
            "--workers",
            "3",
            "--max-password-hashes",
            "15",
            "--http-header-timeout-ms",
            "16",
            "--http-rate-per-sec",
            "17",
            "--http-rate-burst",
            "18",
            "--http-request-timeout-ms",
            "19",
            "--max-token-ttl-secs",
            "20",
            "--token-ttl-secs",
            "13",
            "--retention-days",
            "0",
            "--push-webhook",
            "http://127.0.0.1:9/push",
            "--push-delay-ms",
            "17",
            "--push-preview",
            "false",
            "--push-format",
            "gorush",
            "--push-max-in-flight",
            "18",
            "--push-timeout-ms",
            "19",
            "--push-max-attempts",
            "20",
            "--push-retry-base-ms",
            "21",
            "--push-retry-max-ms",
            "22",
        ]);
        let c = Config::from_sources(&a, &HashMap::new(), None).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.tcp.0, addr("0.0.0.0:0"));
        assert_eq!(c.tls.0, None);
        assert_eq!(c.http.0, addr("[::1]:8080"));
        assert_eq!(c.https.0, None);
        assert_eq!(
            c.tls_files(),
            Some((Path::new("c.pem"), Path::new("k.pem")))
        );
        assert_eq!(c.tls_listener(), None); // disabled although a cert is set
        assert_eq!(c.store, StoreKind::Fdb);
        assert_eq!(c.fdb_cluster_file, Some(PathBuf::from("/etc/fdb.cluster")));
        assert_eq!((c.node_id, c.hostname.as_str()), (3, "n1"));
        assert_eq!((c.max_frame_bytes, c.max_body_bytes), (2048, 1024));
        assert_eq!(c.idle_timeout(), Duration::from_millis(3));
        assert_eq!(c.drain_timeout_ms, Duration::from_millis(5));
        assert_eq!((c.rate_per_sec, c.rate_burst), (6, 7));
        assert_eq!((c.max_conns_per_user, c.max_conns_per_ip), (8, 9));
        assert_eq!((c.outbound_queue_bytes, c.max_connections), (4096, 11));
        assert_eq!((c.max_group_members, c.retention_days), (12, 0));
        assert_eq!(c.token_ttl_secs, Duration::from_secs(13));
        assert_eq!(c.workers, 3);
        assert_eq!(c.max_password_hashes, 15);
        assert_eq!(c.http_header_timeout_ms, Duration::from_millis(16));
        assert_eq!((c.http_rate_per_sec, c.http_rate_burst), (17, 18));
        assert_eq!(c.http_request_timeout_ms, Duration::from_millis(19));
        assert_eq!(c.max_token_ttl_secs, Duration::from_secs(20));
        assert_eq!(
            c.push(),
            PushConfig {
                webhook: Some("http://127.0.0.1:9/push".into()),
                delay: Duration::from_millis(17),
                preview: false,
                format: PushFormat::Gorush,
                max_in_flight: 18,
                timeout: Duration::from_millis(19),
                max_attempts: 20,
                retry_base: Duration::from_millis(21),
                retry_max: Duration::from_millis(22),
            }
        );
        assert_eq!(
            c.resolve_secret().unwrap().as_bytes(),
            b"0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn every_file_key_parses() {
        let f = file(
            r#"
            data_dir = "/d"
            tcp = ":7000"
            tls = "off"
            http = "127.0.0.1:0"
            https = "[::]:443"
            cert = "c.pem"
            key = "k.pem"
            region = "eu"
            secret = "0123456789abcdef0123456789abcdef"
            store = "fdb"
            fdb_cluster_file = "/etc/fdb.cluster"
            node_id = 3
            hostname = "n1"
            max_frame_bytes = 2048
            max_body_bytes = 1024
            handshake_timeout_ms = 1
            heartbeat_ms = 2
            idle_timeout_ms = 3
            write_timeout_ms = 4
            drain_timeout_ms = 5
            rate_per_sec = 6
            rate_burst = 7
            max_conns_per_user = 8
            max_conns_per_ip = 9
            outbound_queue_bytes = 4096
            max_connections = 11
            max_group_members = 12
            workers = 3
            max_password_hashes = 15
            http_header_timeout_ms = 16
            http_rate_per_sec = 17
            http_rate_burst = 18
            http_request_timeout_ms = 19
            max_token_ttl_secs = 20
            token_ttl_secs = 13
            retention_days = 14
            push_webhook = "http://localhost:8088/api/push"
            push_delay_ms = 17
            push_preview = false
            push_format = "gorush"
            push_max_in_flight = 18
            push_timeout_ms = 19
            push_max_attempts = 20
            push_retry_base_ms = 21
            push_retry_max_ms = 22
            "#,
        );
        let c = Config::from_sources(&serve(&[]), &HashMap::new(), Some(f)).unwrap();
        assert_eq!(
            c.push().webhook.as_deref(),
            Some("http://localhost:8088/api/push")
        );
        assert_eq!(
            (c.push().format, c.push().preview),
            (PushFormat::Gorush, false)
        );
        assert_eq!(c.push().retry_max, Duration::from_millis(22));
        assert_eq!(c.workers, 3);
        assert_eq!(c.max_password_hashes, 15);
        assert_eq!(c.http_header_timeout_ms, Duration::from_millis(16));
        assert_eq!((c.http_rate_per_sec, c.http_rate_burst), (17, 18));
        assert_eq!(c.http_request_timeout_ms, Duration::from_millis(19));
        assert_eq!(c.max_token_ttl_secs, Duration::from_secs(20));
        assert_eq!(c.tcp.0, addr("0.0.0.0:7000"));
        assert_eq!(c.https_listener(), addr("[::]:443"));
        assert_eq!(c.store, StoreKind::Fdb);
        assert_eq!(c.retention_days, 14);
    }

    #[test]
    fn every_env_var_parses() {
        let e = env(&[
            ("HANMADI_DATA_DIR", "/d"),
            ("HANMADI_TCP", "OFF"),
            ("HANMADI_TLS", ":1"),
            ("HANMADI_HTTP", " 127.0.0.1:0 "),
            ("HANMADI_HTTPS", "off"),
            ("HANMADI_CERT", "c.pem"),
            ("HANMADI_KEY", "k.pem"),
            ("HANMADI_REGION", "eu"),
            ("HANMADI_SECRET", "0123456789abcdef0123456789abcdef"),
            ("HANMADI_STORE", "FDB"),
            ("HANMADI_FDB_CLUSTER_FILE", "/f"),
            ("HANMADI_NODE_ID", "1023"),
            ("HANMADI_HOSTNAME", "n1"),
            ("HANMADI_MAX_FRAME_BYTES", "2048"),
            ("HANMADI_MAX_BODY_BYTES", "1024"),
            ("HANMADI_HANDSHAKE_TIMEOUT_MS", "1"),
            ("HANMADI_HEARTBEAT_MS", "2"),
            ("HANMADI_IDLE_TIMEOUT_MS", "3"),
            ("HANMADI_WRITE_TIMEOUT_MS", "4"),
            ("HANMADI_DRAIN_TIMEOUT_MS", "5"),
            ("HANMADI_RATE_PER_SEC", "6"),
            ("HANMADI_RATE_BURST", "7"),
            ("HANMADI_MAX_CONNS_PER_USER", "8"),
            ("HANMADI_MAX_CONNS_PER_IP", "9"),
            ("HANMADI_OUTBOUND_QUEUE_BYTES", "4096"),
            ("HANMADI_MAX_CONNECTIONS", "11"),
            ("HANMADI_MAX_GROUP_MEMBERS", "12"),
            ("HANMADI_TOKEN_TTL_SECS", "13"),
            ("HANMADI_RETENTION_DAYS", "14"),
            ("HANMADI_WORKERS", "3"),
            ("HANMADI_MAX_PASSWORD_HASHES", "15"),
            ("HANMADI_HTTP_HEADER_TIMEOUT_MS", "16"),
            ("HANMADI_PUSH_WEBHOOK", "http://127.0.0.1:9/"),
            ("HANMADI_PUSH_DELAY_MS", "17"),
            ("HANMADI_PUSH_PREVIEW", "false"),
            ("HANMADI_PUSH_FORMAT", "Gorush"),
            ("HANMADI_PUSH_MAX_IN_FLIGHT", "18"),
            ("HANMADI_PUSH_TIMEOUT_MS", "19"),
            ("HANMADI_PUSH_MAX_ATTEMPTS", "20"),
            ("HANMADI_PUSH_RETRY_BASE_MS", "21"),
            ("HANMADI_PUSH_RETRY_MAX_MS", "22"),
            ("HANMADI_HTTP_RATE_PER_SEC", "17"),
            ("HANMADI_HTTP_RATE_BURST", "18"),
            ("HANMADI_HTTP_REQUEST_TIMEOUT_MS", "19"),
            ("HANMADI_MAX_TOKEN_TTL_SECS", "20"),
        ]);
        let c = Config::from_sources(&serve(&[]), &e, None).unwrap();
        assert_eq!(c.push().webhook.as_deref(), Some("http://127.0.0.1:9/"));
        assert_eq!(c.push().delay, Duration::from_millis(17));
        assert_eq!(
            (c.push().format, c.push().preview),
            (PushFormat::Gorush, false)
        );
        assert_eq!((c.push().max_in_flight, c.push().max_attempts), (18, 20));
        assert_eq!(c.workers, 3);
        assert_eq!(c.max_password_hashes, 15);
        assert_eq!(c.http_header_timeout_ms, Duration::from_millis(16));
        assert_eq!((c.http_rate_per_sec, c.http_rate_burst), (17, 18));
        assert_eq!(c.http_request_timeout_ms, Duration::from_millis(19));
        assert_eq!(c.max_token_ttl_secs, Duration::from_secs(20));
        assert_eq!(c.tcp.0, None);
        assert_eq!(c.tls_listener(), addr("0.0.0.0:1"));
        assert_eq!(c.http.0, addr("127.0.0.1:0"));
        assert_eq!(c.store, StoreKind::Fdb);
        assert_eq!(c.node_id, 1023);
        assert_eq!(c.token_ttl_secs, Duration::from_secs(13));
        assert_eq!(c.retention_days, 14);
    }

    #[test]
    fn unknown_file_key_is_a_clear_error() {
        let err = Config::parse_toml("tcp = \":1\"\nheartbeat = 5\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("heartbeat"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");

        // `config` is a flag only; a file cannot point at another file.
        assert!(Config::parse_toml("config = \"other.toml\"").is_err());
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let msg = Config::parse_toml("tcp = \"localhost:70\"")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("invalid listen address"), "{msg}");
        assert!(msg.contains("tcp"), "{msg}");

        let msg = Config::parse_toml("node_id = 70000")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("node_id"), "{msg}");
        let msg = Config::parse_toml("store = \"rocks\"")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("rocks"), "{msg}");
        assert!(Config::parse_toml("max_frame_bytes = -1").is_err());
        assert!(Config::parse_toml("tcp = 7070").is_err());
        assert!(Config::parse_toml("not toml at all").is_err());

        let err = Config::from_sources(&serve(&[]), &env(&[("HANMADI_TCP", "1.2.3.4")]), None)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("HANMADI_TCP"), "{msg}");
        assert!(msg.contains("invalid listen address"), "{msg}");

        let err = Config::from_sources(&serve(&[]), &env(&[("HANMADI_RATE_BURST", "lots")]), None)
            .unwrap_err();
        assert!(err.to_string().contains("HANMADI_RATE_BURST"), "{err}");
        assert!(err.to_string().contains("invalid digit"), "{err}");

        // A value a flag would refuse is refused from the environment too,
        // in one line that names the variable.
        let err = Config::from_sources(&serve(&[]), &env(&[("HANMADI_STORE", "rocks")]), None)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("environment variable HANMADI_STORE=\"rocks\""),
            "{msg}"
        );
        assert!(msg.contains("embedded") && !msg.contains('\n'), "{msg}");
        let err = Config::from_sources(&serve(&[]), &env(&[("HANMADI_NODE_ID", "-1")]), None)
            .unwrap_err();
        assert!(err.to_string().contains("HANMADI_NODE_ID"), "{err}");

        let err = Cli::try_parse_from(["hanmadi", "serve", "--http", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("invalid listen address"), "{err}");
        assert!(Cli::try_parse_from(["hanmadi", "serve", "--bogus"]).is_err());
        assert!(Cli::try_parse_from(["hanmadi", "serve", "--store", "rocks"]).is_err());
    }

    #[test]
    fn listen_forms() {
        let p = |s: &str| s.parse::<Listen>();
        assert_eq!(p("off").unwrap(), Listen(None));
        assert_eq!(p("None").unwrap(), Listen(None));
        assert_eq!(p(":0").unwrap(), Listen(addr("0.0.0.0:0")));
        assert_eq!(p("127.0.0.1:0").unwrap(), Listen(addr("127.0.0.1:0")));
        assert_eq!(p("[::]:7070").unwrap(), Listen(addr("[::]:7070")));
        for bad in ["", ":", ":70000", "127.0.0.1", "host:80", "::1:80", "offf"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(Listen(None).to_string(), "off");
        assert_eq!(Listen(addr("1.2.3.4:5")).to_string(), "1.2.3.4:5");
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let bad = |args: &[&str], setting: &str| {
            let err = Config::from_sources(&serve(args), &HashMap::new(), None).unwrap_err();
            match &err {
                ConfigError::Invalid { setting: s, .. } => assert_eq!(*s, setting, "{err}"),
                other => panic!("{args:?}: {other}"),
            }
        };
        bad(&["--cert", "c.pem"], "cert");
        bad(&["--key", "k.pem"], "key");
        bad(&["--max-body-bytes", "65536"], "max_body_bytes");
        bad(&["--max-body-bytes", "65025"], "max_body_bytes");
        bad(
            &["--max-frame-bytes", "8192", "--max-body-bytes", "4096"],
            "max_group_members",
        );
        bad(&["--max-body-bytes", "0"], "max_body_bytes");
        bad(&["--max-frame-bytes", "100"], "max_frame_bytes");
        bad(&["--max-frame-bytes", "5000000000"], "max_frame_bytes");
        bad(&["--outbound-queue-bytes", "1000"], "outbound_queue_bytes");
        bad(&["--heartbeat-ms", "0"], "heartbeat_ms");
        bad(&["--max-group-members", "5001"], "max_group_members");
        bad(
            &["--heartbeat-ms", "1000", "--idle-timeout-ms", "1000"],
            "idle_timeout_ms",
        );
        bad(&["--rate-burst", "0"], "rate_burst");
        bad(&["--push-webhook", "not a url"], "push_webhook");
        bad(&["--push-webhook", "ftp://host/x"], "push_webhook");
        bad(&["--push-max-in-flight", "0"], "push_max_in_flight");
        bad(&["--push-max-attempts", "0"], "push_max_attempts");
        bad(&["--push-timeout-ms", "0"], "push_timeout_ms");
        bad(
            &["--push-retry-base-ms", "10", "--push-retry-max-ms", "9"],
            "push_retry_max_ms",
        );
        bad(&["--max-conns-per-user", "0"], "max_conns_per_user");
        bad(&["--workers", "0"], "workers");
        bad(&["--workers", "1025"], "workers");
        bad(&["--region", " "], "region");

        let err = Config::from_sources(&serve(&["--secret", "short"]), &HashMap::new(), None)
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::SecretTooShort { len: 5 }),
            "{err}"
        );
    }

    #[test]
    fn secret_never_printed() {
        let c = Config::from_sources(
            &serve(&["--secret", "0123456789abcdef0123456789abcdef-private"]),
            &HashMap::new(),
            None,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("private"));
    }

    #[test]
    fn generated_secret_persists_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let c = Config::from_sources(
            &serve(&["--data-dir", data.to_str().unwrap()]),
            &HashMap::new(),
            None,
        )
        .unwrap();
        let first = c.resolve_secret().unwrap();
        assert_eq!(first.as_bytes().len(), 64);
        assert!(first.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(c.resolve_secret().unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(c.secret_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the secret is left behind, no temporary file.
        let names: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);

        // A configured secret wins over the file.
        let mut c2 = c.clone();
        c2.secret = Some(Secret::new(b"x".repeat(32)));
        assert_eq!(c2.resolve_secret().unwrap().as_bytes(), b"x".repeat(32));

        // A hand-edited file is trimmed; a short one is refused.
        std::fs::write(c.secret_path(), format!("  {}  \n", "y".repeat(40))).unwrap();
        assert_eq!(
            c.resolve_secret().unwrap().as_bytes(),
            "y".repeat(40).as_bytes()
        );
        std::fs::write(c.secret_path(), "short\n").unwrap();
        assert!(matches!(
            c.resolve_secret(),
            Err(ConfigError::SecretTooShort { len: 5 })
        ));
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::from_sources(
            &serve(&["--data-dir", dir.path().to_str().unwrap()]),
            &HashMap::new(),
            None,
        )
        .unwrap();
        let secrets: Vec<Secret> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| c.resolve_secret().unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn load_reads_the_file_named_by_env_or_flag() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "region = \"a\"\n").unwrap();
        std::fs::write(&b, "region = \"b\"\n").unwrap();
        let e = env(&[("HANMADI_CONFIG", a.to_str().unwrap())]);

        let c = Config::load_with_env(&serve(&[]), &e).unwrap();
        assert_eq!(
            (c.region.as_str(), c.config_file.as_deref()),
            ("a", Some(a.as_path()))
        );
        let c = Config::load_with_env(&serve(&["--config", b.to_str().unwrap()]), &e).unwrap();
        assert_eq!(c.region, "b");

        let missing = dir.path().join("missing.toml");
        let err = Config::load_with_env(&serve(&["--config", missing.to_str().unwrap()]), &e)
            .unwrap_err();
        assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
        assert!(err.to_string().contains("missing.toml"), "{err}");

        std::fs::write(&a, "region = \"a\"\ntypo = 1\n").unwrap();
        let err = Config::load_with_env(&serve(&[]), &e).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{msg}");
        assert!(msg.contains("a.toml") && msg.contains("typo"), "{msg}");
    }

    /// The module table, the flags and the file keys must name the same
    /// settings, or the README drifts from the binary.
    #[test]
    fn table_matches_flags_and_env() {
        let source = include_str!("config.rs");
        let rows: Vec<(String, String, String)> = source
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `--"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let unquote = |s: &str| s.trim_matches('`').to_owned();
                (
                    format!("--{}", unquote(cells[0])),
                    unquote(cells[1]),
                    unquote(cells[2]),
                )
            })
            .collect();

        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        let mut flags: Vec<String> = serve
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "help")
            .map(|l| format!("--{l}"))
            .collect();
        let mut table_flags: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        flags.sort();
        table_flags.sort();
        assert_eq!(flags, table_flags);

        for (flag, var, key) in &rows {
            let snake = flag.trim_start_matches("--").replace('-', "_");
            assert_eq!(*var, format!("HANMADI_{}", snake.to_ascii_uppercase()));
            if flag != "--config" {
                assert_eq!(*key, snake);
            }
        }
        Cli::command().debug_assert();
    }

    /// A default the table gives as a value is the one the node uses, and
    /// `--help` gives the same.
    #[test]
    fn table_and_help_defaults_are_the_real_ones() {
        let source = include_str!("config.rs");
        let serve_cmd = Cli::command();
        let serve_cmd = serve_cmd.find_subcommand("serve").unwrap();
        let defaults = format!("{:?}", Config::default());
        let mut checked = 0;
        for row in source.lines().filter_map(|l| l.strip_prefix("//! | `--")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let flag = cells[0].trim_matches('`');
            // Only defaults written as one value: not "none", "2.5 × ...".
            let Some(value) = cells[3].strip_prefix('`').and_then(|v| v.split('`').next()) else {
                continue;
            };
            let set = Config::from_sources(
                &serve(&[&format!("--{flag}"), value]),
                &HashMap::new(),
                None,
            )
            .unwrap();
            assert_eq!(format!("{set:?}"), defaults, "--{flag} {value}");

            let arg = serve_cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap();
            let help = arg.get_help().unwrap().to_string().replace('\n', " ");
            assert!(
                help.contains(&format!("[default: {value}]")),
                "--{flag}: {help}"
            );
            checked += 1;
        }
        assert!(checked >= 40, "{checked}");
    }
}
