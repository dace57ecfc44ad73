//! Planning one attempt: inside its transaction, each message's dedup check,
//! id, recipients, encoding and writes.

use std::collections::HashMap;

use bytes::Bytes;
use hanmadi_proto::pb::{self, MessageKind};
use hanmadi_proto::ConversationId;
use prost::Message;

use super::chain::{read_tails, Tail};
use super::group::write_group_effect;
use super::values::{dedup_value, inbox_value, parse_dedup_value};
use super::{IdSource, MembershipChange, Slot};
use crate::chat::groups::members_in;
use crate::chat::records::{GroupRecord, Role};
use crate::chat::{be_u64, decode, keys, ChatStore, StoreError};
use crate::kv::{Kv, KvError, KvTxn, RangeRead};

/// A message's dedup key and stored entry, read ahead of planning.
type Dedup = Option<(Vec<u8>, Option<Bytes>)>;

/// One attempt's plan: how many messages its transaction holds, what it
/// decided for each, and the transaction to commit; or the error that ended
/// it and how many messages that covers.
pub(super) type Attempt<K> = Result<(usize, Vec<Planned>, <K as Kv>::Txn), (usize, KvError)>;

/// What an attempt decided for one message, before its commit.
#[derive(Debug)]
pub(super) enum Planned {
    Fresh {
        message_id: u64,
        first_order: u16,
        recipients: Vec<u64>,
        /// Each recipient's entry before the new one, when read (see
        /// [`super::chain`]); empty when none was.
        before: Vec<Option<Tail>>,
        message: Bytes,
    },
    /// Already stored (by an earlier call, or by this one's earlier attempt).
    Stored {
        conversation: ConversationId,
        message_id: u64,
        sent_at: u64,
        found_before: bool,
        recipients: Vec<u64>,
        message: Bytes,
    },
    /// A copy of an earlier message of this attempt.
    CopyOf(usize),
    Failed(StoreError),
}

/// Per-attempt caches: what this transaction already read or wrote.
#[derive(Default)]
pub(super) struct AttemptState {
    pub(super) heads: HashMap<ConversationId, u64>,
    pub(super) members: HashMap<u64, Vec<(u64, Role)>>,
    pub(super) group_records: HashMap<u64, Option<GroupRecord>>,
    seen: HashMap<(u64, Bytes), usize>,
    /// Whether either user of a direct pair blocked the other, read first.
    blocks: HashMap<(u64, u64), bool>,
    /// Recipients' newest inbox entries, read with conflicts when the
    /// attempt chains its deliveries.
    tails: HashMap<u64, Tail>,
    order: u32,
    bytes: usize,
}

