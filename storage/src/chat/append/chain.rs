//! Chained deliveries: an append that proves, for each recipient, which
//! inbox entry comes right before the new one.
//!
//! On a cluster, commits through other nodes interleave with this node's
//! in versionstamp order, so a connection may write a message it is handed
//! only if nothing it has not written lies before it in the inbox.
//! Otherwise it must read its inbox (DESIGN §3.6). An append that reads each
//! recipient's newest entry with a conflict range knows, once it commits,
//! that this entry is the one right before its own: any entry committed in
//! between would have written into the range it read and aborted it. A
//! connection whose last written cursor is that entry writes the message at
//! once; any other reads its inbox as before.
//!
//! A group message's recipients are known only once its transaction has
//! read the membership, so its append reads the inboxes of the members the
//! group's previous append found (a group of at most
//! [`CHAINED_MEMBERS_MAX`] members). A stale list is safe: a recipient it
//! misses reads their inbox, and a user it names who left only adds a read.
//!
//! Only users with a live connection are read. The reads cost a conflict
//! whenever another conversation's commit lands in a recipient's inbox
//! while this transaction is open. The retry of a
//! conflicted attempt reads no entries, and a conversation that conflicted
//! is left unchained for a while, so a user busy in many conversations at
//! once costs pulls, not repeated aborts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hanmadi_proto::ConversationId;
use moka::sync::Cache;

use super::plan::{direct_pairs, groups_to_plan};
use super::Slot;
use crate::chat::{keys, Cursor};
use crate::kv::{KvError, KvTxn, RangeRead};

/// How long a conversation whose chained append conflicted appends
/// without reading its recipients' inboxes.
const UNCHAINED_FOR: Duration = Duration::from_secs(10);
/// Most conversations remembered as unchained.
const UNCHAINED_MAX: u64 = 100_000;
/// The largest group whose appends read its members' inboxes: past it,
/// each append would read (and risk conflicts on) too many inboxes, and
/// the recipients read their own.
pub const CHAINED_MEMBERS_MAX: usize = 128;
/// Most members remembered over all groups.
const MEMBERS_REMEMBERED_MAX: u64 = 1_000_000;

/// The inbox entry right before a recipient's new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Before {
    /// Not proven: the recipient reads their inbox.
    Unknown,
    /// None: the new entry is the inbox's first.
    Empty,
    /// This one.
    Entry(Cursor),
}

/// A recipient's newest inbox entry as an attempt sees it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Tail {
    /// Committed before the attempt (`None`: the inbox is empty).
    Committed(Option<Cursor>),
    /// Written by this attempt, at this order of its commit.
    Ours(u16),
}

impl Tail {
    /// What it is once the attempt committed with `stamp`.
    pub(super) fn settle(self, stamp: crate::kv::Versionstamp) -> Before {
        match self {
            Tail::Committed(None) => Before::Empty,
            Tail::Committed(Some(c)) => Before::Entry(c),
            Tail::Ours(order) => Before::Entry(Cursor::new(stamp, order)),
        }
    }
}

/// What a cluster's chained appends remember: the conversations whose
/// chained appends conflicted lately, and each group's members as its last
/// append read them.
#[derive(Clone)]
pub(crate) struct Chaining {
    unchained: Cache<ConversationId, ()>,
    members: Cache<u64, Arc<[u64]>>,
}

impl std::fmt::Debug for Chaining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaining")
            .field("unchained", &self.unchained.entry_count())
            .field("groups", &self.members.entry_count())
            .finish()
    }
}

impl Chaining {
    pub(crate) fn new() -> Self {
        Self {
            unchained: Cache::builder()
                .max_capacity(UNCHAINED_MAX)
                .time_to_live(UNCHAINED_FOR)
                .build(),
            members: Cache::builder()
                .max_capacity(MEMBERS_REMEMBERED_MAX)
                // A group's entry costs more than its members.
                .weigher(|_, m: &Arc<[u64]>| u32::try_from(m.len() + 1).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// Whether `conv` may read its recipients' inboxes.
    pub(super) fn allows(&self, conv: ConversationId) -> bool {
        !self.unchained.contains_key(&conv)
    }

    /// Leaves `conv` unchained for a while.
    pub(super) fn conflicted(&self, conv: ConversationId) {
        self.unchained.insert(conv, ());
    }

    /// Remembers the members an attempt read of `group`, whose inboxes the
    /// group's next append reads; a group too large to chain is forgotten.
    pub(super) fn remember_members(
        &self,
        group: u64,
        members: impl ExactSizeIterator<Item = u64> + Clone,
    ) {
        if members.len() > CHAINED_MEMBERS_MAX {
            self.members.invalidate(&group);
            return;
        }
        match self.members.get(&group) {
            Some(known) if known.iter().copied().eq(members.clone()) => {}
            _ => self.members.insert(group, members.collect()),
        }
    }
}

/// The newest inbox entry of every recipient of the messages still to plan
/// who is `online` (only a live connection uses it), read with conflict
/// ranges: both users of a direct conversation, and the members `chaining`
/// remembers of a group.
pub(super) async fn read_tails<T: KvTxn>(
    txn: &T,
    slots: &[Slot],
    online: &(dyn Fn(u64) -> bool + Sync),
    chaining: Option<&Chaining>,
) -> Result<HashMap<u64, Tail>, KvError> {
    let mut users: Vec<u64> = direct_pairs(slots).flat_map(|(a, b)| [a, b]).collect();
    if let Some(chaining) = chaining {
        for group in groups_to_plan(slots) {
            if let Some(members) = chaining.members.get(&group) {
                users.extend_from_slice(&members);
            }
        }
    }
    users.sort_unstable();
    users.dedup();
    // Skipping the offline also spares a sender without a connection (a
    // bot sending to many users at once) a conflict between every two of
    // its conversations, which would all read its inbox.
    users.retain(|&u| online(u));
    let tails = futures::future::try_join_all(users.iter().map(|&u| newest_entry(txn, u))).await?;
    // An entry whose key holds no cursor leaves its user unchained.
    Ok(users
        .into_iter()
        .zip(tails)
        .filter_map(|(u, t)| Some((u, Tail::Committed(t?))))
        .collect())
}

/// `user`'s newest inbox entry (`Some(None)`: the inbox is empty; `None`:
/// a key without a cursor), read with a conflict range from it to the end
/// of the inbox, so a commit that adds an entry after it aborts `txn`.
async fn newest_entry<T: KvTxn>(txn: &T, user: u64) -> Result<Option<Option<Cursor>>, KvError> {
    let begin = keys::inbox_of(user);
    let end = keys::prefix_end(&begin);
    let rows = txn
        .get_range(RangeRead::new(&begin, &end).limit(1).reverse(true))
        .await?;
    Ok(match rows.first() {
        None => Some(None),
        Some(kv) => keys::cursor_of_inbox_key(&kv.key).map(|c| Some(Cursor(c))),
    })
}
