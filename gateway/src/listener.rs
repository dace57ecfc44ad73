//! Accept loops: TCP and TLS listeners hand each socket to its own task.
//!
//! [`accept_admitted`] and [`tls_handshake`] are shared with the HTTP and
//! HTTPS listeners ([`crate::http_listener`]), so every port applies the
//! per-address limit and the handshake deadline the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hanmadi_storage::kv::Kv;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{self, ConnContext};
use crate::metrics::Metrics;
use crate::registry::{IpPermit, RegisterError, Registry};

/// Accepts on `listener` until shutdown, serving each socket in its own
/// task (TLS when `tls` is given). Sockets past the per-address limit are
/// closed at once.
pub async fn accept_loop<K: Kv>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<ConnContext<K>>,
    tracker: TaskTracker,
) {
    while let Some((socket, peer, permit)) =
        accept_admitted(&listener, &ctx.registry, &ctx.metrics, &ctx.shutdown).await
    {
        let ctx = Arc::clone(&ctx);
        // Two task types, not one with both paths: a task's size is that of
        // its largest state, and a TLS stream is far larger than a socket,
        // so plain TCP connections would pay for TLS.
        match &tls {
            None => {
                tracker.spawn(async move {
                    conn::serve(ctx, socket, peer, "tcp").await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tracker.spawn(async move {
                    serve_tls(ctx, socket, peer, acceptor).await;
                    drop(permit);
                });
            }
        }
    }
}

/// The next accepted socket that the per-address limit admits, with its
/// permit; `None` once `shutdown` fires. Refused sockets are counted and
/// reset, those of a struck address after the tarpit
/// ([`crate::registry::RegistryLimits::tarpit`]).
pub(crate) async fn accept_admitted(
    listener: &TcpListener,
    registry: &Arc<Registry>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, IpPermit)> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return None,
        };
        match accepted {
            Ok((socket, peer)) => {
                let refused = match registry.admit_ip(peer.ip()) {
                    Ok(permit) => {
                        let _ = socket.set_nodelay(true);
                        return Some((socket, peer, permit));
                    }
                    Err(refused) => refused,
                };
                metrics.closed(refused.reason());
                let tarpitted = (refused == RegisterError::Struck)
                    .then(|| registry.tarpit(peer.ip()))
                    .flatten();
                match tarpitted {
                    Some(permit) => {
                        let hold = registry.tarpit_time();
                        tokio::spawn(tarpit(socket, permit, hold, shutdown.clone()));
                    }
                    // A reset rather than a close: no FIN exchange and no
                    // TIME_WAIT left behind for a socket refused unread.
                    None => {
                        let _ = socket.set_zero_linger();
                    }
                }
            }
            Err(e) => {
                // Out of descriptors or a reset before accept: keep serving,
                // after a short pause so a persistent error does not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Holds a struck address's socket unread and unanswered for `hold` (or
/// until shutdown), then resets it. Unread, its data costs nothing but the
/// kernel's receive buffer, and the peer's next connection waits for this
/// one's end.
async fn tarpit(socket: TcpStream, permit: IpPermit, hold: Duration, shutdown: CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(hold) => {}
        () = shutdown.cancelled() => {}
    }
    let _ = socket.set_zero_linger();
    drop(socket);
    drop(permit);
}

/// The server side of a TLS handshake within `timeout`; a failure is
/// counted as a close and yields `None`.
pub(crate) async fn tls_handshake(
    acceptor: &TlsAcceptor,
    socket: TcpStream,
    timeout: Duration,
    metrics: &Metrics,
) -> Option<TlsStream<TcpStream>> {
    // Fallible: a failed handshake hands the socket back, so the close is
    // counted before the socket closes.
    match tokio::time::timeout(timeout, acceptor.accept(socket).into_fallible()).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err((_, socket))) => {
            metrics.closed("tls_handshake_failed");
            drop(socket);
            None
        }
        Err(_) => {
            metrics.closed("handshake_timeout");
            None
        }
    }
}

async fn serve_tls<K: Kv>(
    ctx: Arc<ConnContext<K>>,
    socket: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
) {
    // The handshake's state is boxed: it is gone once the session is up.
    let handshake = Box::pin(tls_handshake(
        &acceptor,
        socket,
        ctx.config.handshake_timeout,
        &ctx.metrics,
    ));
    if let Some(stream) = handshake.await {
        conn::serve(ctx, stream, peer, "tls").await;
    }
}
