//! Messages without a socket: send (same path, ack and exactly-once rule
//! as a socket's `Send`), history pages, and the conversation list.
//! Protocol objects (`SendAck`, `HistoryPage`, `Message`, `Conversation`)
//! are written in protobuf's JSON mapping, the same shapes as the
//! WebSocket JSON subprotocol.

use std::cmp::Reverse;

use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use hanmadi_proto::prost::Message as _;
use hanmadi_proto::{pb, ConversationId, ErrorCode};
use hanmadi_router::{SendRequest, Target};
use hanmadi_storage::kv::Kv;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{optional, ApiJson, ApiPath, ApiQuery, Id};
use super::groups::group_record;
use super::proto_schema as proto;
use super::HttpState;

/// Conversations a list page holds when none is asked for.
const DEFAULT_CONVERSATIONS: u32 = 50;
/// Largest conversation list page: each entry costs several reads.
const MAX_CONVERSATIONS: u32 = 200;

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

/// Unread counts in the conversation list stop here (a client shows
/// "99+"): counting reads every unread message.
const MAX_UNREAD: usize = 100;

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
        .history(reader, conversation, before, limit)
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
    // A deleted peer's past messages stay readable; one who never existed
    // is not a conversation.
    if state.ctx.router.store().user(peer).await?.is_none() {
        return Err(ApiError::not_found("user"));
    }
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
    group_record(&state, group).await?;
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
    let limit = query
        .limit
        .unwrap_or(DEFAULT_CONVERSATIONS)
        .clamp(1, MAX_CONVERSATIONS) as usize;
    let before = query.before.map_or(u64::MAX, |id| id.0);
    let store = state.ctx.router.store();
    // Each conversation's head (its newest message id, time-sortable across
    // conversations) is one read; only the page's entries are filled in.
    // All of them are read in one transaction.
    let mut heads: Vec<(u64, ConversationId)> = store
        .conversation_heads(me)
        .await?
        .into_iter()
        .map(|(conversation, head)| (head, conversation))
        .collect();
    heads.retain(|(head, _)| *head < before);
    heads.sort_unstable_by_key(|(head, _)| Reverse(*head));
    let has_more = heads.len() > limit;
    heads.truncate(limit);
    let mut conversations = Vec::with_capacity(heads.len());
    for (_, conversation) in heads {
        conversations.push(conversation_entry(&state, me, conversation).await?);
    }
    Ok(Json(ConversationList {
        conversations,
        has_more,
    }))
}

async fn conversation_entry<K: Kv>(
    state: &HttpState<K>,
    me: u64,
    conversation: ConversationId,
) -> Result<ConversationEntry, ApiError> {
    let store = state.ctx.router.store();
    let (kind, peer_id, group_id, name) = match conversation {
        ConversationId::Direct { .. } => {
            let peer = conversation.peer_of(me).unwrap_or(me);
            let name = store.user(peer).await?.map(|u| {
                if u.display_name.is_empty() {
                    u.username
                } else {
                    u.display_name
                }
            });
            (ConversationType::Direct, Some(Id(peer)), None, name)
        }
        ConversationId::Group(group) => {
            let name = store.group(group).await?.map(|g| g.name);
            (ConversationType::Group, None, Some(Id(group)), name)
        }
    };
    let newest = state.ctx.router.history(me, conversation, 0, 1).await?;
    let last_message = newest
        .messages
        .first()
        .map(|m| decode_message(m))
        .transpose()?;
    Ok(ConversationEntry {
        conversation: conversation.into(),
        kind,
        peer_id,
        group_id,
        name,
        last_message,
        unread: state
            .ctx
            .router
            .unread(me, conversation, MAX_UNREAD)
            .await?,
    })
}
