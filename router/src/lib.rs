//! Hanmadi's router: every send becomes a durable, ordered, deduplicated
//! message with an inbox entry per recipient and a delivery to every live
//! device, in commit order (DESIGN §3). The router never touches a socket.
//!
//! - [`ids`]: time-sortable message ids.
//! - [`authz`]: early authorization with membership, account and block
//!   caches.
//! - [`accounts`]: sign-up, log-in, profiles and provisioning.
//! - [`groups`]: seeing a group, creating one, adding and removing
//!   members.
//! - [`conversations`]: a user's conversation list, history by name, mutes.
//! - [`devices`]: a user's devices and push registrations.
//! - [`appender`]: the bounded queue and group commit.
//! - [`presence`]: who is online.
//! - [`receipts`]: delivery acks and read marks, coalesced and written in
//!   background batches.
//! - [`fanout`]: the delivery sink the gateway implements.
//! - [`Router`]: the operations the gateway and the HTTP API call; the
//!   rules of each (who may see, change or send what) live here, so a
//!   socket and an HTTP request are answered alike.

pub mod accounts;
mod admission;
pub mod appender;
pub mod authz;
pub mod conversations;
pub mod devices;
mod error;
pub mod fanout;
mod fatal;
pub mod groups;
pub mod ids;
pub mod page_budget;
pub mod presence;
pub mod receipts;

use std::sync::Arc;

use bytes::Bytes;
use hanmadi_proto::pb::MessageKind;
use hanmadi_proto::ConversationId;
use hanmadi_storage::chat::{
    Cursor, FeedEvent, HistoryPage, IdSource, MembershipChange, NewMessage, SyncBatch,
};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;
use tokio::task::JoinHandle;

pub use accounts::{NewAccount, ProfileChange, MAX_PROVISION_BATCH};
pub use appender::{Appender, AppenderConfig};
pub use conversations::{
    ConversationPage, ConversationSummary, DEFAULT_CONVERSATION_LIMIT, MAX_CONVERSATION_LIMIT,
    MAX_LISTED_UNREAD,
};
pub use devices::DeviceState;
pub use error::RouterError;
pub use fanout::{Delivery, DeliverySink, NoDelivery};
pub use groups::GroupDetails;
pub use ids::{Clock, IdGenerator, SystemClock};
pub use presence::{LocalPresence, Presence};
pub use receipts::{Receipts, ReceiptsConfig};

pub use hanmadi_proto::MAX_CLIENT_MSG_ID_LEN;

/// Limits and sizes of a router.
#[derive(Clone, Copy, Debug)]
pub struct RouterConfig {
    /// This node's number (the id generator's node bits).
    pub node: u16,
    /// Longest message body, in bytes.
    pub max_body: usize,
    /// Size cap of new groups.
    pub max_group_members: u32,
    /// The appender's sizes.
    pub appender: AppenderConfig,
    /// The receipt writer's sizes.
    pub receipts: ReceiptsConfig,
    /// Message bytes a `Sync` or `History` page reads at most (past the
    /// first message), sockets and HTTP alike: a page costs what one answer
    /// carries. A node sets it to what fits one frame.
    pub page_bytes: usize,
    /// Page bytes per second the whole node reads for `Sync` and
    /// `History` ([`page_budget`]).
    pub page_bytes_per_sec: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            node: 0,
            max_body: 16 * 1024,
            max_group_members: 1000,
            appender: AppenderConfig::default(),
            receipts: ReceiptsConfig::default(),
            page_bytes: page_bytes_for_frame(hanmadi_proto::DEFAULT_MAX_FRAME),
            page_bytes_per_sec: page_budget::DEFAULT_PAGE_BYTES_PER_SEC,
        }
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The direct conversation with this user.
    User(u64),
    /// This group.
    Group(u64),
}

/// A message to send.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// The sender's idempotency key (1–64 bytes).
    pub client_msg_id: Bytes,
    /// The conversation.
    pub to: Target,
    /// The text.
    pub body: String,
}

