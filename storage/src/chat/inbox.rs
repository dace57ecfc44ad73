//! Reading the message sync queue: sync after a cursor, history, read and
//! delivery state, and inbox retention.

use bytes::Bytes;
use hanmadi_proto::ConversationId;

use super::append::parse_inbox_value;
use super::keys::{self, CURSOR_LEN};
use super::push::clear_pending_through;
use super::records::MemberRecord;
use super::{be_u64, decode, le_u64, trailing_id, transact, ChatStore, StoreError};
use crate::kv::{AtomicOp, Kv, KvTxn, RangeRead, Versionstamp, VERSIONSTAMP_LEN};

/// A position in a user's inbox. Opaque to clients; sorts bytewise in
/// commit order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(pub [u8; CURSOR_LEN]);

/// Most receipts (acks and read marks) one [`ChatStore::record_receipts`]
/// transaction should carry: each is a few hundred bytes of reads and
/// writes, so this stays far below FoundationDB's 10 MB / 5 s limits while
/// amortising a commit over many.
pub const MAX_RECEIPTS_PER_TXN: usize = 256;

/// Messages a history page reads at a time while it fills its byte budget.
pub const HISTORY_CHUNK: usize = 16;

/// Messages a sync page reads at once while it fills its byte budget, the
/// same trade as a history page's: at most this many past the budget are
/// ever read.
const SYNC_CHUNK: usize = HISTORY_CHUNK;

impl Cursor {
    /// The cursor of the `order`-th inbox entry of commit `stamp`.
    pub fn new(stamp: Versionstamp, order: u16) -> Self {
        let mut c = [0u8; CURSOR_LEN];
        c[..VERSIONSTAMP_LEN].copy_from_slice(&stamp.0);
        c[VERSIONSTAMP_LEN..].copy_from_slice(&order.to_be_bytes());
        Self(c)
    }

    /// Parses a cursor from a client; empty means "from the start".
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] for a wrong length.
    pub fn parse(bytes: &[u8]) -> Result<Option<Self>, StoreError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let raw: [u8; CURSOR_LEN] = bytes
            .try_into()
            .map_err(|_| StoreError::Invalid("malformed cursor"))?;
        Ok(Some(Self(raw)))
    }

    /// The cursor's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The version of the commit that made this entry.
    pub fn version(&self) -> u64 {
        let mut stamp = [0u8; VERSIONSTAMP_LEN];
        stamp.copy_from_slice(&self.0[..VERSIONSTAMP_LEN]);
        Versionstamp(stamp).version()
    }
}

/// One inbox entry with its message.
#[derive(Clone, Debug)]
pub struct SyncEntry {
    /// The entry's cursor.
    pub cursor: Cursor,
    /// Its conversation.
    pub conversation: ConversationId,
    /// The message id.
    pub message_id: u64,
    /// The stored message, encoded (`hanmadi.v1.Message`).
    pub message: Bytes,
}

/// A page of a user's inbox.
#[derive(Clone, Debug, Default)]
pub struct SyncBatch {
    /// Entries in commit order.
    pub entries: Vec<SyncEntry>,
    /// Where the next page starts (the last entry's cursor, or the cursor
    /// asked for when the page is empty).
    pub next: Option<Cursor>,
    /// More entries follow.
    pub has_more: bool,
    /// Some entry of the page still awaits a push: the reader should clear
    /// them ([`ChatStore::clear_push_pending`]) through `next`.
    pub push_pending: bool,
}

/// A page of a conversation's history, newest first.
#[derive(Clone, Debug, Default)]
pub struct HistoryPage {
    /// Encoded messages, newest first.
    pub messages: Vec<Bytes>,
    /// Older messages exist within what the reader may see.
    pub has_more: bool,
}

