//! Messages this node committed a moment ago, kept for the pulls their
//! commits set off.
//!
//! On a cluster a commit often only notifies (always for a group message,
//! or for a connection that is behind), and the recipient connection then
//! reads its inbox (DESIGN §3.6): the inbox entries and, one read
//! each, the messages they name. The node that committed a message still
//! holds it, so its own connections' pulls take it from here and read
//! only the entries. A message is immutable once stored, so a kept copy
//! is never stale; one not kept is read from the store as before.

use std::time::Duration;

use bytes::Bytes;
use hanmadi_proto::ConversationId;
use moka::sync::Cache;

/// How long a message is kept: the pulls its commit sets off come within
/// milliseconds; a later one reads it from the store.
const KEEP: Duration = Duration::from_secs(5);

/// What a kept message costs besides its bytes (key, entry, bookkeeping).
const ENTRY_OVERHEAD: u32 = 128;

/// Messages committed lately, by conversation and id, up to a byte budget.
#[derive(Clone)]
pub(crate) struct RecentMessages {
    cache: Cache<(ConversationId, u64), Bytes>,
}

impl std::fmt::Debug for RecentMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentMessages")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl RecentMessages {
    /// Keeps messages for a few seconds, at most `max_bytes` of them.
    pub(crate) fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, message: &Bytes| {
                u32::try_from(message.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(ENTRY_OVERHEAD)
            })
            .time_to_live(KEEP)
            .build();
        Self { cache }
    }

    /// Keeps a message that just committed.
    pub(crate) fn insert(&self, conversation: ConversationId, message_id: u64, message: &Bytes) {
        self.cache
            .insert((conversation, message_id), message.clone());
    }

    /// The message, if it is kept.
    pub(crate) fn get(&self, conversation: ConversationId, message_id: u64) -> Option<Bytes> {
        self.cache.get(&(conversation, message_id))
    }
}