/// The acknowledgement of a stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendAck {
    /// The sender's idempotency key.
    pub client_msg_id: Bytes,
    /// The conversation it went to.
    pub conversation: ConversationId,
    /// Its id.
    pub message_id: u64,
    /// When it was first sent (ms since the Unix epoch).
    pub sent_at: u64,
}

impl From<SendAck> for hanmadi_proto::SendAck {
    fn from(ack: SendAck) -> Self {
        Self {
            client_msg_id: ack.client_msg_id,
            conversation: Some(ack.conversation.into()),
            message_id: ack.message_id,
            sent_at: ack.sent_at,
        }
    }
}

/// Inbox entries a `Sync` page holds when the client names no limit
/// (`0`), and the most it may ask for; sockets and HTTP alike.
pub const DEFAULT_SYNC_LIMIT: u32 = 200;
/// See [`DEFAULT_SYNC_LIMIT`].
pub const MAX_SYNC_LIMIT: u32 = 500;
/// Messages a `History` page holds when the client names no limit (`0`),
/// and the most it may ask for.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// See [`DEFAULT_HISTORY_LIMIT`].
pub const MAX_HISTORY_LIMIT: u32 = 500;

/// The page budget ([`RouterConfig::page_bytes`]) for frames of at most
/// `max_frame` bytes: room for each entry's own fields and the page's.
pub fn page_bytes_for_frame(max_frame: usize) -> usize {
    max_frame.saturating_sub(max_frame / 8).max(1)
}

/// A page size as asked for: `0` takes the default, more than `max` is cut
/// to it.
fn page_limit(asked: u32, default: u32, max: u32) -> usize {
    (if asked == 0 { default } else { asked.min(max) }) as usize
}

/// The router of one node.
pub struct Router<K: Kv> {
    store: ChatStore<K>,
    ids: Arc<IdGenerator>,
    clock: Arc<dyn Clock>,
    authz: authz::Authz<K>,
    appender: Appender,
    receipts: Receipts,
    sink: Arc<dyn DeliverySink>,
    pages: page_budget::PageBudget,
    config: RouterConfig,
}

impl<K: Kv> std::fmt::Debug for Router<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("ids", &self.ids)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K: Kv> Router<K> {
    /// A router over `store` on the current tokio runtime, with the system
    /// clock. Returns its background task too, which ends after the router
    /// is dropped, the queued sends are committed and the pending receipts
    /// written.
    pub fn start(
        store: ChatStore<K>,
        presence: Arc<dyn Presence>,
        sink: Arc<dyn DeliverySink>,
        config: RouterConfig,
    ) -> (Self, JoinHandle<()>) {
        Self::start_with_clock(store, presence, sink, config, Arc::new(SystemClock))
    }

    /// As [`Router::start`], with a given clock.
    pub fn start_with_clock(
        store: ChatStore<K>,
        presence: Arc<dyn Presence>,
        sink: Arc<dyn DeliverySink>,
        config: RouterConfig,
        clock: Arc<dyn Clock>,
    ) -> (Self, JoinHandle<()>) {
        let ids = Arc::new(IdGenerator::new(
            config.node.min(ids::MAX_NODE),
            Arc::clone(&clock),
        ));
        let (appender, appending) = Appender::start(
            store.clone(),
            Arc::clone(&ids) as Arc<dyn IdSource>,
            presence,
            Arc::clone(&sink),
            config.appender,
        );
        let (receipts, recording) = Receipts::start(store.clone(), config.receipts);
        let task = tokio::spawn(async move {
            // Neither task panics; a join error would be a cancelled runtime.
            let _ = appending.await;
            let _ = recording.await;
        });
        let router = Self {
            receipts,
            sink,
            pages: page_budget::PageBudget::new(config.page_bytes_per_sec),
            authz: authz::Authz::new(store.clone()),
            store,
            ids,
            clock,
            appender,
            config,
        };
        (router, task)
    }

    /// The store under the router.
    pub fn store(&self) -> &ChatStore<K> {
        &self.store
    }

    /// The id generator (also for group ids).
    pub fn ids(&self) -> &IdGenerator {
        &self.ids
    }

