//! The change feed of a cluster (DESIGN §6): what other nodes must act on,
//! written by the transaction that made the change.
//!
//! Each transaction that adds inbox entries, changes a group's membership,
//! deletes an account or changes a block writes a [`FeedEvent`] under
//! `feed/(versionstamp, chunk)`: a blind write with a versionstamped key, so
//! it never conflicts and orders entries by commit. Every node reads the
//! feed after its last position from time to time; that read is the
//! backstop under the node-to-node link, which carries the same events at
//! once but may lose them. Only a store with
//! [`StoreConfig::change_feed`](super::StoreConfig::change_feed) writes it.

use prost::Message as _;

use super::keys::{self, CURSOR_LEN};
use super::records::FeedEvent;
use super::{decode, transact, ChatStore, Cursor, StoreError};
use crate::kv::{Kv, KvTxn, RangeRead};

/// Most user ids one feed entry holds: a packed varint is at most 10 bytes,
/// so an entry stays well under FoundationDB's 100 kB value limit.
const USERS_PER_ENTRY: usize = 8_000;

/// A position in the change feed: the versionstamp of a commit and a chunk
/// of its entry. Sorts in commit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedPosition(pub [u8; CURSOR_LEN]);

impl FeedPosition {
    /// The last inbox cursor the commit at this position can have written:
    /// a connection whose last delivered cursor is at or past it has
    /// everything this entry announces.
    pub fn last_cursor(&self) -> Cursor {
        self.cursor_at(u16::MAX)
    }

    /// The inbox cursor through which `event`'s `i`th user has new entries
    /// at this position: that user's last entry when the event names its
    /// order, else [`FeedPosition::last_cursor`].
    pub fn until_of(&self, event: &FeedEvent, i: usize) -> Cursor {
        match event.orders.get(i) {
            Some(&order) if event.orders.len() == event.users.len() => {
                self.cursor_at(u16::try_from(order).unwrap_or(u16::MAX))
            }
            _ => self.last_cursor(),
        }
    }

    fn cursor_at(&self, order: u16) -> Cursor {
        let mut c = self.0;
        c[CURSOR_LEN - 2..].copy_from_slice(&order.to_be_bytes());
        Cursor(c)
    }
}

/// Writes `event` to the feed in `txn`, split in chunks under the value
/// size limit, each user once (with the highest of their orders). Nothing
/// for an empty event.
pub(crate) fn write<T: KvTxn>(txn: &mut T, mut event: FeedEvent) {
    if event.is_empty() {
        return;
    }
    if event.orders.len() == event.users.len() {
        let mut pairs: Vec<(u64, u32)> = event
            .users
            .iter()
            .copied()
            .zip(event.orders.iter().copied())
            .collect();
        // Highest order first within a user, so `dedup` keeps it.
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        pairs.dedup_by_key(|(user, _)| *user);
        (event.users, event.orders) = pairs.into_iter().unzip();
    } else {
        event.orders.clear();
        event.users.sort_unstable();
        event.users.dedup();
    }
    let mut chunk: u16 = 0;
    while event.users.len() > USERS_PER_ENTRY {
        let rest = event.users.split_off(USERS_PER_ENTRY);
        let rest_orders = match event.orders.is_empty() {
            true => Vec::new(),
            false => event.orders.split_off(USERS_PER_ENTRY),
        };
        let part = FeedEvent {
            users: std::mem::replace(&mut event.users, rest),
            orders: std::mem::replace(&mut event.orders, rest_orders),
            ..FeedEvent::default()
        };
        txn.set_versionstamped_key(&keys::feed_stamped(chunk), &part.encode_to_vec());
        chunk = chunk.saturating_add(1);
    }
    txn.set_versionstamped_key(&keys::feed_stamped(chunk), &event.encode_to_vec());
}

impl<K: Kv> ChatStore<K> {
    /// The position of the newest feed entry (`None`: the feed is empty): a
    /// node starts reading after it.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn feed_head(&self) -> Result<Option<FeedPosition>, StoreError> {
        let begin = keys::feed();
        let end = keys::prefix_end(&begin);
        let rows = transact!(&self.kv, |txn| {
            Ok(txn
                .get_range(
                    RangeRead::new(&begin, &end)
                        .limit(1)
                        .reverse(true)
                        .snapshot(true),
                )
                .await?)
        })?;
        rows.first().map(|kv| position_of(&kv.key)).transpose()
    }

    /// Up to `limit` feed entries after `after` (`None`: from the oldest
    /// kept), in commit order.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn feed_after(
        &self,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<Vec<(FeedPosition, FeedEvent)>, StoreError> {
        let prefix = keys::feed();
        let begin = match after {
            Some(p) => keys::key_after(&keys::feed_at(&p.0)),
            None => prefix.clone(),
        };
        let end = keys::prefix_end(&prefix);
        let rows = transact!(&self.kv, |txn| {
            Ok(txn
                .get_range(RangeRead::new(&begin, &end).limit(limit).snapshot(true))
                .await?)
        })?;
        rows.iter()
            .map(|kv| Ok((position_of(&kv.key)?, decode(&kv.value, "feed")?)))
            .collect()
    }

    /// Removes the feed entries at or before `through`.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn trim_feed(&self, through: FeedPosition) -> Result<(), StoreError> {
        let begin = keys::feed();
        let end = keys::key_after(&keys::feed_at(&through.0));
        transact!(&self.kv, |txn| {
            txn.clear_range(&begin, &end);
            Ok(())
        })
    }
}

/// The position at the end of a feed key (tuple versionstamps are its last
/// 12 bytes).
fn position_of(key: &[u8]) -> Result<FeedPosition, StoreError> {
    keys::cursor_of_inbox_key(key)
        .map(FeedPosition)
        .ok_or(StoreError::Corrupt("feed"))
}
