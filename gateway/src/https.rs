//! The HTTPS listener: the HTTP routes (API and `/ws`, which becomes WSS)
//! behind TLS, served by hyper with upgrades enabled.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Extension;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepts on `listener` until `shutdown`, serving `app` on each TLS
/// connection in its own task. On shutdown, connections finish the request
/// they are serving and close.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: axum::Router,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (socket, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "https accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = socket.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(handshake_timeout, acceptor.accept(socket)).await
            else {
                return;
            };
            serve_connection(tls, peer, app, shutdown).await;
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: axum::Router,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // Handlers see the peer address as they do behind `axum::serve`, and
    // that the request came in over TLS.
    let app = app
        .layer(Extension(ConnectInfo(peer)))
        .layer(Extension(crate::ws::Secure));
    let service = TowerToHyperService::new(app);
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}