impl<K: Kv> ChatStore<K> {
    /// One attempt: plans and writes as many of `slots` as fit one
    /// transaction. Returns how many it took, what it planned, and the
    /// transaction to commit. `chain`: read the direct recipients' newest
    /// inbox entries too (see [`super::chain`]).
    pub(super) async fn append_attempt(
        &self,
        slots: &mut [Slot],
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
        chain: bool,
    ) -> Attempt<K> {
        let mut txn = self.kv.begin().map_err(|e| (0, e))?;
        // The fence, the blocks, the dedup entries and the recipients'
        // newest inbox entries (when chaining), read together: on
        // FoundationDB each read is a round trip. The blocks come before
        // the dedup entries all the same: they are the attempt's
        // conflict-checked reads, and an optimistic engine registers a
        // transaction for conflict checks at its first read only if that
        // read is checked. A checked read after snapshot reads finds the
        // view stale whenever a commit landed in between (the batch before
        // this one, as a rule), and the commit would fail for nothing. The
        // embedded engine reads when a read is issued, and `join5` issues
        // them in order.
        // A cluster's planning reads (heads, group records and members)
        // join them, so a message costs one round trip of reads, not one
        // per key its planning would come to. An attempt there holds one
        // conversation; one that spans many would read ahead for messages
        // the next transaction takes.
        let (fence, blocks, dedups, tails, conversations) = futures::future::join5(
            self.check_fence(&txn),
            read_blocks(&txn, slots),
            self.read_dedups(&txn, slots),
            async {
                match chain {
                    true => read_tails(&txn, slots, online, self.chaining.as_ref()).await,
                    false => Ok(HashMap::new()),
                }
            },
            async {
                match self.config.split_by_conversation {
                    true => read_conversations(&txn, slots).await,
                    false => Ok(AttemptState::default()),
                }
            },
        )
        .await;
        match fence {
            Ok(()) => {}
            Err(StoreError::Kv(e)) => return Err((1, e)),
            Err(lost) => {
                // The node's id is another's now: nothing of this batch
                // may be stored under it.
                let node_id = match lost {
                    StoreError::LeaseLost { node_id } => node_id,
                    // An unreadable epoch fences the node all the same.
                    _ => self.fence.map_or(u64::MAX, |l| l.node_id),
                };
                let failed = slots
                    .iter()
                    .map(|s| match &s.outcome {
                        Some(_) => Planned::CopyOf(usize::MAX),
                        None => Planned::Failed(StoreError::LeaseLost { node_id }),
                    })
                    .collect();
                return Ok((slots.len(), failed, txn));
            }
        }
        let mut st = AttemptState {
            blocks: blocks.map_err(|e| (1, e))?,
            tails: tails.map_err(|e| (1, e))?,
            ..conversations.map_err(|e| (1, e))?
        };
        let mut planned: Vec<Planned> = Vec::with_capacity(slots.len());
        let mut dedups = dedups.map_err(|e| (1, e))?;
        for (i, slot) in slots.iter().enumerate() {
            if slot.outcome.is_some() {
                planned.push(Planned::CopyOf(usize::MAX));
                continue;
            }
            let dedup = dedups[i].take();
            match self
                .plan_one(&mut txn, &mut st, i, slot, dedup, ids, online)
                .await
            {
                Ok(Some(p)) => planned.push(p),
                // Full: the rest goes to the next transaction.
                Ok(None) => break,
                Err(StoreError::Kv(e)) => return Err((planned.len().max(1), e)),
                Err(e) => planned.push(Planned::Failed(e)),
            }
        }
        let end = planned.len();
        if self.config.change_feed {
            super::super::feed::write(&mut txn, feed_event(&slots[..end], &planned));
        }
        if self.config.single_writer {
            self.heads.extend(st.heads.iter().map(|(&c, &h)| (c, h)));
        }
        if let Some(chaining) = &self.chaining {
            for (&group, members) in &st.members {
                chaining.remember_members(group, members.iter().map(|&(u, _)| u));
            }
        }
        Ok((end, planned, txn))
    }

