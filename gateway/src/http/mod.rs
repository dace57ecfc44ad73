//! The HTTP listener. For now it serves the operational routes: `/healthz`
//! and Prometheus `/metrics`; the chat API and WebSocket join it here.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Counters to expose.
    pub metrics: Arc<Metrics>,
    /// Fired when the node drains.
    pub draining: CancellationToken,
}

/// The HTTP routes, built apart from any socket so tests can call them.
pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `200 ok` while serving, `503 draining` once shutdown began, so load
/// balancers stop sending clients here first.
async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// The node's counters in Prometheus' text format.
async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