    /// The configuration it runs with (limits such as the group size cap).
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn check_request(&self, req: &SendRequest) -> Result<(), RouterError> {
        if req.client_msg_id.is_empty() || req.client_msg_id.len() > MAX_CLIENT_MSG_ID_LEN {
            return Err(RouterError::InvalidArgument(
                "client_msg_id must be 1 to 64 bytes",
            ));
        }
        if req.body.len() > self.config.max_body {
            return Err(RouterError::BodyTooLarge {
                len: req.body.len(),
                max: self.config.max_body,
            });
        }
        if req.body.is_empty() {
            return Err(RouterError::InvalidArgument("empty body"));
        }
        Ok(())
    }

    async fn prepare(&self, sender: u64, req: SendRequest) -> Result<NewMessage, RouterError> {
        self.check_request(&req)?;
        let conversation = match req.to {
            Target::User(0) | Target::Group(0) => {
                return Err(RouterError::InvalidArgument("recipient id is 0"))
            }
            Target::User(peer) => {
                self.authz.check_direct(sender, peer).await?;
                ConversationId::direct(sender, peer)
            }
            Target::Group(group) => {
                self.authz.check_post(sender, group).await?;
                ConversationId::Group(group)
            }
        };
        Ok(NewMessage {
            conversation,
            sender,
            client_msg_id: req.client_msg_id,
            sent_at: self.now_ms(),
            kind: MessageKind::Text,
            body: req.body,
            membership: None,
        })
    }

    fn acked(client_msg_id: Bytes, a: &hanmadi_storage::chat::Appended) -> SendAck {
        SendAck {
            client_msg_id,
            conversation: a.conversation,
            message_id: a.message_id,
            sent_at: a.sent_at,
        }
    }

    /// Sends a message from the authenticated `sender`, waiting for room in
    /// the append queue (socket senders: their reads stop meanwhile). A
    /// retry with the same `client_msg_id` returns the first ack.
    ///
    /// # Errors
    ///
    /// Authorization and validation refusals, or a storage failure.
    pub async fn send(&self, sender: u64, req: SendRequest) -> Result<SendAck, RouterError> {
        let cmid = req.client_msg_id.clone();
        let msg = match self.prepare(sender, req).await {
            Ok(msg) => msg,
            Err(e) => return self.refused_or_sent(sender, cmid, e).await,
        };
        let a = self.appender.append(msg).await?;
        Ok(Self::acked(cmid, &a))
    }

    /// A send that authorization refuses may be the retry of one stored
    /// before the refusal applied (a block, a removal): exactly-once means
    /// it gets the first ack, not the refusal.
    async fn refused_or_sent(
        &self,
        sender: u64,
        client_msg_id: Bytes,
        refusal: RouterError,
    ) -> Result<SendAck, RouterError> {
        if !matches!(
            refusal,
            RouterError::NotAMember | RouterError::Blocked | RouterError::NotFound(_)
        ) {
            return Err(refusal);
        }
        match self.store.find_sent(sender, &client_msg_id).await? {
            Some((conversation, message_id, sent_at)) => Ok(SendAck {
                client_msg_id,
                conversation,
                message_id,
                sent_at,
            }),
            None => Err(refusal),
        }
    }

    /// As [`Router::send`], but refuses with [`RouterError::Busy`] instead
    /// of waiting when the append queue is full, and while sends stand in
    /// line longer than [`AppenderConfig::max_wait`] (HTTP senders: `503`).
    ///
    /// # Errors
    ///
    /// As [`Router::send`], and [`RouterError::Busy`].
    pub async fn try_send(&self, sender: u64, req: SendRequest) -> Result<SendAck, RouterError> {
        let cmid = req.client_msg_id.clone();
        let msg = match self.prepare(sender, req).await {
            Ok(msg) => msg,
            Err(e) => return self.refused_or_sent(sender, cmid, e).await,
        };
        let a = self.appender.try_append(msg).await?;
        Ok(Self::acked(cmid, &a))
    }

