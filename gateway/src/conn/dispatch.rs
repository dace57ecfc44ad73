//! What each client frame does: answered at once, or a request that runs
//! in the background and answers when its work is done.

use std::sync::Arc;

use hanmadi_proto::pb::{self, client_frame, send, server_frame};
use hanmadi_proto::{ConversationId, ErrorCode};
use hanmadi_router::{SendRequest, Target};
use hanmadi_storage::kv::Kv;
use tokio::io::{AsyncRead, AsyncWrite};

use super::pages::{history_page, sync_batch};
use super::reply::{error_frame, router_error, Close, Pending};
use super::Connection;

impl<S, K> Connection<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Kv,
{
    /// Validates a conversation from the wire, answering `INVALID_ARGUMENT`
    /// (and returning `None`) when it is malformed.
    fn conversation(
        &mut self,
        req_id: u64,
        conversation: Option<&pb::Conversation>,
    ) -> Result<Option<ConversationId>, Close> {
        match ConversationId::try_from(conversation) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                self.reply(&error_frame(
                    req_id,
                    ErrorCode::InvalidArgument,
                    e.to_string(),
                ))?;
                Ok(None)
            }
        }
    }

    /// Dispatches one frame: answers at once, or returns a future that
    /// answers when its work is done.
    pub(super) fn handle(&mut self, frame: pb::ClientFrame) -> Result<Option<Pending>, Close> {
        let req_id = frame.req_id;
        let Some(kind) = frame.kind else {
            self.reply(&error_frame(
                req_id,
                ErrorCode::Unsupported,
                "frame has no kind",
            ))?;
            return Ok(None);
        };
        let router = Arc::clone(&self.ctx.router);
        let user = self.user;
        let max_frame = self.ctx.config.max_frame;
        let fut: Pending = match kind {
            client_frame::Kind::Ping(_) => {
                self.reply(&pb::ServerFrame {
                    req_id,
                    kind: Some(server_frame::Kind::Pong(pb::Pong {})),
                })?;
                return Ok(None);
            }
            client_frame::Kind::Hello(_) => {
                self.reply(&error_frame(
                    req_id,
                    ErrorCode::Unsupported,
                    "already authenticated",
                ))?;
                return Ok(None);
            }
            client_frame::Kind::Send(s) => {
                let to = match s.to {
                    Some(send::To::UserId(u)) => Target::User(u),
                    Some(send::To::GroupId(g)) => Target::Group(g),
                    None => {
                        self.reply(&error_frame(
                            req_id,
                            ErrorCode::InvalidArgument,
                            "Send without a recipient",
                        ))?;
                        return Ok(None);
                    }
                };
                let req = SendRequest {
                    client_msg_id: s.client_msg_id,
                    to,
                    body: s.body,
                };
                Box::pin(async move {
                    let frame = match router.send(user, req).await {
                        Ok(ack) => pb::ServerFrame {
                            req_id,
                            kind: Some(server_frame::Kind::SendAck(ack.into())),
                        },
                        Err(e) => router_error(req_id, &e),
                    };
                    Some(frame.into())
                })
            }
            client_frame::Kind::Sync(s) => Box::pin(async move {
                Some(match router.sync(user, &s.after, s.limit).await {
                    Ok(batch) => sync_batch(req_id, &batch, max_frame),
                    Err(e) => router_error(req_id, &e).into(),
                })
            }),
            client_frame::Kind::History(h) => {
                let Some(conversation) = self.conversation(req_id, h.conversation.as_ref())? else {
                    return Ok(None);
                };
                Box::pin(async move {
                    Some(
                        match router.history(user, conversation, h.before, h.limit).await {
                            Ok(page) => history_page(req_id, &page, max_frame),
                            Err(e) => router_error(req_id, &e).into(),
                        },
                    )
                })
            }
            client_frame::Kind::Ack(a) => {
                let device = self.device.clone();
                // Acks and reads are answered only when they fail.
                Box::pin(async move {
                    let done = router.ack(user, &device, &a.cursor).await;
                    done.err().map(|e| router_error(req_id, &e).into())
                })
            }
            client_frame::Kind::Read(r) => {
                let Some(conversation) = self.conversation(req_id, r.conversation.as_ref())? else {
                    return Ok(None);
                };
                Box::pin(async move {
                    let done = router.read(user, conversation, r.message_id).await;
                    done.err().map(|e| router_error(req_id, &e).into())
                })
            }
        };
        Ok(Some(fut))
    }
}
