//! Where push notifications go: device push registrations
//! (`/v1/devices`) and muted conversations (`/v1/conversations/{id}/mute`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use hanmadi_proto::ConversationId;
use hanmadi_storage::chat::PushPlatform;
use hanmadi_storage::kv::Kv;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, Id};
use super::HttpState;

/// A push service, as devices name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
    /// A Web Push subscription.
    Webpush,
    /// Anything else the push gateway understands.
    Other,
}

impl From<Platform> for PushPlatform {
    fn from(p: Platform) -> Self {
        match p {
            Platform::Apns => Self::Apns,
            Platform::Fcm => Self::Fcm,
            Platform::Webpush => Self::Webpush,
            Platform::Other => Self::Other,
        }
    }
}

impl From<PushPlatform> for Platform {
    fn from(p: PushPlatform) -> Self {
        match p {
            PushPlatform::Apns => Self::Apns,
            PushPlatform::Fcm => Self::Fcm,
            PushPlatform::Webpush => Self::Webpush,
            PushPlatform::Other => Self::Other,
        }
    }
}

/// `PUT /v1/devices/{device_id}/push`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PushRegistration {
    /// Which service the token belongs to.
    platform: Platform,
    /// The service's device token (a Web Push subscription as its JSON
    /// text), 1 to 4096 bytes.
    token: String,
}

/// A device's push registration.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevicePush {
    /// Which service the token belongs to.
    platform: Platform,
    /// The token.
    token: String,
    /// When it was registered or last changed, in ms since the Unix epoch.
    updated_at: u64,
}

/// One of the caller's devices: one that acknowledged deliveries, or
/// registered for push, or both.
#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    /// The id the device gives in `Hello`.
    device_id: String,
    /// Its push registration, or null.
    push: Option<DevicePush>,
    /// The last inbox cursor it acknowledged (base64), or null.
    delivered: Option<String>,
}

/// `GET /v1/devices`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    /// By device id.
    devices: Vec<Device>,
}

/// The caller's devices: those that acknowledged deliveries and those
/// registered for push.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", security(("bearer" = [])),
    responses((status = 200, description = "The caller's devices", body = DeviceList)))]
pub(super) async fn list_devices<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
) -> Result<Json<DeviceList>, ApiError> {
    let devices = state
        .ctx
        .router
        .devices(me)
        .await?
        .into_iter()
        .map(|d| Device {
            device_id: d.device_id,
            push: d.push.map(|p| DevicePush {
                platform: p.platform.into(),
                token: p.token,
                updated_at: p.updated_at,
            }),
            delivered: d
                .delivered
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_bytes())),
        })
        .collect();
    Ok(Json(DeviceList { devices }))
}

/// Registers (or replaces) a device's push token: pushes for the caller
/// name it from now on.
#[utoipa::path(put, path = "/v1/devices/{device_id}/push", tag = "devices",
    security(("bearer" = [])),
    params(("device_id" = String, Path, description = "The device, as it names itself in `Hello` (1 to 64 bytes)")),
    request_body = PushRegistration,
    responses(
        (status = 204, description = "Registered"),
        (status = 400, description = "Bad device id, platform or token, or more than 10 devices", body = ErrorBody),
    ))]
pub(super) async fn put_push<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(device_id): ApiPath<String>,
    ApiJson(req): ApiJson<PushRegistration>,
) -> Result<StatusCode, ApiError> {
    state
        .ctx
        .router
        .register_push(me, &device_id, req.platform.into(), &req.token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a device's push registration.
#[utoipa::path(delete, path = "/v1/devices/{device_id}/push", tag = "devices",
    security(("bearer" = [])),
    params(("device_id" = String, Path, description = "The device")),
    responses(
        (status = 204, description = "Not registered (any more)"),
        (status = 400, description = "Bad device id", body = ErrorBody),
    ))]
pub(super) async fn delete_push<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(device_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.ctx.router.unregister_push(me, &device_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A conversation as the caller names it in a path: `direct:<user id>`
/// (the other user) or `group:<group id>`.
fn parse_conversation(me: u64, text: &str) -> Result<ConversationId, ApiError> {
    let bad = || ApiError::invalid("a conversation is direct:<user id> or group:<group id>");
    let (kind, id) = text.split_once(':').ok_or_else(bad)?;
    let Id(id) = id.parse::<Id>().map_err(|_| bad())?;
    match kind {
        "direct" => Ok(ConversationId::direct(me, id)),
        "group" => Ok(ConversationId::Group(id)),
        _ => Err(bad()),
    }
}

async fn set_muted<K: Kv>(
    state: &HttpState<K>,
    me: u64,
    id: &str,
    muted: bool,
) -> Result<StatusCode, ApiError> {
    let conversation = parse_conversation(me, id)?;
    state.ctx.router.set_muted(me, conversation, muted).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mutes a conversation: its messages are never pushed to the caller
/// (they still arrive on sockets and in sync).
#[utoipa::path(put, path = "/v1/conversations/{id}/mute", tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "`direct:<user id>` or `group:<group id>`")),
    responses(
        (status = 204, description = "Muted"),
        (status = 400, description = "Malformed conversation", body = ErrorBody),
        (status = 403, description = "Not a member of the group", body = ErrorBody),
        (status = 404, description = "No such user or group", body = ErrorBody),
    ))]
pub(super) async fn mute<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    set_muted(&state, me, &id, true).await
}

/// Unmutes a conversation.
#[utoipa::path(delete, path = "/v1/conversations/{id}/mute", tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "`direct:<user id>` or `group:<group id>`")),
    responses(
        (status = 204, description = "Not muted (any more)"),
        (status = 400, description = "Malformed conversation", body = ErrorBody),
        (status = 403, description = "Not a member of the group", body = ErrorBody),
        (status = 404, description = "No such user or group", body = ErrorBody),
    ))]
pub(super) async fn unmute<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    set_muted(&state, me, &id, false).await
}
