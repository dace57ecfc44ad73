//! The `hanmadi` binary: `hanmadi serve` runs a node, `hanmadi gen-cert`
//! writes a self-signed certificate for local TLS, `hanmadi admin-token`
//! prints the operator's admin token.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hanmadi_gateway::auth::TokenIssuer;
use hanmadi_gateway::cluster::LeaseTiming;
use hanmadi_gateway::config::{Cli, Command, Config, StoreKind};
use hanmadi_gateway::conn::ConnConfig;
use hanmadi_gateway::metrics::{StoreMemory, StoreMemoryProbe};
use hanmadi_gateway::registry::RegistryLimits;
use hanmadi_gateway::{tls, Listeners, Server, ServerOptions};
use hanmadi_router::RouterConfig;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::backend::Backend;
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::{ChatStore, StoreConfig};
use tokio::net::TcpListener;

/// mimalloc rather than glibc's malloc: every argon2id hash allocates and
/// frees ~19 MiB, and glibc kept those in per-thread arenas (its mmap
/// threshold rises to the freed size, so later hashes no longer map and
/// unmap their memory), which grew a node's RSS by ~0.8 MiB per sign-up.
/// mimalloc returns freed pages to the OS; docs/PERFORMANCE.md has both
/// figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The storage engine's own progress notes are for debugging it.
    let default_filter = "info,fjall=warn,lsm_tree=warn";
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::GenCert(args) => args.run().map_err(|e| e.to_string()).map(|()| {
            println!(
                "wrote {} and {}",
                args.cert_path().display(),
                args.key_path().display()
            );
        }),
        Command::AdminToken(args) => Config::load(&args)
            .and_then(|config| config.resolve_secret())
            .map(|secret| println!("{}", TokenIssuer::new(secret.as_bytes()).admin_token()))
            .map_err(|e| e.to_string()),
        Command::Serve(args) => match Config::load(&args) {
            Ok(config) => serve(config),
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hanmadi: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    match config.store {
        StoreKind::Embedded => {
            let path = config.data_dir.join("store");
            let options = FjallOptions {
                cache_size: config.store_cache_mb << 20,
                max_memtable_size: config.store_memtable_mb << 20,
                background_nice: config.store_background_nice,
                ..FjallOptions::default()
            };
            let backend = FjallBackend::open(&path, options)
                .map_err(|e| format!("opening the store in {}: {e}", path.display()))?;
            let memory = backend.memory();
            let probe = StoreMemoryProbe::new(move || StoreMemory {
                cache_bytes: memory.cache_bytes(),
                cache_capacity_bytes: memory.cache_capacity(),
                write_buffer_bytes: memory.write_buffer_bytes(),
            });
            serve_embedded(&runtime, &config, backend, Some(probe))
        }
        StoreKind::Fdb => serve_fdb(&runtime, &config),
        StoreKind::Rocksdb => serve_rocksdb(&runtime, &config),
    }
}

/// Serves on one node's embedded store over `backend`.
fn serve_embedded<B: Backend>(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    backend: B,
    probe: Option<StoreMemoryProbe>,
) -> Result<(), String> {
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default())
        .map_err(|e| format!("starting the store: {e}"))?;
    runtime.block_on(run(
        ChatStore::new(kv, StoreConfig::single_node()),
        config,
        false,
        probe,
    ))
}

#[cfg(feature = "rocksdb")]
fn serve_rocksdb(runtime: &tokio::runtime::Runtime, config: &Config) -> Result<(), String> {
    use hanmadi_storage::backend::rocksdb::{RocksdbBackend, RocksdbOptions};
    let path = config.data_dir.join("store-rocksdb");
    let options = RocksdbOptions {
        cache_size: usize::try_from(config.store_cache_mb << 20).unwrap_or(usize::MAX),
        max_memtable_size: usize::try_from(config.store_memtable_mb << 20).unwrap_or(usize::MAX),
        background_low_priority: config.store_background_nice > 0,
        ..RocksdbOptions::default()
    };
    let backend = RocksdbBackend::open(&path, options)
        .map_err(|e| format!("opening the store in {}: {e}", path.display()))?;
    serve_embedded(runtime, config, backend, None)
}

#[cfg(not(feature = "rocksdb"))]
fn serve_rocksdb(_: &tokio::runtime::Runtime, _: &Config) -> Result<(), String> {
    Err("this hanmadi was built without RocksDB support (feature `rocksdb`)".into())
}

#[cfg(feature = "foundationdb")]
fn serve_fdb(runtime: &tokio::runtime::Runtime, config: &Config) -> Result<(), String> {
    use hanmadi_storage::fdb::FdbKv;
    let cluster = config
        .fdb_cluster_file
        .as_ref()
        .map(|p| p.display().to_string());
    let kv = FdbKv::open(cluster.as_deref()).map_err(|e| format!("opening FoundationDB: {e}"))?;
    // A transaction older than 5 s can no longer commit (FoundationDB's
    // window), so waiting longer only holds a sender's answer back while
    // the cluster is unreachable.
    kv.set_transaction_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| format!("configuring FoundationDB: {e}"))?;
    let store = ChatStore::new(kv, StoreConfig::for_cluster());
    let result = runtime.block_on(run(store, config, true, None));
    hanmadi_storage::fdb::stop_network();
    result
}