    /// `user`'s inbox after `after` (empty: from the oldest kept entry),
    /// a page of `limit` entries (see [`DEFAULT_SYNC_LIMIT`]). What it
    /// returns is no longer pending a push.
    ///
    /// # Errors
    ///
    /// [`RouterError::CursorExpired`] past the retention window; a malformed
    /// cursor; a storage failure.
    pub async fn sync(
        &self,
        user: u64,
        after: &[u8],
        limit: u32,
    ) -> Result<SyncBatch, RouterError> {
        let after = Cursor::parse(after)?;
        let limit = page_limit(limit, DEFAULT_SYNC_LIMIT, MAX_SYNC_LIMIT);
        self.pages.ready().await;
        let batch = self.read_inbox(user, after, limit, None).await?;
        self.pages
            .charge(batch.entries.iter().map(|e| e.message.len()).sum());
        Ok(batch)
    }

    /// The next page of `user`'s inbox after `after` for live delivery to a
    /// connection (a commit it was notified of rather than handed):
    /// [`Router::sync`] without the page budget, which bounds what clients
    /// ask to read, never what the node delivers. `until`, the newest
    /// entry the connection was notified of, lets the read be made at its
    /// commit's version (no read-version round trip on FoundationDB); the
    /// page then ends there or before.
    ///
    /// # Errors
    ///
    /// As [`Router::sync`].
    pub async fn pull(
        &self,
        user: u64,
        after: Option<Cursor>,
        until: Option<Cursor>,
    ) -> Result<SyncBatch, RouterError> {
        self.read_inbox(user, after, DEFAULT_SYNC_LIMIT as usize, until)
            .await
    }

    /// A page of `user`'s inbox, no longer pending a push.
    async fn read_inbox(
        &self,
        user: u64,
        after: Option<Cursor>,
        limit: usize,
        until: Option<Cursor>,
    ) -> Result<SyncBatch, RouterError> {
        let batch = self
            .store
            .sync_within(user, after, limit, self.config.page_bytes, until)
            .await?;
        if let (Some(last), true) = (batch.next, batch.push_pending) {
            // Read now: no push for these. The page's own read found some
            // pending, so a reader with none pays no second transaction.
            self.store.clear_push_pending(user, last).await?;
        }
        Ok(batch)
    }

