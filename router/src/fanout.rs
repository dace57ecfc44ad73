//! Handing committed messages to the live connections (DESIGN §3.6).

use bytes::Bytes;
use hanmadi_proto::ConversationId;
use hanmadi_storage::chat::{Appended, Before, Cursor, FeedEvent};

/// One committed message on its way to its recipients: the message encoded
/// once, and each recipient's inbox cursor.
#[derive(Debug)]
pub struct Delivery<'a> {
    appended: &'a Appended,
}

impl<'a> Delivery<'a> {
    pub(crate) fn new(appended: &'a Appended) -> Self {
        Self { appended }
    }

    /// The conversation.
    pub fn conversation(&self) -> ConversationId {
        self.appended.conversation
    }

    /// The message id.
    pub fn message_id(&self) -> u64 {
        self.appended.message_id
    }

    /// The message, encoded once (`hanmadi.v1.Message`), shared by every
    /// recipient's `Deliver` frame.
    pub fn encoded(&self) -> &Bytes {
        &self.appended.message
    }

    /// Each recipient with its inbox cursor, in cursor order.
    pub fn recipients(&self) -> impl Iterator<Item = (u64, Cursor)> + '_ {
        self.chained().map(|(u, c, _)| (u, c))
    }

    /// Each recipient with its inbox cursor and the entry the commit proved
    /// to come right before it (a cluster's chained delivery), in cursor
    /// order.
    pub fn chained(&self) -> impl Iterator<Item = (u64, Cursor, Before)> + '_ {
        self.appended
            .recipients
            .iter()
            .enumerate()
            .filter_map(|(i, &u)| {
                let cursor = self.appended.cursor(i)?;
                Some((u, cursor, self.appended.before(i)))
            })
    }
}

/// Where committed messages go: the gateway's connection registry.
/// Implementations must not block (queue, or close a slow connection).
///
/// The single-writer appender calls it in commit order, from one task at a
/// time. A store split by conversation (a cluster) commits conversations
/// side by side, and their deliveries may reach the sink out of commit
/// order: a sink for such a store must place each by the entry its commit
/// proved to come before it ([`Delivery::chained`]), as the cluster's
/// does.
pub trait DeliverySink: Send + Sync + 'static {
    /// Delivers a committed message to every live device of its recipients.
    fn deliver(&self, delivery: &Delivery<'_>);

    /// Tells `user`'s connections to read their inbox after their last
    /// delivered cursor: used when a commit's exact cursors are unknown.
    fn notify(&self, user: u64);

    /// Reports one append: how many messages it carried and how long it
    /// took to commit (for metrics).
    fn committed(&self, _messages: usize, _latency: std::time::Duration) {}

    /// Reports a committed change the authorization caches of other nodes
    /// mirror (membership, an account, a block), for a sink that tells
    /// them. This node's caches are already up to date.
    fn changed(&self, _change: &FeedEvent) {}
}

/// A sink that drops everything (a router with no live connections, such as
/// a pure HTTP node).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDelivery;

impl DeliverySink for NoDelivery {
    fn deliver(&self, _: &Delivery<'_>) {}
    fn notify(&self, _: u64) {}
}