    /// Reads the dedup entries of the messages still to plan, in key order:
    /// neighbouring keys share most of the memtable's search path, as the
    /// sorted writes of the fjall backend do. Returns each message's key and
    /// entry, by position.
    async fn read_dedups(&self, txn: &K::Txn, slots: &[Slot]) -> Result<Vec<Dedup>, KvError> {
        let mut order: Vec<(Vec<u8>, usize)> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.outcome.is_none())
            .map(|(i, s)| (keys::dedup(s.msg.sender, &s.msg.client_msg_id), i))
            .collect();
        order.sort_unstable();
        let mut out: Vec<Dedup> = (0..slots.len()).map(|_| None).collect();
        // A single writer's reads are snapshots (see `writer`).
        let snapshot = self.config.single_writer;
        let values =
            futures::future::try_join_all(order.iter().map(|(key, _)| txn.get(key, snapshot)))
                .await?;
        for ((key, i), value) in order.into_iter().zip(values) {
            out[i] = Some((key, value));
        }
        Ok(out)
    }

    /// Plans one message inside the attempt's transaction, given its dedup
    /// key and entry; `None` when it does not fit and another message came
    /// first.
    #[allow(clippy::too_many_arguments)]
    async fn plan_one(
        &self,
        txn: &mut K::Txn,
        st: &mut AttemptState,
        index: usize,
        slot: &Slot,
        dedup: Dedup,
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Option<Planned>, StoreError> {
        let msg = &slot.msg;
        let seen_key = (msg.sender, msg.client_msg_id.clone());
        if let Some(&first) = st.seen.get(&seen_key) {
            return Ok(Some(Planned::CopyOf(first)));
        }
        let (dedup_key, stored) = match dedup {
            Some(d) => d,
            None => {
                let key = keys::dedup(msg.sender, &msg.client_msg_id);
                let value = txn.get(&key, self.config.single_writer).await?;
                (key, value)
            }
        };
        if let Some(v) = stored {
            let (conv, message_id, sent_at) =
                parse_dedup_value(&v).ok_or(StoreError::Corrupt("dedup"))?;
            st.seen.insert(seen_key, index);
            // The ack of a retried send carries the stored message, like the
            // first ack would have.
            let row = txn
                .get(&keys::message(conv, message_id), true)
                .await?
                .unwrap_or_default();
            if !slot.maybe_ours {
                return Ok(Some(Planned::Stored {
                    conversation: conv,
                    message_id,
                    sent_at,
                    found_before: true,
                    recipients: Vec::new(),
                    message: row,
                }));
            }
            // Committed by an earlier attempt whose outcome was unknown: its
            // recipients pull it from their inboxes.
            let recipients = self.current_recipients(txn, conv).await?;
            return Ok(Some(Planned::Stored {
                conversation: conv,
                message_id,
                sent_at,
                found_before: false,
                recipients,
                message: row,
            }));
        }

        let conv = msg.conversation;
        let head = match st.heads.get(&conv) {
            Some(h) => *h,
            None => self.read_head(txn, conv).await?,
        };

        // Recipients first (reads only), so a message that does not fit
        // leaves no writes behind.
        let (recipients, effect) = match conv {
            ConversationId::Direct {
                user_low,
                user_high,
            } => {
                if msg.membership.is_some() {
                    return Err(StoreError::Invalid(
                        "membership change in a direct conversation",
                    ));
                }
                let r = if user_low == user_high {
                    vec![user_low]
                } else {
                    // Decided here, with conflict reads: a block that
                    // commits while this transaction is open aborts it, so
                    // no message slips past a block, whatever a cache said.
                    let blocked = match st.blocks.get(&(user_low, user_high)) {
                        Some(&blocked) => blocked,
                        None => blocked_either(txn, user_low, user_high).await?,
                    };
                    if blocked {
                        return Err(StoreError::Blocked);
                    }
                    vec![user_low, user_high]
                };
                (r, None)
            }
            ConversationId::Group(g) => self.plan_group(txn, st, g, msg).await?,
        };
        let estimate = msg.body.len() + msg.client_msg_id.len() + 160 + recipients.len() * 180;
        let fits = st.order as usize + recipients.len() <= usize::from(u16::MAX)
            && st.bytes + estimate <= self.config.max_txn_bytes;
        if !fits && index > 0 && st.bytes > 0 {
            return Ok(None);
        }
        if st.order as usize + recipients.len() > usize::from(u16::MAX) {
            return Err(StoreError::Invalid("too many recipients for one message"));
        }

        let message_id = ids.next_id(head);
        st.heads.insert(conv, message_id);
        st.seen.insert(seen_key, index);
        if let (ConversationId::Group(g), Some(effect)) = (conv, &effect) {
            write_group_effect(txn, st, g, message_id, effect);
        }

        let membership = msg.membership.as_ref().map(|m| pb::MembershipChange {
            user_ids: match m {
                MembershipChange::Create { members, .. } => members.clone(),
                MembershipChange::Add { users, .. } | MembershipChange::Remove { users } => {
                    users.clone()
                }
            },
        });
        let row = pb::Message {
            conversation: Some(conv.into()),
            message_id,
            sender: msg.sender,
            client_msg_id: msg.client_msg_id.clone(),
            sent_at: msg.sent_at,
            kind: msg.kind as i32,
            body: msg.body.clone(),
            membership,
        };
        let encoded = Bytes::from(row.encode_to_vec());
        txn.set(&keys::message(conv, message_id), &encoded);
        let first_order = st.order as u16;
        txn.set_versionstamped_value(
            &dedup_key,
            &dedup_value(conv, message_id, msg.sent_at, first_order),
        );
        // A single writer's head is its last message (see `writer`): one
        // write fewer per message.
        if !self.config.single_writer {
            txn.set(&keys::head(conv), &message_id.to_be_bytes());
        }
        if head == 0 {
            if let ConversationId::Direct {
                user_low,
                user_high,
            } = conv
            {
                txn.set(&keys::direct(user_low, user_high), b"");
                txn.set(&keys::direct(user_high, user_low), b"");
            }
        }
        let inbox_val = inbox_value(conv, message_id, msg.sent_at);
        let mut before = Vec::new();
        if !st.tails.is_empty() {
            before.reserve_exact(recipients.len());
        }
        for &r in &recipients {
            let order = st.order as u16;
            txn.set_versionstamped_key(&keys::inbox_stamped(r, order), &inbox_val);
            if !st.tails.is_empty() {
                // Whatever the conversation, an entry written here is the
                // newest for a later message of this attempt.
                before.push(
                    st.tails
                        .get_mut(&r)
                        .map(|tail| std::mem::replace(tail, Tail::Ours(order))),
                );
            }
            if r != msg.sender && msg.kind == MessageKind::Text && !online(r) {
                // Blind writes: marking a user never conflicts (push.rs);
                // membership events are not pushed.
                txn.set_versionstamped_key(&keys::push_stamped(r, order), &inbox_val);
                txn.set(&keys::push_due(msg.sent_at, r), b"");
            }
            st.order += 1;
        }
        st.bytes += estimate;
        Ok(Some(Planned::Fresh {
            message_id,
            first_order,
            recipients,
            before,
            message: encoded,
        }))
    }

    /// The head of `conv` before this attempt. A single writer knows the
    /// heads it planned, and finds others from the conversation's last
    /// message, without a conflict range (see [`super::writer`]).
    async fn read_head(&self, txn: &K::Txn, conv: ConversationId) -> Result<u64, StoreError> {
        if !self.config.single_writer {
            return Ok(match txn.get(&keys::head(conv), false).await? {
                Some(v) => be_u64(&v, "heads")?,
                None => 0,
            });
        }
        if let Some(h) = self.heads.get(conv) {
            return Ok(h);
        }
        // A direct conversation's first message writes its `direct` keys in
        // the same transaction, and nothing removes them: without them it
        // has no message. The point read is answered by the engine's
        // filters; the reverse range read it spares a new conversation
        // walks every level of the store.
        if let ConversationId::Direct {
            user_low,
            user_high,
        } = conv
        {
            if txn
                .get(&keys::direct(user_low, user_high), true)
                .await?
                .is_none()
            {
                return Ok(0);
            }
        }
        last_message_id(txn, conv).await
    }

    /// Recipients as membership stands now (for messages recovered after an
    /// unknown commit result).
    async fn current_recipients(
        &self,
        txn: &K::Txn,
        conv: ConversationId,
    ) -> Result<Vec<u64>, StoreError> {
        Ok(match conv {
            ConversationId::Direct {
                user_low,
                user_high,
            } if user_low == user_high => vec![user_low],
            ConversationId::Direct {
                user_low,
                user_high,
            } => vec![user_low, user_high],
            ConversationId::Group(g) => members_in(txn, g, true)
                .await?
                .into_iter()
                .map(|(u, _)| u)
                .collect(),
        })
    }
}

