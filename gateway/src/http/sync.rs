//! `GET /v1/sync`: the inbox after a cursor, as a long-poll for clients
//! that cannot keep a socket.
//!
//! A poll with nothing to read waits on the registry's per-user wake-up,
//! which the commit itself fires: it registers and arms the wait *before*
//! reading the inbox, so a commit landing between that read and the wait
//! still wakes it. Storage is read once per wake-up, never on a timer.

use std::pin::pin;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use bytes::Bytes;
use hanmadi_proto::pb;
use hanmadi_storage::chat::{SyncBatch, CURSOR_LEN};
use hanmadi_storage::kv::Kv;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{optional, ApiQuery};
use super::messages::decode_message;
use super::proto_schema as proto;
use super::HttpState;

/// Longest a poll may wait: under the usual 60 s idle timeouts of proxies.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(30);

/// Standard-alphabet base64 that takes padding or none.
const CURSOR_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `?after=&limit=&wait_ms=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SyncQuery {
    /// The last cursor this client has seen, base64 (standard or URL-safe,
    /// padded or not); absent: from the oldest kept entry.
    #[serde(default)]
    after: Option<String>,
    /// At most this many entries: default 200 (absent or 0), at most 500.
    #[serde(default, deserialize_with = "optional")]
    #[param(value_type = Option<u32>)]
    limit: Option<u32>,
    /// With nothing after the cursor, wait up to this many ms (at most
    /// 30,000; default 0) for the first new message.
    #[serde(default, deserialize_with = "optional")]
    #[param(value_type = Option<u64>)]
    wait_ms: Option<u64>,
}

/// A client's cursor: any base64 flavour, and a space where a `+` was
/// form-decoded from an unescaped query string.
fn parse_cursor(text: &str) -> Result<Vec<u8>, ApiError> {
    let bad = || ApiError::invalid("after must be a cursor from an earlier answer (base64)");
    // Refused before decoding: no work in proportion to a hostile length.
    if text.len() > 2 * CURSOR_LEN {
        return Err(bad());
    }
    let standard: String = text
        .chars()
        .map(|c| match c {
            ' ' | '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    CURSOR_BASE64.decode(standard).map_err(|_| bad())
}

fn sync_batch(batch: SyncBatch) -> Result<pb::SyncBatch, ApiError> {
    let messages = batch
        .entries
        .iter()
        .map(|e| {
            Ok(pb::Deliver {
                message: Some(decode_message(&e.message)?),
                cursor: Bytes::copy_from_slice(e.cursor.as_bytes()),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(pb::SyncBatch {
        messages,
        next: batch
            .next
            .map(|c| Bytes::copy_from_slice(c.as_bytes()))
            .unwrap_or_default(),
        has_more: batch.has_more,
    })
}

/// The caller's inbox after a cursor, oldest first; with `wait_ms`, a
/// long-poll that answers at the first commit for the caller.
#[utoipa::path(get, path = "/v1/sync", tag = "messages", security(("bearer" = [])),
    params(SyncQuery),
    responses(
        (status = 200, description = "Entries after the cursor (maybe none); `next` is the cursor to send next", body = proto::SyncBatch),
        (status = 400, description = "Malformed cursor", body = ErrorBody),
        (status = 410, description = "The cursor is past the retention window (`CURSOR_EXPIRED`): page history, then sync from empty", body = ErrorBody),
    ))]
pub(super) async fn sync<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiQuery(query): ApiQuery<SyncQuery>,
) -> Result<Json<pb::SyncBatch>, ApiError> {
    let after = match query.after.as_deref() {
        Some(text) => parse_cursor(text)?,
        None => Vec::new(),
    };
    // The router applies the page-size policy (0: its default).
    let limit = query.limit.unwrap_or(0);
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    if wait.is_zero() || state.ctx.shutdown.is_cancelled() {
        let batch = state.ctx.router.sync(me, &after, limit).await?;
        return Ok(Json(sync_batch(batch)?));
    }
    let deadline = tokio::time::Instant::now() + wait;
    // In a cluster, a commit through another node wakes this poll once
    // the presence index names this node for the user.
    let announced = match &state.ctx.presence {
        Some(index) => Some(index.announce(me).await),
        None => None,
    };
    let waiter = state.ctx.registry.wait_for_commit(me);
    drop(announced);
    // The change feed wakes this poll for a commit whose notification was
    // lost only if it committed after where the feed's reader started:
    // read the inbox once that start is known. Should the wait end first,
    // the read below still answers with what is stored.
    state.ctx.feed_started(deadline).await;
    loop {
        let mut commit = pin!(waiter.notified());
        commit.as_mut().enable();
        let batch = state.ctx.router.sync(me, &after, limit).await?;
        if !batch.entries.is_empty() {
            return Ok(Json(sync_batch(batch)?));
        }
        tokio::select! {
            () = commit => {}
            () = tokio::time::sleep_until(deadline) => return Ok(Json(sync_batch(batch)?)),
            () = state.ctx.shutdown.cancelled() => return Ok(Json(sync_batch(batch)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    #[test]
    fn cursors_parse_in_every_base64_flavour() {
        // Encodes as `++++////AQ==`: both alphabets' special characters
        // and padding.
        let raw = vec![0xfb, 0xef, 0xbe, 0xff, 0xff, 0xff, 0x01];
        let standard = STANDARD.encode(&raw);
        assert_eq!(standard, "++++////AQ==");
        for text in [
            standard.clone(),
            standard.trim_end_matches('=').to_owned(),
            URL_SAFE_NO_PAD.encode(&raw),
            standard.replace('+', " "),
        ] {
            assert_eq!(parse_cursor(&text).expect(&text), raw, "{text}");
        }
        assert!(parse_cursor("not base64!").is_err());
        assert!(parse_cursor(&"A".repeat(200)).is_err());
    }
}