#[cfg(not(feature = "foundationdb"))]
fn serve_fdb(_: &tokio::runtime::Runtime, _: &Config) -> Result<(), String> {
    Err("this hanmadi was built without FoundationDB support (feature `foundationdb`)".into())
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, String> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding the {what} listener to {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    // Scripts and tests read the bound ports from these lines.
    println!("listening {what} {local}");
    Ok(l)
}

/// Serves until SIGTERM or SIGINT, or until a cluster node loses its lease.
/// `cluster`: take the node id from a lease in storage (`--store fdb`).
/// `store_memory`: how to read the store's memory for `/metrics`.
async fn run<K: Kv>(
    store: ChatStore<K>,
    config: &Config,
    cluster: bool,
    store_memory: Option<StoreMemoryProbe>,
) -> Result<(), String> {
    let secret = config.resolve_secret().map_err(|e| e.to_string())?;
    let mut listeners = Listeners::default();
    if let Some(addr) = config.tcp.0 {
        listeners.tcp = Some(bind(addr, "tcp").await?);
    }
    if let Some(addr) = config.http.0 {
        listeners.http = Some(bind(addr, "http").await?);
    }
    // One certificate for both TLS listeners, reloaded on SIGHUP.
    let certificate = match config.tls_files() {
        Some((cert, key))
            if config.tls_listener().is_some() || config.https_listener().is_some() =>
        {
            Some(Arc::new(
                tls::ReloadableCert::load(cert, key).map_err(|e| e.to_string())?,
            ))
        }
        _ => None,
    };
    if let (Some(addr), Some(certificate)) = (config.tls_listener(), &certificate) {
        listeners.tls = Some((bind(addr, "tls").await?, certificate.server_config(&[])));
    }
    if let (Some(addr), Some(certificate)) = (config.https_listener(), &certificate) {
        // HTTP/1.1 only: WebSocket upgrades are HTTP/1.1 requests.
        let tls = certificate.server_config(&[tls::ALPN_HTTP_1_1]);
        listeners.https = Some((bind(addr, "https").await?, tls));
    }
    let cluster = if cluster {
        if config.node_id != 0 {
            tracing::warn!(
                "--node-id is ignored with --store fdb: the node takes its id from a lease"
            );
        }
        let timing = LeaseTiming {
            expiry: config.lease_expiry_ms,
            renew_every: config.lease_expiry_ms / 5,
        };
        let record = hanmadi_storage::chat::NodeRecord {
            hostname: config.hostname.clone(),
            region: config.region.clone(),
            ..Default::default()
        };
        listeners.link = Some(bind(config.cluster_link, "cluster link").await?);
        let lease = hanmadi_gateway::cluster::join(&store, &record, timing)
            .await
            .map_err(|e| format!("joining the cluster: {e}"))?;
        Some((lease, timing))
    } else {
        None
    };
    let options = ServerOptions {
        conn: ConnConfig {
            max_frame: config.max_frame_bytes,
            handshake_timeout: config.handshake_timeout_ms,
            heartbeat: config.heartbeat_ms,
            idle_timeout: config.idle_timeout(),
            rate_per_sec: config.rate_per_sec,
            rate_burst: config.rate_burst,
            write_timeout: config.write_timeout_ms,
            max_body: config.max_body_bytes,
            ..ConnConfig::default()
        },
        registry: RegistryLimits {
            per_user: config.max_conns_per_user,
            per_ip: config.max_conns_per_ip,
            outbound_bytes: config.outbound_queue_bytes,
            ..ServerOptions::default().registry
        },
        router: RouterConfig {
            node: config.node_id,
            max_body: config.max_body_bytes,
            max_group_members: config.max_group_members,
            page_bytes: hanmadi_router::page_bytes_for_frame(config.max_frame_bytes),
            page_bytes_per_sec: config.page_bytes_per_sec,
            appender: hanmadi_router::AppenderConfig {
                linger: std::time::Duration::from_micros(config.commit_linger_us),
                max_wait: config.max_send_wait_ms,
                ..hanmadi_router::AppenderConfig::default()
            },
            ..RouterConfig::default()
        },
        secret: secret.into_bytes(),
        drain_timeout: config.drain_timeout_ms,
        retention: (config.retention_days > 0)
            .then(|| std::time::Duration::from_secs(u64::from(config.retention_days) * 86_400)),
        token_ttl: config.token_ttl_secs,
        max_token_ttl: config.max_token_ttl_secs,
        region: config.region.clone(),
        hostname: Some(config.hostname.clone()),
        max_connections: config.max_connections,
        max_password_hashes: config.max_password_hashes,
        http_header_timeout: config.http_header_timeout_ms,
        push: config.push(),
        http_requests: hanmadi_gateway::http::limits::RequestLimits {
            rate_per_sec: config.http_rate_per_sec,
            burst: config.http_rate_burst,
            deadline: config.http_request_timeout_ms,
        },
        cluster,
        cluster_backstop: config.cluster_backstop_ms,
        store_memory,
    };
    let server = Server::start(store, listeners, options);
    tracing::info!(data_dir = %config.data_dir.display(), "hanmadi is serving");
    let lease_lost = server.lease_lost();
    let outcome = tokio::select! {
        signal = wait_for_signal(certificate.as_deref()) => signal,
        () = lease_lost.cancelled() => Err("this node lost its lease on its node id".to_owned()),
    };
    tracing::info!("draining: finishing commits in flight and closing connections");
    server.shutdown().await;
    tracing::info!("stopped");
    outcome
}

/// Waits for SIGTERM or SIGINT; on SIGHUP meanwhile, reloads the TLS
/// certificate and key (a failed reload keeps the old ones).
async fn wait_for_signal(certificate: Option<&tls::ReloadableCert>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match certificate.map(tls::ReloadableCert::reload) {
                Some(Ok(())) => {
                    tracing::info!("reloaded the TLS certificate and key");
                    // Tests and scripts wait for this line.
                    println!("reloaded tls certificate");
                }
                Some(Err(e)) => tracing::warn!(error = %e, "TLS reload failed; keeping the old certificate"),
                None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            },
        }
    }
}