/// The id of `conv`'s last stored message (`0`: none), read without a
/// conflict range.
pub(crate) async fn last_message_id<T: KvTxn>(
    txn: &T,
    conv: ConversationId,
) -> Result<u64, StoreError> {
    let prefix = keys::messages_of(conv);
    let end = keys::prefix_end(&prefix);
    let last = txn
        .get_range(
            RangeRead::new(&prefix, &end)
                .limit(1)
                .reverse(true)
                .snapshot(true),
        )
        .await?;
    match last.first() {
        None => Ok(0),
        Some(kv) => Ok(pb::Message::decode(kv.value.as_ref())
            .map_err(|_| StoreError::Corrupt("messages"))?
            .message_id),
    }
}

/// What other nodes must hear of an attempt: every user with a new inbox
/// entry (also those of a message an earlier attempt may have stored), with
/// the order of that entry in this commit, and every group whose membership
/// changes.
fn feed_event(slots: &[Slot], planned: &[Planned]) -> crate::chat::FeedEvent {
    let mut event = crate::chat::FeedEvent::default();
    for (slot, p) in slots.iter().zip(planned) {
        match p {
            Planned::Fresh {
                recipients,
                first_order,
                ..
            } => {
                event.users.extend_from_slice(recipients);
                let first = u32::from(*first_order);
                event.orders.extend((first..).take(recipients.len()));
            }
            // Its entries are an earlier commit's: through this one's end.
            Planned::Stored {
                found_before: false,
                recipients,
                ..
            } => {
                event.users.extend_from_slice(recipients);
                event
                    .orders
                    .extend(std::iter::repeat_n(u32::from(u16::MAX), recipients.len()));
            }
            _ => continue,
        }
        if let (ConversationId::Group(g), Some(_)) = (slot.msg.conversation, &slot.msg.membership) {
            event.groups.push(g);
        }
    }
    event
}

