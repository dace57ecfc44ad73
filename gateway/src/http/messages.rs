//! Messages without a socket: send (same path, ack and exactly-once rule
//! as a socket's `Send`), history pages, and the conversation list.
//! Protocol objects (`SendAck`, `HistoryPage`, `Message`, `Conversation`)
//! are written in protobuf's JSON mapping, the same shapes as the
//! WebSocket JSON subprotocol.

use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use hanmadi_proto::prost::Message as _;
use hanmadi_proto::{pb, ConversationId, ErrorCode};
use hanmadi_router::{ConversationSummary, SendRequest, Target};
use hanmadi_storage::kv::Kv;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{optional, ApiJson, ApiPath, ApiQuery, Id};
use super::proto_schema as proto;
use super::HttpState;

/// A message to send.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewMessage {
    /// The sender's idempotency key: any string of 1 to 64 bytes (a UUID
    /// is the norm). Its UTF-8 bytes are the protocol's `client_msg_id`;
    /// sending it again returns the first ack and stores nothing new.
    client_msg_id: String,
    /// The text, within the server's body limit.
    body: String,
}

/// `?before=&limit=` of a history page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only messages with a smaller id (a message id string); absent: from
    /// the newest.
    #[serde(default, deserialize_with = "optional")]
    #[param(value_type = Option<String>)]
    before: Option<Id>,
    /// At most this many: messages default 50, at most 500 (absent or 0:
    /// the default); conversations default 50, at most 200.
    #[serde(default, deserialize_with = "optional")]
    #[param(value_type = Option<u32>)]
    limit: Option<u32>,
}

/// Direct or group.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationType {
    /// Between two users.
    Direct,
    /// A group's.
    Group,
}

/// One of the caller's conversations.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationEntry {
    /// The conversation, as messages name it.
    #[schema(value_type = proto::Conversation)]
    conversation: pb::Conversation,
    /// Direct or group.
    #[serde(rename = "type")]
    kind: ConversationType,
    /// The other user of a direct conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_id: Option<Id>,
    /// The group of a group conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<Id>,
    /// The group's name, or the peer's display name (their username when
    /// they set none).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The newest message the caller may see, or null.
    #[schema(value_type = Option<proto::Message>)]
    last_message: Option<pb::Message>,
    /// Messages from others after the caller's read mark that the caller
    /// may see, counted up to 100.
    unread: usize,
}

/// `GET /v1/conversations`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    /// Newest activity first.
    conversations: Vec<ConversationEntry>,
    /// Whether older conversations follow.
    has_more: bool,
}

/// A stored message, decoded.
pub(super) fn decode_message(bytes: &[u8]) -> Result<pb::Message, ApiError> {
    pb::Message::decode(bytes)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "a stored message does not decode"))
}

async fn send<K: Kv>(
    state: &HttpState<K>,
    sender: u64,
    to: Target,
    req: NewMessage,
) -> Result<Json<pb::SendAck>, ApiError> {
    let request = SendRequest {
        client_msg_id: Bytes::from(req.client_msg_id.into_bytes()),
        to,
        body: req.body,
    };
    // A full append queue answers `503` with `Retry-After` at once: an HTTP
    // client is better told to come back (the retry is exactly-once) than
    // held while the node is overloaded.
    let ack = state.ctx.router.try_send(sender, request).await?;
    Ok(Json(ack.into()))
}

async fn history<K: Kv>(
    state: &HttpState<K>,
    reader: u64,
    conversation: ConversationId,
    query: HistoryQuery,
) -> Result<Json<pb::HistoryPage>, ApiError> {
    // The router applies the page-size policy (0: its default).
    let limit = query.limit.unwrap_or(0);
    let before = query.before.map_or(0, |id| id.0);
    let page = state
        .ctx
        .router
        .conversation_history(reader, conversation, before, limit)
        .await?;
    Ok(Json(pb::HistoryPage {
        messages: page
            .messages
            .iter()
            .map(|m| decode_message(m))
            .collect::<Result<_, _>>()?,
        has_more: page.has_more,
    }))
}

