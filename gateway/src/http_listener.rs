//! The HTTP and HTTPS listeners: the API routes and `/ws` (WSS behind
//! TLS), one task per connection, served by hyper with upgrades enabled.
//!
//! Every connection is bounded like a socket connection: counted against
//! the per-address limit, the TLS handshake within the handshake deadline,
//! and each request's headers within the header deadline, which also closes
//! a keep-alive connection left idle that long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::listener::{accept_admitted, tls_handshake};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Deadlines of HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// The TLS handshake (HTTPS).
    pub handshake_timeout: Duration,
    /// A request's headers, and an idle keep-alive connection.
    pub header_timeout: Duration,
    /// On shutdown, longest a connection may take to finish its request.
    pub drain_timeout: Duration,
}

/// What every HTTP connection task shares.
#[derive(Clone)]
pub struct HttpListener {
    /// The routes.
    pub app: axum::Router,
    /// `Some` for HTTPS.
    pub tls: Option<TlsAcceptor>,
    /// Per-address connection counts.
    pub registry: Arc<Registry>,
    /// Close reasons.
    pub metrics: Arc<Metrics>,
    /// Deadlines.
    pub limits: HttpLimits,
    /// Fires when the node drains.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for HttpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpListener")
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HttpListener {
    /// Accepts on `listener` until shutdown, serving each connection in its
    /// own task on `tracker`.
    pub async fn serve(self, listener: TcpListener, tracker: TaskTracker) {
        let this = Arc::new(self);
        while let Some((socket, peer, permit)) =
            accept_admitted(&listener, &this.registry, &this.metrics, &this.shutdown).await
        {
            let this = Arc::clone(&this);
            tracker.spawn(async move {
                match &this.tls {
                    None => this.serve_connection(socket, peer).await,
                    Some(acceptor) => {
                        let timeout = this.limits.handshake_timeout;
                        if let Some(tls) =
                            tls_handshake(acceptor, socket, timeout, &this.metrics).await
                        {
                            this.serve_connection(tls, peer).await;
                        }
                    }
                }
                drop(permit);
            });
        }
    }

    async fn serve_connection<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let app = self.app.clone();
        let secure = self.tls.is_some();
        // Handlers see the peer address as behind `axum::serve`, and
        // whether the request came in over TLS.
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let extensions = request.extensions_mut();
            extensions.insert(ConnectInfo(peer));
            if secure {
                extensions.insert(crate::ws::Secure);
            }
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = self.shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
        }
        let _ = tokio::time::timeout(self.limits.drain_timeout, conn).await;
    }
}