/// The users of each direct conversation among the messages still to plan
/// (a membership change there fails planning, so it reads nothing).
pub(super) fn direct_pairs(slots: &[Slot]) -> impl Iterator<Item = (u64, u64)> + '_ {
    slots
        .iter()
        .filter(|s| s.outcome.is_none() && s.msg.membership.is_none())
        .filter_map(|s| match s.msg.conversation {
            ConversationId::Direct {
                user_low,
                user_high,
            } => Some((user_low, user_high)),
            ConversationId::Group(_) => None,
        })
}

/// The groups among the messages still to plan, each once.
pub(super) fn groups_to_plan(slots: &[Slot]) -> Vec<u64> {
    let mut groups: Vec<u64> = slots
        .iter()
        .filter(|s| s.outcome.is_none())
        .filter_map(|s| match s.msg.conversation {
            ConversationId::Group(g) => Some(g),
            ConversationId::Direct { .. } => None,
        })
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Whether either user blocked the other, for every direct pair of the
/// messages still to plan (a self-conversation has no block), read in `txn`
/// with conflicts, each pair once.
async fn read_blocks<T: KvTxn>(
    txn: &T,
    slots: &[Slot],
) -> Result<HashMap<(u64, u64), bool>, KvError> {
    let mut pairs: Vec<(u64, u64)> = direct_pairs(slots).filter(|(a, b)| a != b).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let blocked =
        futures::future::try_join_all(pairs.iter().map(|&(a, b)| blocked_either(txn, a, b)))
            .await?;
    Ok(pairs.into_iter().zip(blocked).collect())
}

/// What planning would read of each conversation still to plan, read at
/// once with conflicts, for an engine where each read is a round trip: its
/// head, and a group's record and members. A value that does not decode is
/// left out, so planning reads it again and fails only its own messages.
async fn read_conversations<T: KvTxn>(txn: &T, slots: &[Slot]) -> Result<AttemptState, KvError> {
    let mut convs: Vec<ConversationId> = slots
        .iter()
        .filter(|s| s.outcome.is_none())
        .map(|s| s.msg.conversation)
        .collect();
    convs.sort_unstable();
    convs.dedup();
    let groups = groups_to_plan(slots);
    let head_keys: Vec<Vec<u8>> = convs.iter().map(|&c| keys::head(c)).collect();
    let group_keys: Vec<Vec<u8>> = groups.iter().map(|&g| keys::group(g)).collect();
    let (heads, records, members) = futures::future::join3(
        futures::future::try_join_all(head_keys.iter().map(|k| txn.get(k, false))),
        futures::future::try_join_all(group_keys.iter().map(|k| txn.get(k, false))),
        futures::future::join_all(groups.iter().map(|&g| members_in(txn, g, false))),
    )
    .await;
    let mut st = AttemptState::default();
    for (conv, head) in convs.into_iter().zip(heads?) {
        match head {
            None => {
                st.heads.insert(conv, 0);
            }
            Some(v) => {
                if let Ok(h) = be_u64(&v, "heads") {
                    st.heads.insert(conv, h);
                }
            }
        }
    }
    for ((&group, record), members) in groups.iter().zip(records?).zip(members) {
        match record
            .map(|v| decode::<GroupRecord>(&v, "groups"))
            .transpose()
        {
            Ok(record) => {
                st.group_records.insert(group, record);
            }
            Err(_) => continue,
        }
        match members {
            Ok(m) => {
                let roles = m.into_iter().map(|(u, r)| (u, r.role())).collect();
                st.members.insert(group, roles);
            }
            Err(StoreError::Kv(e)) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(st)
}

/// Whether either user blocked the other, read in `txn` with conflicts.
pub(super) async fn blocked_either<T: crate::kv::KvTxn>(
    txn: &T,
    a: u64,
    b: u64,
) -> Result<bool, KvError> {
    let (ab, ba) = (keys::block(a, b), keys::block(b, a));
    let (ab, ba) = futures::future::try_join(txn.get(&ab, false), txn.get(&ba, false)).await?;
    Ok(ab.is_some() || ba.is_some())
}