impl<K: Kv> ChatStore<K> {
    /// Reads `user`'s inbox after `after` (`None`: from the oldest kept
    /// entry), at most `limit` entries, in commit order.
    ///
    /// # Errors
    ///
    /// [`StoreError::CursorExpired`] when `after` lies before the retention
    /// window; a storage failure.
    pub async fn sync(
        &self,
        user: u64,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<SyncBatch, StoreError> {
        self.sync_within(user, after, limit, usize::MAX, None).await
    }

    /// As [`ChatStore::sync`], reading messages only until they hold
    /// `max_bytes` (the entry that reaches it is the page's last; a page
    /// always holds one entry when there is one): a page costs what its
    /// answer can carry, not `limit` messages of the largest size.
    /// Messages are read [`SYNC_CHUNK`] at a time, concurrently (each read
    /// is a round trip on FoundationDB), so at most one chunk past the
    /// budget is ever read.
    ///
    /// `known` is an entry of a commit already made (a notification named
    /// it): the page may end there, so the read can be made at that commit's
    /// version ([`Kv::begin_at`]). Entries after it come with their own
    /// notifications.
    ///
    /// # Errors
    ///
    /// As [`ChatStore::sync`].
    pub async fn sync_within(
        &self,
        user: u64,
        after: Option<Cursor>,
        limit: usize,
        max_bytes: usize,
        known: Option<Cursor>,
    ) -> Result<SyncBatch, StoreError> {
        let limit = limit.clamp(1, 1000);
        let prefix = keys::inbox_of(user);
        let begin = match &after {
            Some(c) => keys::key_after(&keys::inbox_at(user, &c.0)),
            None => prefix.clone(),
        };
        let end = keys::prefix_end(&prefix);
        let floor_key = keys::inbox_floor(user);
        let pending = keys::push_of(user);
        let pending_end = keys::prefix_end(&pending);
        transact!(&self.kv, at known.map(|c| c.version()), |txn| {
            // Three independent reads, issued together: on FoundationDB
            // each is a round trip to the storage servers.
            let (floor, rows, first_pending) = futures::future::try_join3(
                txn.get(&floor_key, true),
                txn.get_range(RangeRead::new(&begin, &end).limit(limit + 1).snapshot(true)),
                txn.get_range(
                    RangeRead::new(&pending, &pending_end)
                        .limit(1)
                        .snapshot(true),
                ),
            )
            .await?;
            if let (Some(c), Some(floor)) = (&after, floor) {
                if c.0.as_slice() < floor.as_ref() {
                    return Err(StoreError::CursorExpired);
                }
            }
            let mut has_more = rows.len() > limit;
            let mut entries = Vec::with_capacity(rows.len().min(limit));
            let mut bytes = 0usize;
            'chunks: for chunk in rows[..rows.len().min(limit)].chunks(SYNC_CHUNK) {
                let mut refs = Vec::with_capacity(chunk.len());
                for kv in chunk {
                    let cursor = keys::cursor_of_inbox_key(&kv.key)
                        .map(Cursor)
                        .ok_or(StoreError::Corrupt("inbox"))?;
                    let (conversation, message_id, _) =
                        parse_inbox_value(&kv.value).ok_or(StoreError::Corrupt("inbox"))?;
                    let key = keys::message(conversation, message_id);
                    refs.push((cursor, conversation, message_id, key));
                }
                let messages = futures::future::try_join_all(refs.iter().map(|r| async {
                    match self.recent.as_ref().and_then(|m| m.get(r.1, r.2)) {
                        Some(message) => Ok(Some(message)),
                        None => txn.get(&r.3, true).await,
                    }
                }))
                .await?;
                for ((cursor, conversation, message_id, _), message) in
                    refs.into_iter().zip(messages)
                {
                    if bytes >= max_bytes {
                        has_more = true;
                        break 'chunks;
                    }
                    let message =
                        message.ok_or(StoreError::Corrupt("inbox entry without its message"))?;
                    bytes += message.len();
                    entries.push(SyncEntry {
                        cursor,
                        conversation,
                        message_id,
                        message,
                    });
                }
            }
            let next = entries.last().map(|e| e.cursor).or(after);
            // The oldest pending push entry sorts at or before the page's
            // last entry: the page covers a message still awaiting a push.
            let push_pending = match (entries.last(), first_pending.first()) {
                (Some(last), Some(kv)) => {
                    kv.key.as_ref() <= keys::push_at(user, &last.cursor.0).as_slice()
                }
                _ => false,
            };
            Ok(SyncBatch {
                entries,
                next,
                has_more,
                push_pending,
            })
        })
    }

