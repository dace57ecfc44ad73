//! A running node: router, registry, listeners, and an orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hanmadi_router::{Router, RouterConfig};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use hanmadi_storage::chat::NodeLease;

use crate::auth::TokenIssuer;
use crate::cluster::delivery::{run_feed, run_notifier, Apply, ClusterSink};
use crate::cluster::link::Links;
use crate::cluster::peers::Peers;
use crate::cluster::presence::PresenceIndex;
use crate::cluster::LeaseTiming;
use crate::conn::{ConnConfig, ConnContext};
use crate::http_listener::{HttpLimits, HttpListener};
use crate::listener::accept_loop;
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryLimits};

/// Bound sockets to serve; tests bind `127.0.0.1:0`.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Raw TCP.
    pub tcp: Option<TcpListener>,
    /// TLS, with its configuration.
    pub tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// HTTP: the API and `/ws`.
    pub http: Option<TcpListener>,
    /// HTTPS: the API and `/ws` (WSS), with its TLS configuration.
    pub https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// In a cluster: the node-to-node link.
    pub link: Option<TcpListener>,
}

/// Everything a node is configured with besides its sockets and store.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Per-connection limits.
    pub conn: ConnConfig,
    /// Registry limits.
    pub registry: RegistryLimits,
    /// Router configuration.
    pub router: RouterConfig,
    /// Secret for tokens.
    pub secret: Vec<u8>,
    /// Longest a drain waits for connections to close.
    pub drain_timeout: Duration,
    /// Longest an HTTP request's headers may take to arrive, and an HTTP
    /// keep-alive connection may stay idle.
    pub http_header_timeout: Duration,
    /// Inbox entries older than this are trimmed (`None`: kept forever).
    pub retention: Option<Duration>,
    /// How long a token from `POST /v1/sessions` lasts.
    pub token_ttl: Duration,
    /// Longest lifetime an accepted token may claim (Hanmadi tokens and
    /// JWTs alike).
    pub max_token_ttl: Duration,
    /// Password hashes running at once (sign-ups and log-ins).
    pub max_password_hashes: usize,
    /// HTTP request rate per remote address and deadline per request.
    pub http_requests: crate::http::limits::RequestLimits,
    /// This node's region, for discovery ranking.
    pub region: String,
    /// The host name clients dial and check TLS certificates against
    /// (`None`: the machine's host name).
    pub hostname: Option<String>,
    /// Connections this node is meant to hold: its capacity in discovery.
    pub max_connections: u64,
    /// Pushes to offline recipients (off without a webhook).
    pub push: crate::push::PushConfig,
    /// In a cluster: the lease this node holds on its id (which then
    /// overrides `router.node`), and how it is renewed.
    pub cluster: Option<(NodeLease, LeaseTiming)>,
    /// In a cluster, how often the change feed is read: the longest a
    /// delivery waits when its link notification was lost.
    pub cluster_backstop: Duration,
    /// How to read the store's memory for `/metrics` (the embedded store);
    /// exported from the first scrape on.
    pub store_memory: Option<crate::metrics::StoreMemoryProbe>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            conn: ConnConfig::default(),
            registry: RegistryLimits {
                per_user: 16,
                per_ip: 1000,
                outbound_bytes: 1 << 20,
                tarpit: Duration::from_secs(10),
            },
            router: RouterConfig::default(),
            secret: Vec::new(),
            drain_timeout: Duration::from_secs(4),
            http_header_timeout: Duration::from_secs(30),
            retention: Some(Duration::from_secs(30 * 86_400)),
            token_ttl: Duration::from_secs(7 * 86_400),
            max_token_ttl: Duration::from_secs(30 * 86_400),
            max_password_hashes: crate::password::Passwords::default_concurrency(),
            http_requests: crate::http::limits::RequestLimits::default(),
            region: "local".to_owned(),
            hostname: None,
            max_connections: 100_000,
            push: crate::push::PushConfig::default(),
            cluster: None,
            cluster_backstop: Duration::from_secs(1),
            store_memory: None,
        }
    }
}

/// A running node.
pub struct Server<K: Kv> {
    router: Arc<Router<K>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    auth: Arc<TokenIssuer>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    appender: JoinHandle<()>,
    tcp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    link_addr: Option<SocketAddr>,
    drain_timeout: Duration,
    lease_lost: CancellationToken,
    links: Option<Arc<Links>>,
}

impl<K: Kv> std::fmt::Debug for Server<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("tcp", &self.tcp_addr)
            .field("tls", &self.tls_addr)
            .finish_non_exhaustive()
    }
}

