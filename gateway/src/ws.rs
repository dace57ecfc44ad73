//! `GET /ws`: WebSocket and WSS connections on the HTTP and HTTPS ports.
//!
//! The upgrade is answered here (hyper hands over the socket, tungstenite
//! speaks the WebSocket protocol); the connection then runs the same task
//! as a TCP one, over [`WsFrames`], so every limit, the back-pressure and
//! the error frames are those of TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hanmadi_proto::pb;
use hanmadi_proto::websocket::{max_message_len, Encoding, WsFrames};
use hanmadi_proto::ErrorCode;
use hanmadi_storage::kv::Kv;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::conn;
use crate::http::error::ApiError;
use crate::http::HttpState;

/// Bytes the WebSocket layer reads from the socket at a time. This buffer
/// stays allocated (and touched) for the life of a connection, idle or
/// not; chat frames are small, and 1 KiB keeps an idle WebSocket within
/// 8 KiB of server memory (docs/ARCHITECTURE.md has the measurements).
pub const WS_READ_BUFFER: usize = 1024;

/// Marks requests that came in over TLS (set by the HTTPS listener), so
/// `/ws` there counts as `wss`.
#[derive(Debug, Clone, Copy)]
pub struct Secure;

/// The WebSocket settings of a connection.
pub fn ws_config(max_frame: usize) -> WebSocketConfig {
    let max_message = max_message_len(max_frame);
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// The API's error shape, with a status of the WebSocket handshake's own.
fn refuse(status: StatusCode, code: ErrorCode, message: &'static str) -> Response {
    let mut response = (status, ApiError::new(code, message)).into_response();
    if status == StatusCode::UPGRADE_REQUIRED {
        // What to upgrade to (RFC 9110 §15.5.22, RFC 6455 §4.4).
        let h = response.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    response
}

/// The comma-separated tokens of every `name` header, trimmed.
fn header_tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The first subprotocol the client offers that Hanmadi speaks.
fn choose_subprotocol(headers: &HeaderMap) -> Option<Encoding> {
    header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL).find_map(Encoding::from_subprotocol)
}

/// Upgrades to a WebSocket speaking Hanmadi's protocol (docs/PROTOCOL.md
/// §2.2); a plain request gets `426`.
#[utoipa::path(get, path = "/ws", tag = "operations",
    params(("Sec-WebSocket-Protocol" = Option<String>, Header,
        description = "`hanmadi.v1.proto` (binary replies, the default) or `hanmadi.v1.json` (JSON text replies)")),
    responses(
        (status = 101, description = "Switched to WebSocket: one frame per message"),
        (status = 426, description = "Not a WebSocket upgrade", body = crate::http::error::ErrorBody),
        (status = 429, description = "Too many connections from this address", body = crate::http::error::ErrorBody),
        (status = 503, description = "Draining: reconnect elsewhere", body = crate::http::error::ErrorBody),
    ))]
pub(crate) async fn upgrade<K: Kv>(
    State(state): State<HttpState<K>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    secure: Option<Extension<Secure>>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if !header_has(headers, header::UPGRADE, "websocket")
        || !header_has(headers, header::CONNECTION, "upgrade")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::Unsupported,
            "this endpoint speaks WebSocket only",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::Unsupported,
            "WebSocket version 13 is required",
        );
    }
    // The key is 16 random bytes in base64 (RFC 6455 §4.1).
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| BASE64.decode(k.as_bytes()).is_ok_and(|raw| raw.len() == 16));
    let Some(key) = key else {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            "Sec-WebSocket-Key is missing or not 16 bytes of base64",
        );
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            "Sec-WebSocket-Key is malformed",
        );
    };
    let chosen = choose_subprotocol(headers);
    let ctx = &state.ctx;
    if ctx.shutdown.is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServerDraining,
            "server is shutting down; reconnect elsewhere",
        );
    }
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::Unsupported,
            "this connection cannot be upgraded",
        );
    };
    let permit = match ctx.registry.admit_ip(peer.ip()) {
        Ok(permit) => permit,
        Err(refused) => {
            ctx.metrics.closed(refused.reason());
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                "too many connections from this address",
            );
        }
    };
    let ctx = Arc::clone(ctx);
    let transport = if secure.is_some() { "wss" } else { "ws" };
    let encoding = chosen.unwrap_or_default();
    state.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = ws_config(ctx.config.max_frame);
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let frames = WsFrames::<_, pb::ClientFrame, pb::ServerFrame>::new(ws, encoding);
                conn::serve(Arc::clone(&ctx), frames, peer, transport).await;
            }
            Err(_) => ctx.metrics.closed("upgrade_failed"),
        }
        drop(permit);
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(encoding) = chosen {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.subprotocol()),
        );
    }
    response
}