    /// The cursor of the newest entry in `user`'s inbox, if any.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt key.
    pub async fn inbox_head(&self, user: u64) -> Result<Option<Cursor>, StoreError> {
        let begin = keys::inbox_of(user);
        let end = keys::prefix_end(&begin);
        transact!(&self.kv, |txn| {
            let rows = txn
                .get_range(
                    RangeRead::new(&begin, &end)
                        .limit(1)
                        .reverse(true)
                        .snapshot(true),
                )
                .await?;
            match rows.first() {
                Some(kv) => Ok(Some(
                    keys::cursor_of_inbox_key(&kv.key)
                        .map(Cursor)
                        .ok_or(StoreError::Corrupt("inbox"))?,
                )),
                None => Ok(None),
            }
        })
    }

    /// Pages a conversation's history, newest first, before message id
    /// `before` (`0`: from the newest). A group member (`reader`) sees
    /// messages from their join on; `reader: None` reads everything.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotMember`] when `reader` is not in the group.
    pub async fn history(
        &self,
        conversation: ConversationId,
        reader: Option<u64>,
        before: u64,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        self.history_within(conversation, reader, before, limit, usize::MAX)
            .await
    }

    /// As [`ChatStore::history`], reading messages only until they hold
    /// `max_bytes` (the one that reaches it is the page's last; a page
    /// always holds one message when there is one). Messages are read in
    /// chunks of [`HISTORY_CHUNK`], so at most one chunk past the budget is
    /// ever read.
    ///
    /// # Errors
    ///
    /// As [`ChatStore::history`].
    pub async fn history_within(
        &self,
        conversation: ConversationId,
        reader: Option<u64>,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, StoreError> {
        let limit = limit.clamp(1, 1000);
        let prefix = keys::messages_of(conversation);
        let upper = if before == 0 {
            keys::prefix_end(&prefix)
        } else {
            keys::message(conversation, before)
        };
        transact!(&self.kv, |txn| {
            let floor = match (conversation, reader) {
                (ConversationId::Group(g), Some(u)) => {
                    let Some(m) = txn.get(&keys::member(g, u), true).await? else {
                        return Err(StoreError::NotMember);
                    };
                    decode::<MemberRecord>(&m, "members")?.joined_at
                }
                (ConversationId::Direct { .. }, Some(u)) if conversation.peer_of(u).is_none() => {
                    return Err(StoreError::NotMember);
                }
                _ => 0,
            };
            let lower = keys::message(conversation, floor);
            let mut messages = Vec::new();
            let mut bytes = 0usize;
            let mut upper = upper.clone();
            loop {
                // One more than the page holds tells whether more remain.
                let want = (limit + 1 - messages.len()).min(HISTORY_CHUNK);
                let rows = txn
                    .get_range(
                        RangeRead::new(&lower, &upper)
                            .limit(want)
                            .reverse(true)
                            .snapshot(true),
                    )
                    .await?;
                let got = rows.len();
                for kv in rows {
                    if messages.len() == limit || bytes >= max_bytes {
                        return Ok(HistoryPage {
                            messages,
                            has_more: true,
                        });
                    }
                    bytes += kv.value.len();
                    upper = kv.key.to_vec();
                    messages.push(kv.value);
                }
                if got < want {
                    return Ok(HistoryPage {
                        messages,
                        has_more: false,
                    });
                }
            }
        })
    }

    /// The id of a conversation's latest message (`0`: none).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn head(&self, conversation: ConversationId) -> Result<u64, StoreError> {
        if self.config.single_writer {
            // A single writer keeps no head key: its last message is it.
            return transact!(&self.kv, |txn| {
                super::append::last_message_id(&txn, conversation).await
            });
        }
        let key = keys::head(conversation);
        transact!(&self.kv, |txn| match txn.get(&key, true).await? {
            Some(v) => be_u64(&v, "heads"),
            None => Ok(0),
        })
    }