/// Sends a direct message.
#[utoipa::path(post, path = "/v1/direct/{user_id}/messages", tag = "messages",
    security(("bearer" = [])),
    params(("user_id" = Id, Path, description = "The recipient")),
    request_body = NewMessage,
    responses(
        (status = 200, description = "Stored (or stored before, for a repeated client_msg_id)", body = proto::SendAck),
        (status = 403, description = "One of the two blocked the other (`BLOCKED`)", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "Body over the limit (`BODY_TOO_LARGE`)", body = ErrorBody),
        (status = 503, description = "Busy: send again with the same client_msg_id", body = ErrorBody),
    ))]
pub(super) async fn send_direct<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(Id(peer)): ApiPath<Id>,
    ApiJson(req): ApiJson<NewMessage>,
) -> Result<Json<pb::SendAck>, ApiError> {
    send(&state, me, Target::User(peer), req).await
}

/// Sends a message to a group.
#[utoipa::path(post, path = "/v1/groups/{id}/messages", tag = "messages",
    security(("bearer" = [])),
    params(("id" = Id, Path, description = "The group")),
    request_body = NewMessage,
    responses(
        (status = 200, description = "Stored (or stored before, for a repeated client_msg_id)", body = proto::SendAck),
        (status = 403, description = "Not a member (`NOT_A_MEMBER`)", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 413, description = "Body over the limit (`BODY_TOO_LARGE`)", body = ErrorBody),
        (status = 503, description = "Busy: send again with the same client_msg_id", body = ErrorBody),
    ))]
pub(super) async fn send_group<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(Id(group)): ApiPath<Id>,
    ApiJson(req): ApiJson<NewMessage>,
) -> Result<Json<pb::SendAck>, ApiError> {
    send(&state, me, Target::Group(group), req).await
}

/// A page of a direct conversation's history, newest first.
#[utoipa::path(get, path = "/v1/direct/{user_id}/messages", tag = "messages",
    security(("bearer" = [])),
    params(("user_id" = Id, Path, description = "The other user"), HistoryQuery),
    responses(
        (status = 200, description = "Newest first; page on with `before` = the smallest id", body = proto::HistoryPage),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub(super) async fn direct_history<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(Id(peer)): ApiPath<Id>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<pb::HistoryPage>, ApiError> {
    history(&state, me, ConversationId::direct(me, peer), query).await
}

/// A page of a group's history as the caller may see it (from their join
/// on), newest first.
#[utoipa::path(get, path = "/v1/groups/{id}/messages", tag = "messages",
    security(("bearer" = [])),
    params(("id" = Id, Path, description = "The group"), HistoryQuery),
    responses(
        (status = 200, description = "Newest first; page on with `before` = the smallest id", body = proto::HistoryPage),
        (status = 403, description = "Not a member (`NOT_A_MEMBER`)", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ))]
pub(super) async fn group_history<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(Id(group)): ApiPath<Id>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<pb::HistoryPage>, ApiError> {
    history(&state, me, ConversationId::Group(group), query).await
}

/// The caller's conversations, newest activity first, each with its last
/// message and unread count, a page at a time.
#[utoipa::path(get, path = "/v1/conversations", tag = "messages", security(("bearer" = [])),
    params(HistoryQuery),
    responses((status = 200, description = "Newest activity first; page on with `before` = the last entry's `last_message.message_id`", body = ConversationList)))]
pub(super) async fn list_conversations<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<ConversationList>, ApiError> {
    // `?limit=0` has always meant one entry here, where the router reads
    // 0 as its default.
    let limit = query.limit.map_or(0, |l| l.max(1));
    let before = query.before.map(|id| id.0);
    let page = state.ctx.router.conversations(me, before, limit).await?;
    Ok(Json(ConversationList {
        conversations: page
            .conversations
            .into_iter()
            .map(|c| conversation_entry(me, c))
            .collect::<Result<_, _>>()?,
        has_more: page.has_more,
    }))
}

fn conversation_entry(me: u64, c: ConversationSummary) -> Result<ConversationEntry, ApiError> {
    let (kind, peer_id, group_id) = match c.conversation {
        ConversationId::Direct { .. } => {
            let peer = c.conversation.peer_of(me).unwrap_or(me);
            (ConversationType::Direct, Some(Id(peer)), None)
        }
        ConversationId::Group(group) => (ConversationType::Group, None, Some(Id(group))),
    };
    Ok(ConversationEntry {
        conversation: c.conversation.into(),
        kind,
        peer_id,
        group_id,
        name: c.name,
        last_message: c.last_message.map(|m| decode_message(&m)).transpose()?,
        unread: c.unread,
    })
}
