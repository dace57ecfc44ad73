//! `hanmadi-loadtest`: drives real connections against a Hanmadi node or
//! cluster, in the manner of `nats bench`, k6 and tsung, and answers "how
//! many users and messages does it carry, at what latency, and does it
//! lose anything under load?".
//!
//! It speaks to servers only as a user does: through the client library
//! and the HTTP API. Accounts come from the operator route
//! `POST /v1/admin/users:batch` (authorized by the admin token derived
//! from `--secret`), and each user authenticates with an HS256 JWT minted
//! with the same secret, so ten thousand users are ready in seconds.
//!
//! | module | holds |
//! |---|---|
//! | `cli` | the command line |
//! | `control` | the HTTP control plane: provisioning, tokens, discovery, server usage |
//! | `net` | endpoints, TLS trust, opening connections |
//! | `load` | the open-loop pacers and the delivery receivers |
//! | `ledger` | correctness: acknowledged vs received, lost/duplicated/reordered |
//! | `stats` | counters, HdrHistograms, the per-second series |
//! | `report` | the summary table, `--json`, `--report` (HTML + SVG) |
//! | `scenario` | `direct`, `group`, `idle`, `reconnect`, `http`, `attack` |
//!
//! Exit status: 0 when every acknowledged message reached every recipient
//! device exactly once and in order; 1 when any was lost, duplicated or
//! reordered; 2 when the run could not be made (no server, refused
//! credentials, bad options).

/// mimalloc, as the server uses: the tool allocates per send and per
/// delivery, and its CPU shares the machine with the node it measures
/// (docs/PERFORMANCE.md has the tool's CPU per message with glibc's malloc
/// and with this one).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod control;
mod ledger;
mod load;
mod net;
mod report;
mod scenario;
mod stats;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    tracing_subscriber_init();
    let cli = cli::Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = cli.workers {
        builder.worker_threads(usize::from(workers));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hanmadi-loadtest: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(scenario::run(&cli.scenario)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hanmadi-loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    let common = cli.scenario.common();
    print!("{}", report.table());
    if let Some(path) = &common.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("hanmadi-loadtest: {e:#}");
            return ExitCode::from(2);
        }
    }
    if let Some(dir) = &common.report {
        if let Err(e) = report.write_html(dir) {
            eprintln!("hanmadi-loadtest: {e:#}");
            return ExitCode::from(2);
        }
        println!("  report: {}", dir.join("index.html").display());
    }
    if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Warnings (a connection that dropped, a refused long-poll) go to stderr;
/// `RUST_LOG` says more.
fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