    /// Every conversation of `user` (direct peers and groups) with its head,
    /// in one transaction: two range reads, then the heads read
    /// concurrently. A conversation with no message yet has head 0.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn conversation_heads(
        &self,
        user: u64,
    ) -> Result<Vec<(ConversationId, u64)>, StoreError> {
        let directs = keys::directs(user);
        let directs_end = keys::prefix_end(&directs);
        let groups = keys::user_groups(user);
        let groups_end = keys::prefix_end(&groups);
        transact!(&self.kv, |txn| {
            let (peers, memberships) = futures::future::try_join(
                txn.get_range(RangeRead::new(&directs, &directs_end).snapshot(true)),
                txn.get_range(RangeRead::new(&groups, &groups_end).snapshot(true)),
            )
            .await?;
            let mut conversations = Vec::with_capacity(peers.len() + memberships.len());
            for row in &peers {
                let peer = trailing_id(&row.key, directs.len(), "directs")?;
                conversations.push(ConversationId::direct(user, peer));
            }
            for row in &memberships {
                let group = trailing_id(&row.key, groups.len(), "user_groups")?;
                conversations.push(ConversationId::Group(group));
            }
            let single_writer = self.config.single_writer;
            let txn = &txn;
            let heads = futures::future::try_join_all(conversations.iter().map(|&c| async move {
                if single_writer {
                    // A single writer keeps no head key: its last message is it.
                    return super::append::last_message_id(txn, c).await;
                }
                match txn.get(&keys::head(c), true).await? {
                    Some(v) => be_u64(&v, "heads"),
                    None => Ok(0),
                }
            }))
            .await?;
            Ok(conversations.into_iter().zip(heads).collect())
        })
    }

    /// The id `user` last read in `conversation` (`0`: none).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn read_mark(
        &self,
        user: u64,
        conversation: ConversationId,
    ) -> Result<u64, StoreError> {
        let key = keys::read_mark(user, conversation);
        transact!(&self.kv, |txn| Ok(txn
            .get(&key, true)
            .await?
            .map(|v| le_u64(&v))
            .unwrap_or(0)))
    }

    /// Messages in `conversation` after `user`'s read mark and not sent by
    /// `user`, counted up to `cap`. In a group only what `user` may see
    /// counts: messages from their join on.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn unread_count(
        &self,
        user: u64,
        conversation: ConversationId,
        cap: usize,
    ) -> Result<usize, StoreError> {
        let mark_key = keys::read_mark(user, conversation);
        let member_key = match conversation {
            ConversationId::Group(group) => Some(keys::member(group, user)),
            ConversationId::Direct { .. } => None,
        };
        let prefix = keys::messages_of(conversation);
        let end = keys::prefix_end(&prefix);
        transact!(&self.kv, |txn| {
            let mark = txn
                .get(&mark_key, true)
                .await?
                .map(|v| le_u64(&v))
                .unwrap_or(0);
            let joined_at = match &member_key {
                Some(key) => match txn.get(key, true).await? {
                    Some(v) => decode::<MemberRecord>(&v, "members")?.joined_at,
                    None => return Ok(0),
                },
                None => 0,
            };
            let from = mark.saturating_add(1).max(joined_at);
            let begin = keys::message(conversation, from);
            let rows = txn
                .get_range(RangeRead::new(&begin, &end).limit(cap).snapshot(true))
                .await?;
            let mut n = 0;
            for kv in &rows {
                let m = decode::<hanmadi_proto::pb::Message>(&kv.value, "messages")?;
                if m.sender != user {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Records receipts in one transaction: for each `(user, device,
    /// cursor)` of `delivered`, the device's delivery cursor (it only moves
    /// forward) and the end of the user's push-pending entries up to it;
    /// for each `(user, conversation, message_id)` of `read`, the user's read
    /// mark (it only moves forward). Callers keep a batch small
    /// ([`MAX_RECEIPTS_PER_TXN`]) so a transaction stays far inside
    /// FoundationDB's size and time limits.
    ///
    /// # Errors
    ///
    /// A storage failure; nothing of the batch is recorded.
    pub async fn record_receipts(
        &self,
        delivered: &[(u64, &str, Cursor)],
        read: &[(u64, ConversationId, u64)],
    ) -> Result<(), StoreError> {
        transact!(&self.kv, |txn| {
            for &(user, device, cursor) in delivered {
                let key = keys::delivered(user, device);
                let current = txn.get(&key, false).await?;
                if current.as_deref().is_none_or(|c| c < cursor.as_bytes()) {
                    txn.set(&key, cursor.as_bytes());
                }
                clear_pending_through(&mut txn, user, cursor).await?;
            }
            for &(user, conversation, id) in read {
                let key = keys::read_mark(user, conversation);
                txn.atomic_op(&key, AtomicOp::Max, &id.to_le_bytes());
            }
            Ok(())
        })
    }

    /// The last cursor acknowledged by one of `user`'s devices.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt record.
    pub async fn delivered(&self, user: u64, device: &str) -> Result<Option<Cursor>, StoreError> {
        let key = keys::delivered(user, device);
        transact!(&self.kv, |txn| match txn.get(&key, true).await? {
            Some(v) => Ok(Cursor::parse(&v).map_err(|_| StoreError::Corrupt("delivered"))?),
            None => Ok(None),
        })
    }

    /// Applies the retention window to every user's inbox: removes entries
    /// for messages sent before `older_than_ms`, user by user, each in
    /// small transactions. Returns how many entries were removed.
    ///
    /// # Errors
    ///
    /// A storage failure (what was trimmed before it stays trimmed).
    pub async fn trim_all_inboxes(&self, older_than_ms: u64) -> Result<usize, StoreError> {
        let prefix = keys::key(&(keys::Space::Users,));
        let end = keys::prefix_end(&prefix);
        let mut begin = prefix.clone();
        let mut total = 0;
        loop {
            let page = transact!(&self.kv, |txn| {
                let rows = txn
                    .get_range(RangeRead::new(&begin, &end).limit(500).snapshot(true))
                    .await?;
                rows.iter()
                    .map(|kv| Ok((trailing_id(&kv.key, prefix.len(), "users")?, kv.key.clone())))
                    .collect::<Result<Vec<_>, StoreError>>()
            })?;
            let Some((_, last)) = page.last() else {
                return Ok(total);
            };
            begin = keys::key_after(last);
            for (user, _) in &page {
                total += self.trim_inbox(*user, older_than_ms).await?;
                // An embedded read does not wait: without this the sweep
                // would hold its runtime worker, and the connections on
                // it, for the whole pass.
                tokio::task::yield_now().await;
            }
            if page.len() < 500 {
                return Ok(total);
            }
        }
    }

    /// Removes `user`'s inbox entries for messages sent before
    /// `older_than_ms`; syncing after a removed cursor then answers
    /// [`StoreError::CursorExpired`]. Returns how many were removed.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn trim_inbox(&self, user: u64, older_than_ms: u64) -> Result<usize, StoreError> {
        let prefix = keys::inbox_of(user);
        let end = keys::prefix_end(&prefix);
        let floor_key = keys::inbox_floor(user);
        // Entries are in commit order, so the first says whether any is
        // old enough: a sweep that finds nothing to remove reads one entry
        // per user, not a chunk.
        let oldest = transact!(&self.kv, |txn| {
            let rows = txn
                .get_range(RangeRead::new(&prefix, &end).limit(1).snapshot(true))
                .await?;
            rows.first()
                .map(|kv| {
                    parse_inbox_value(&kv.value)
                        .map(|(_, _, sent_at)| sent_at)
                        .ok_or(StoreError::Corrupt("inbox"))
                })
                .transpose()
        })?;
        if oldest.is_none_or(|sent_at| sent_at >= older_than_ms) {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            // Chunks keep each transaction small and short.
            let removed = transact!(&self.kv, |txn| {
                let rows = txn
                    .get_range(RangeRead::new(&prefix, &end).limit(500))
                    .await?;
                let mut last: Option<Bytes> = None;
                for kv in &rows {
                    let (_, _, sent_at) =
                        parse_inbox_value(&kv.value).ok_or(StoreError::Corrupt("inbox"))?;
                    if sent_at >= older_than_ms {
                        break;
                    }
                    last = Some(kv.key.clone());
                }
                let Some(last) = last else { return Ok(0usize) };
                let n = rows.iter().take_while(|kv| kv.key <= last).count();
                txn.clear_range(&prefix, &keys::key_after(&last));
                let cursor =
                    keys::cursor_of_inbox_key(&last).ok_or(StoreError::Corrupt("inbox"))?;
                // A reader who saw the last removed entry missed nothing; one
                // whose cursor is older did.
                txn.set(&floor_key, &cursor);
                Ok(n)
            })?;
            total += removed;
            if removed < 500 {
                return Ok(total);
            }
        }
    }
}