impl<K: Kv> Server<K> {
    /// Starts serving `listeners` over `store` on the current runtime.
    ///
    /// # Panics
    ///
    /// When `store` is split by conversation (configured for a cluster)
    /// and `options` has no cluster: its conversations commit side by side
    /// and deliver out of commit order, which only the cluster's delivery
    /// puts back in order; one node's connections would skip entries.
    pub fn start(store: ChatStore<K>, listeners: Listeners, mut options: ServerOptions) -> Self {
        assert!(
            options.cluster.is_some() || !store.config().split_by_conversation,
            "a store split by conversation needs ServerOptions::cluster"
        );
        let store = match &options.cluster {
            Some((lease, _)) => {
                // Node ids are 10 bits; a lease never names a larger one.
                options.router.node = u16::try_from(lease.node_id).unwrap_or(u16::MAX);
                store.fenced(*lease)
            }
            None => store,
        };
        let lease_store = store.clone();
        let metrics = Arc::new(match options.store_memory.clone() {
            Some(probe) => Metrics::with_store_memory(probe),
            None => Metrics::new(),
        });
        let registry = Arc::new(Registry::new(options.registry, Arc::clone(&metrics)));
        let peers = Arc::new(Peers::default());
        // Set by the change feed's reader once it has its start (cluster).
        let feed_started = Arc::new(tokio::sync::SetOnce::new());
        // In a cluster every commit notifies and connections pull
        // (`cluster::delivery`); on one node frames go straight out.
        let cluster = options.cluster.map(|(lease, timing)| {
            let links = Arc::new(Links::new(
                lease.node_id,
                lease.epoch,
                &options.secret,
                Arc::clone(&peers),
                Arc::clone(&metrics),
            ));
            let presence = Arc::new(PresenceIndex::new(
                store.clone(),
                lease,
                Arc::clone(&registry),
                Arc::clone(&peers),
            ));
            let index = Arc::clone(&presence);
            registry.on_presence_change(move |user| index.changed(user));
            let (sink, notices) = ClusterSink::new(
                Arc::clone(&registry),
                Arc::clone(&presence),
                Arc::clone(&links),
            );
            (lease, timing, links, presence, Arc::new(sink), notices)
        });
        let (online, sink): (
            Arc<dyn hanmadi_router::Presence>,
            Arc<dyn hanmadi_router::DeliverySink>,
        ) = match &cluster {
            Some((_, _, _, _, sink, _)) => (sink.clone(), sink.clone()),
            None => (registry.clone(), registry.clone()),
        };
        let (router, appender) = Router::start(store, online, sink, options.router);
        let router = Arc::new(router);
        if let Some((lease, _)) = &options.cluster {
            // Mint above every id the id's previous holder could have.
            let floor_ms = lease
                .ids_floor_ms
                .saturating_sub(hanmadi_router::ids::ID_EPOCH_MS);
            router
                .ids()
                .next_above(hanmadi_router::ids::compose(floor_ms, 0, 0));
        }
        let auth = Arc::new(TokenIssuer::new(&options.secret).with_max_ttl(options.max_token_ttl));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ctx = Arc::new(ConnContext {
            router: Arc::clone(&router),
            registry: Arc::clone(&registry),
            auth: Arc::clone(&auth),
            metrics: Arc::clone(&metrics),
            config: options.conn,
            shutdown: shutdown.clone(),
            presence: cluster.as_ref().map(|c| Arc::clone(&c.3)),
            feed_started: cluster.as_ref().map(|_| Arc::clone(&feed_started)),
        });
        if let Some(retention) = options.retention {
            tracker.spawn(retention_sweeps(
                Arc::clone(&router),
                retention,
                shutdown.clone(),
            ));
        }
        if options.push.webhook.is_some() {
            tracker.spawn(crate::push::run(
                router.store().clone(),
                options.push.clone(),
                Arc::clone(&metrics),
                shutdown.clone(),
            ));
        }
        let tcp_addr = listeners.tcp.as_ref().and_then(|l| l.local_addr().ok());
        let http_addr = listeners.http.as_ref().and_then(|l| l.local_addr().ok());
        let link_addr = listeners.link.as_ref().and_then(|l| l.local_addr().ok());
        let https_addr = listeners
            .https
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok());
        let tls_addr = listeners
            .tls
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok());
        let hostname = options
            .hostname
            .clone()
            .unwrap_or_else(crate::config::machine_hostname);
        // Peers dial the link at the address it is bound to, or at the
        // host name when it listens on every interface.
        let link = listeners
            .link
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| {
                if a.ip().is_unspecified() {
                    format!("{hostname}:{}", a.port())
                } else {
                    a.to_string()
                }
            })
            .unwrap_or_default();
        let node = crate::http::NodeInfo {
            node_id: u64::from(options.router.node),
            endpoints: crate::http::Endpoints::bound(
                &hostname, tcp_addr, tls_addr, http_addr, https_addr,
            ),
            hostname,
            region: options.region.clone(),
            max_connections: options.max_connections,
            link,
        };
        let mut links = None;
        if let Some((lease, timing, cluster_links, presence, _, notices)) = cluster {
            let store = router.store().clone();
            let apply = Arc::new(Apply {
                router: Arc::downgrade(&router),
                registry: Arc::clone(&registry),
                presence: Arc::clone(&presence),
            });
            tracker.spawn(crate::cluster::run_peers(
                store.clone(),
                lease.node_id,
                Arc::clone(&peers),
                timing.renew_every,
                shutdown.clone(),
            ));
            let on_event = Arc::clone(&apply);
            let stale = Arc::clone(&presence);
            cluster_links.on_change(Arc::new(move || stale.forget_all()));
            cluster_links.spawn(
                listeners.link,
                Arc::new(move |event| on_event.link_event(event)),
                timing.renew_every,
                &tracker,
                shutdown.clone(),
            );
            tracker.spawn(run_notifier(
                notices,
                Arc::clone(&presence),
                Arc::clone(&cluster_links),
                shutdown.clone(),
            ));
            tracker.spawn(presence.run_writer(Arc::clone(&cluster_links), shutdown.clone()));
            tracker.spawn(run_feed(
                store,
                apply,
                options.cluster_backstop,
                feed_started,
                shutdown.clone(),
            ));
            links = Some(cluster_links);
        }
        let lease_lost = CancellationToken::new();
        if let Some((lease, timing)) = options.cluster {
            let (node, registry, draining) =
                (node.clone(), Arc::clone(&registry), shutdown.clone());
            crate::cluster::membership::spawn_renewals(
                &tracker,
                lease_store,
                lease,
                timing,
                move || node.record(registry.connections() as u64, draining.is_cancelled()),
                shutdown.clone(),
                lease_lost.clone(),
            );
        }
        let api = crate::http::routes(crate::http::HttpState {
            ctx: Arc::clone(&ctx),
            passwords: Arc::new(crate::password::Passwords::new(
                options.max_password_hashes,
                crate::password::DEFAULT_WAIT,
            )),
            token_ttl: options.token_ttl,
            node: Arc::new(node),
            tracker: tracker.clone(),
            limiter: Arc::new(crate::http::limits::RequestLimiter::new(
                options.http_requests,
            )),
        });
        let web = HttpListener {
            app: api,
            tls: None,
            registry: Arc::clone(&registry),
            metrics: Arc::clone(&metrics),
            limits: HttpLimits {
                handshake_timeout: options.conn.handshake_timeout,
                header_timeout: options.http_header_timeout,
                // Connections finish their request within the drain, or
                // are cut when it ends.
                drain_timeout: options.drain_timeout,
            },
            shutdown: shutdown.clone(),
        };
        if let Some(l) = listeners.http {
            tracker.spawn(web.clone().serve(l, tracker.clone()));
        }
        if let Some((l, config)) = listeners.https {
            let https = HttpListener {
                tls: Some(TlsAcceptor::from(config)),
                ..web
            };
            tracker.spawn(https.serve(l, tracker.clone()));
        }
        if let Some(l) = listeners.tcp {
            tracker.spawn(accept_loop(l, None, Arc::clone(&ctx), tracker.clone()));
        }
        if let Some((l, config)) = listeners.tls {
            let acceptor = TlsAcceptor::from(config);
            tracker.spawn(accept_loop(
                l,
                Some(acceptor),
                Arc::clone(&ctx),
                tracker.clone(),
            ));
        }
        Self {
            router,
            registry,
            metrics,
            auth,
            shutdown,
            tracker,
            appender,
            tcp_addr,
            tls_addr,
            http_addr,
            https_addr,
            link_addr,
            drain_timeout: options.drain_timeout,
            lease_lost,
            links,
        }
    }

    /// Cancelled when this node lost its lease on its id (or let it lapse):
    /// it must stop, since its commits fail from then on.
    pub fn lease_lost(&self) -> CancellationToken {
        self.lease_lost.clone()
    }

    /// In a cluster: the node-to-node links.
    pub fn links(&self) -> Option<&Arc<Links>> {
        self.links.as_ref()
    }

    /// The bound address of the node-to-node link (a cluster node).
    pub fn link_addr(&self) -> Option<SocketAddr> {
        self.link_addr
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The bound TLS address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bound HTTPS address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router<K>> {
        &self.router
    }

    /// The connection registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Token issuing and checking with the node's secret.
    pub fn auth(&self) -> &Arc<TokenIssuer> {
        &self.auth
    }

    /// Drains the node: stops accepting, lets requests in flight (sends
    /// being committed) finish and answers them, tells every client to
    /// reconnect elsewhere, closes the sockets, then waits for the router to
    /// commit what is queued and write the receipts it holds.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain timeout");
        }
        let Self {
            router, appender, ..
        } = self;
        // The router's work ends once the last router handle is gone: its
        // queue committed, its pending acks and read marks written.
        drop(router);
        let _ = tokio::time::timeout(Duration::from_secs(5), appender).await;
    }
}

/// Applies the retention window to every inbox, a minute after start and
/// then hourly, until shutdown.
async fn retention_sweeps<K: Kv>(
    router: Arc<Router<K>>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        wait = Duration::from_secs(3600);
        let cutoff = crate::now_ms().saturating_sub(retention.as_millis() as u64);
        match router.store().trim_all_inboxes(cutoff).await {
            Ok(n) => tracing::info!(removed = n, "inbox retention sweep"),
            Err(e) => tracing::warn!(error = %e, "inbox retention sweep failed"),
        }
    }
}