    /// A page of a conversation's history as `user` may see it, newest
    /// first, before message id `before` (`0`: from the newest), of
    /// `limit` messages (see [`DEFAULT_HISTORY_LIMIT`]).
    ///
    /// # Errors
    ///
    /// [`RouterError::NotAMember`] for a conversation `user` is not in.
    pub async fn history(
        &self,
        user: u64,
        conversation: ConversationId,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, RouterError> {
        self.pages.ready().await;
        let page = self
            .store
            .history_within(
                conversation,
                Some(user),
                before,
                page_limit(limit, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT),
                self.config.page_bytes,
            )
            .await?;
        self.pages
            .charge(page.messages.iter().map(Bytes::len).sum());
        Ok(page)
    }

    /// Records what one of `user`'s devices has received; it is no longer
    /// pending a push. Written in the background with other receipts
    /// ([`receipts`]): this returns once the ack is queued.
    ///
    /// # Errors
    ///
    /// A malformed cursor.
    pub async fn ack(&self, user: u64, device: &str, cursor: &[u8]) -> Result<(), RouterError> {
        let cursor = Cursor::parse(cursor)?.ok_or(RouterError::InvalidArgument("empty cursor"))?;
        self.receipts.delivered(user, device, cursor).await;
        Ok(())
    }

    fn check_participant(
        &self,
        user: u64,
        conversation: ConversationId,
    ) -> Result<(), RouterError> {
        match conversation {
            ConversationId::Direct { .. } if conversation.peer_of(user).is_none() => {
                Err(RouterError::NotAMember)
            }
            _ => Ok(()),
        }
    }

    /// Marks `conversation` read by `user` up to `message_id`. Written in
    /// the background with other receipts ([`receipts`]).
    ///
    /// # Errors
    ///
    /// [`RouterError::NotAMember`]; a storage failure reading membership.
    pub async fn read(
        &self,
        user: u64,
        conversation: ConversationId,
        message_id: u64,
    ) -> Result<(), RouterError> {
        self.check_participant(user, conversation)?;
        if let ConversationId::Group(g) = conversation {
            self.authz.check_post(user, g).await?;
        }
        self.receipts.read(user, conversation, message_id).await;
        Ok(())
    }

    /// Unread messages of `user` in `conversation`, counted up to `cap`
    /// (counting reads each message, so a list of many conversations
    /// passes a small cap and shows "`cap` or more").
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn unread(
        &self,
        user: u64,
        conversation: ConversationId,
        cap: usize,
    ) -> Result<usize, RouterError> {
        self.check_participant(user, conversation)?;
        Ok(self.store.unread_count(user, conversation, cap).await?)
    }

    async fn system(
        &self,
        actor: u64,
        group: u64,
        kind: MessageKind,
        change: MembershipChange,
    ) -> Result<SendAck, RouterError> {
        // A membership change is an event of its own: it gets a fresh
        // idempotency key.
        let cmid = Bytes::from(format!("system-{}", self.ids.next_above(0)));
        let msg = NewMessage {
            conversation: ConversationId::Group(group),
            sender: actor,
            client_msg_id: cmid.clone(),
            sent_at: self.now_ms(),
            kind,
            body: String::new(),
            membership: Some(change),
        };
        let result = self.appender.append(msg).await;
        // Whatever the outcome, the cached membership may be stale now.
        self.authz.invalidate_group(group);
        self.sink.changed(&FeedEvent {
            groups: vec![group],
            ..FeedEvent::default()
        });
        Ok(Self::acked(cmid, &result?))
    }

    /// Blocks or unblocks direct messages between `user` and `other`. Only
    /// a live account other than oneself can be blocked; anyone can be
    /// unblocked, so a block outlives neither account.
    ///
    /// # Errors
    ///
    /// [`RouterError::InvalidArgument`] for blocking oneself,
    /// [`RouterError::NotFound`] for blocking an account that does not
    /// exist (or was deleted); a storage failure.
    pub async fn set_blocked(
        &self,
        user: u64,
        other: u64,
        blocked: bool,
    ) -> Result<(), RouterError> {
        if blocked {
            if other == user {
                return Err(RouterError::InvalidArgument("cannot block yourself"));
            }
            self.authz.check_live(other).await?;
        }
        let result = self.store.set_blocked(user, other, blocked).await;
        self.authz.invalidate_block(user, other);
        self.sink.changed(&FeedEvent {
            blocks: vec![user, other],
            ..FeedEvent::default()
        });
        Ok(result?)
    }

    /// Deletes `user`'s account.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`]; a storage failure.
    pub async fn delete_user(&self, user: u64) -> Result<(), RouterError> {
        let result = self.store.delete_user(user, self.now_ms()).await;
        self.authz.invalidate_user(user);
        self.sink.changed(&FeedEvent {
            accounts: vec![user],
            ..FeedEvent::default()
        });
        Ok(result?)
    }

    /// Voids every token `user` holds now: sessions and application JWTs
    /// alike must be issued again. The caller closes the user's sockets on
    /// this node; other nodes close theirs on the change.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`] for an unknown or deleted user; a storage
    /// failure.
    pub async fn revoke_tokens(&self, user: u64) -> Result<(), RouterError> {
        let result = self.store.revoke_tokens(user, self.now_ms()).await;
        self.sink.changed(&FeedEvent {
            accounts: vec![user],
            ..FeedEvent::default()
        });
        Ok(result?)
    }

    /// Acts on a change committed through another node of the cluster:
    /// forgets what the authorization caches hold of it.
    pub fn forget(&self, change: &FeedEvent) {
        for &group in &change.groups {
            self.authz.invalidate_group(group);
        }
        for &user in &change.accounts {
            self.authz.invalidate_user(user);
        }
        for pair in change.blocks.chunks_exact(2) {
            self.authz.invalidate_block(pair[0], pair[1]);
        }
    }
}
