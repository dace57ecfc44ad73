//! Accept loops: TCP and TLS listeners hand each socket to its own task.

use std::net::SocketAddr;
use std::sync::Arc;

use hanmadi_storage::kv::Kv;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::conn::{self, ConnContext};

/// Accepts on `listener` until shutdown, serving each socket in its own
/// task (TLS when `tls` is given). Sockets past the per-address limit are
/// closed at once.
pub async fn accept_loop<K: Kv>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<ConnContext<K>>,
    tracker: TaskTracker,
) {
    let transport = if tls.is_some() { "tls" } else { "tcp" };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = ctx.shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or a reset before accept: keep serving,
                // after a short pause so a persistent error does not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        if ctx.registry.admit_ip(peer.ip()).is_err() {
            ctx.metrics.closed("too_many_from_address");
            continue;
        }
        let ctx = Arc::clone(&ctx);
        // Two task types, not one with both paths: a task's size is that of
        // its largest state, and a TLS stream is far larger than a socket,
        // so plain TCP connections would pay for TLS.
        match &tls {
            None => {
                tracker.spawn(async move {
                    conn::serve(Arc::clone(&ctx), socket, peer, transport).await;
                    ctx.registry.release_ip(peer.ip());
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tracker.spawn(async move {
                    serve_tls(Arc::clone(&ctx), socket, peer, acceptor).await;
                    ctx.registry.release_ip(peer.ip());
                });
            }
        }
    }
}

async fn serve_tls<K: Kv>(
    ctx: Arc<ConnContext<K>>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
) {
    // The handshake's state is boxed: it is gone once the session is up.
    let handshake = Box::pin(tokio::time::timeout(
        ctx.config.handshake_timeout,
        acceptor.accept(socket),
    ));
    match handshake.await {
        Ok(Ok(stream)) => conn::serve(ctx, stream, peer, "tls").await,
        Ok(Err(_)) => ctx.metrics.closed("tls_handshake_failed"),
        Err(_) => ctx.metrics.closed("handshake_timeout"),
    }
}
