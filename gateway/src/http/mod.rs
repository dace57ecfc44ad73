//! The HTTP listener: the JSON API of DESIGN §4, `/ws` (in [`crate::ws`]),
//! `/healthz` and Prometheus `/metrics`; the pages of [`crate::web`].
//!
//! - [`error`]: the one error shape and the status of each protocol code.
//! - [`extract`]: JSON, path and query extractors that refuse in that shape;
//!   [`extract::Id`], ids as decimal strings.
//! - [`auth`]: the bearer-token extractor.
//! - [`limits`]: the per-address request rate and the per-request deadline.
//! - [`admin`]: operator routes that take the admin token (provisioning).
//! - `users`, `groups`, `messages`, `sync`, `push`: the routes, one file
//!   per area (`push`: device push registrations and muted conversations).
//! - [`discovery`]: `GET /v1/discovery` and what this node advertises.
//! - [`openapi`], `proto_schema`: the OpenAPI document, built from the
//!   handlers' annotations and the protocol's descriptor set.

pub mod admin;
pub mod auth;
pub mod discovery;
pub mod error;
pub mod extract;
mod groups;
pub mod limits;
mod messages;
pub mod openapi;
mod proto_schema;
mod push;
mod sync;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{middleware, Extension, Router};
use hanmadi_proto::ErrorCode;
use hanmadi_storage::kv::Kv;
use tokio_util::task::TaskTracker;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::conn::ConnContext;
pub(crate) use crate::now_ms;
use crate::password::Passwords;

pub use discovery::{Endpoints, NodeInfo};

/// Largest request body: far above any valid request (a message body is
/// at most tens of KiB), low enough that nobody makes the node buffer much.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// What the HTTP handlers share.
pub struct HttpState<K: Kv> {
    /// What socket connections share: the router (and through it the
    /// store), token checking, the registry (live connections and long-poll
    /// wake-ups), the counters and the drain signal. `/ws` connections run
    /// with it too.
    pub ctx: Arc<ConnContext<K>>,
    /// Password hashing, bounded.
    pub passwords: Arc<Passwords>,
    /// How long a token from `POST /v1/sessions` lasts.
    pub token_ttl: Duration,
    /// What discovery says about this node.
    pub node: Arc<NodeInfo>,
    /// Where `/ws` connection tasks are spawned, so the drain waits for them.
    pub tracker: TaskTracker,
    /// Request rate per address and the deadline of each request.
    pub limiter: Arc<limits::RequestLimiter>,
}

// Derived `Clone` would ask `K: Clone`; every field is a handle.
impl<K: Kv> Clone for HttpState<K> {
    fn clone(&self) -> Self {
        Self {
            ctx: Arc::clone(&self.ctx),
            passwords: Arc::clone(&self.passwords),
            token_ttl: self.token_ttl,
            node: Arc::clone(&self.node),
            tracker: self.tracker.clone(),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<K: Kv> std::fmt::Debug for HttpState<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("token_ttl", &self.token_ttl)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Every route with its OpenAPI entry. Handlers sharing a path are
/// registered together.
fn api<K: Kv>() -> OpenApiRouter<HttpState<K>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(users::sign_up))
        .routes(routes!(admin::provision_users))
        .routes(routes!(admin::check_token))
        .routes(routes!(users::log_in, users::log_out_everywhere))
        .routes(routes!(users::get_me, users::patch_me, users::delete_me))
        .routes(routes!(users::get_user))
        .routes(routes!(users::find_user))
        .routes(routes!(users::block, users::unblock))
        .routes(routes!(groups::create_group, groups::list_groups))
        .routes(routes!(groups::get_group))
        .routes(routes!(groups::add_members))
        .routes(routes!(groups::remove_member))
        .routes(routes!(messages::list_conversations))
        .routes(routes!(messages::send_direct, messages::direct_history))
        .routes(routes!(messages::send_group, messages::group_history))
        .routes(routes!(sync::sync))
        .routes(routes!(push::list_devices))
        .routes(routes!(push::put_push, push::delete_push))
        .routes(routes!(push::mute, push::unmute))
        .routes(routes!(discovery::discovery))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(crate::ws::upgrade))
}

/// The HTTP routes, built apart from any socket so tests can call them.
pub fn routes<K: Kv>(state: HttpState<K>) -> Router {
    let (router, document) = api::<K>().split_for_parts();
    let limiter = Arc::clone(&state.limiter);
    router
        .merge(crate::web::routes())
        .fallback(no_route)
        .layer(Extension(openapi::ApiDocument::render(&document)))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        // The rate limit is outermost: a refused request costs no deadline
        // timer and no handler work.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&limiter),
            limits::deadline,
        ))
        .layer(middleware::from_fn_with_state(limiter, limits::rate_limit))
        .with_state(state)
}

/// Unknown paths answer in the API's error shape too.
async fn no_route() -> error::ApiError {
    error::ApiError::new(ErrorCode::NotFound, "no such route")
}

/// `200 ok` while serving, `503 draining` once shutdown began, so load
/// balancers stop sending clients here first.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "Serving", body = String, content_type = "text/plain"),
        (status = 503, description = "Draining", body = String, content_type = "text/plain"),
    ))]
async fn healthz<K: Kv>(State(state): State<HttpState<K>>) -> impl IntoResponse {
    if state.ctx.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// The node's counters in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text")))]
async fn metrics<K: Kv>(State(state): State<HttpState<K>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.ctx.metrics.render(),
    )
}
