//! Appending messages: the one write path of the message sync queue
//! (DESIGN §3.4). Each message's row, dedup entry, head, inbox entries and
//! push-pending marks commit together or not at all; a batch shares as few
//! transactions as the engine's shape allows.

use std::collections::HashMap;

use bytes::Bytes;
use hanmadi_proto::pb::{self, MessageKind};
use hanmadi_proto::ConversationId;
use prost::Message;

use super::groups::members_in;
use super::records::{GroupRecord, MemberRecord, Role};
use super::{be_u64, decode, keys, ChatStore, StoreError};
use crate::kv::{Kv, KvError, KvTxn, Retry, Versionstamp, VERSIONSTAMP_LEN};

/// Hands out message ids (the router's generator, DESIGN §3.3).
pub trait IdSource: Send + Sync {
    /// An id for a new message in a conversation whose last message id is
    /// `head` (`0`: none yet). It must be greater than `head` and than every
    /// id returned before.
    fn next_id(&self, head: u64) -> u64;
}

/// A change of group membership, committed with the system message that
/// announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Creates the group named by the conversation; the sender becomes its
    /// owner and `members` its members.
    Create {
        /// Group name.
        name: String,
        /// Initial members besides the owner.
        members: Vec<u64>,
        /// Size cap.
        max_members: u32,
    },
    /// Adds users with a role.
    Add {
        /// Users to add (members already in are left as they are).
        users: Vec<u64>,
        /// Their role.
        role: Role,
    },
    /// Removes users (a user leaving removes themself).
    Remove {
        /// Users to remove.
        users: Vec<u64>,
    },
}

/// A message to append.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Where it goes.
    pub conversation: ConversationId,
    /// The authenticated sender.
    pub sender: u64,
    /// The sender's idempotency key (1–64 bytes).
    pub client_msg_id: Bytes,
    /// Milliseconds since the Unix epoch.
    pub sent_at: u64,
    /// Text, or a system event.
    pub kind: MessageKind,
    /// The text.
    pub body: String,
    /// For a system message, the membership change it records.
    pub membership: Option<MembershipChange>,
}

/// The outcome of one appended message.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its id.
    pub message_id: u64,
    /// When it was sent (the first time, for a duplicate).
    pub sent_at: u64,
    /// It was stored before this call (a retried send): nothing new was
    /// written and nothing is to be delivered.
    pub duplicate: bool,
    /// Users with a new inbox entry, in the order of their cursors.
    pub recipients: Vec<u64>,
    /// The commit's versionstamp and the first recipient's order in it:
    /// recipient `i`'s cursor is `(stamp, first_order + i)`. `None` when the
    /// message was found committed on a retry after an unknown result: its
    /// recipients must then read their inboxes to get it.
    pub cursors: Option<(Versionstamp, u16)>,
    /// The stored message, encoded once (`hanmadi.v1.Message`).
    pub message: Bytes,
}

impl Appended {
    /// The inbox cursor of `recipients[i]`, when known.
    pub fn cursor(&self, i: usize) -> Option<super::Cursor> {
        let (stamp, first) = self.cursors?;
        let order = first.checked_add(u16::try_from(i).ok()?)?;
        Some(super::Cursor::new(stamp, order))
    }
}

/// What an attempt decided for one message, before its commit.
#[derive(Debug)]
enum Planned {
    Fresh {
        message_id: u64,
        first_order: u16,
        recipients: Vec<u64>,
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

#[derive(Debug)]
struct Slot {
    msg: NewMessage,
    /// An attempt that wrote this message may have committed.
    maybe_ours: bool,
    outcome: Option<Result<Appended, StoreError>>,
}

const DEDUP_STAMP_AT: usize = 17 + 8 + 8;
const DEDUP_VALUE_LEN: usize = DEDUP_STAMP_AT + VERSIONSTAMP_LEN + 2;

fn put_conv(out: &mut Vec<u8>, c: ConversationId) {
    let (kind, a, b) = keys::conv_elems(c);
    out.push(kind as u8);
    out.extend_from_slice(&a.to_be_bytes());
    out.extend_from_slice(&b.to_be_bytes());
}

pub(crate) fn parse_conv(b: &[u8]) -> Option<ConversationId> {
    let a = u64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
    let c = u64::from_be_bytes(b.get(9..17)?.try_into().ok()?);
    match b.first()? {
        0 => Some(ConversationId::Direct {
            user_low: a,
            user_high: c,
        }),
        1 => Some(ConversationId::Group(a)),
        _ => None,
    }
}

/// Inbox values: conversation (17 bytes), message id, sent_at.
pub(crate) fn inbox_value(c: ConversationId, id: u64, sent_at: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(33);
    put_conv(&mut v, c);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&sent_at.to_be_bytes());
    v
}

pub(crate) fn parse_inbox_value(v: &[u8]) -> Option<(ConversationId, u64, u64)> {
    let c = parse_conv(v)?;
    let id = u64::from_be_bytes(v.get(17..25)?.try_into().ok()?);
    let sent_at = u64::from_be_bytes(v.get(25..33)?.try_into().ok()?);
    Some((c, id, sent_at))
}

/// Dedup values: the inbox value's fields, then the commit's versionstamp
/// and first inbox order, completed at commit (versionstamped-value format).
fn dedup_value(c: ConversationId, id: u64, sent_at: u64, first_order: u16) -> Vec<u8> {
    let mut v = inbox_value(c, id, sent_at);
    v.resize(DEDUP_STAMP_AT + VERSIONSTAMP_LEN, 0);
    v.extend_from_slice(&first_order.to_be_bytes());
    v.extend_from_slice(&(DEDUP_STAMP_AT as u32).to_le_bytes());
    v
}

fn parse_dedup_value(v: &[u8]) -> Option<(ConversationId, u64, u64)> {
    if v.len() != DEDUP_VALUE_LEN {
        return None;
    }
    parse_inbox_value(v)
}

/// Per-attempt caches: what this transaction already read or wrote.
#[derive(Default)]
struct AttemptState {
    heads: HashMap<ConversationId, u64>,
    members: HashMap<u64, Vec<(u64, Role)>>,
    group_records: HashMap<u64, Option<GroupRecord>>,
    seen: HashMap<(u64, Bytes), usize>,
    order: u32,
    bytes: usize,
}

impl<K: Kv> ChatStore<K> {
    /// The message `sender` already stored under `client_msg_id`, if any:
    /// `(conversation, message_id, sent_at)`.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt entry.
    pub async fn find_sent(
        &self,
        sender: u64,
        client_msg_id: &[u8],
    ) -> Result<Option<(ConversationId, u64, u64)>, StoreError> {
        let key = keys::dedup(sender, client_msg_id);
        super::transact!(&self.kv, |txn| match txn.get(&key, true).await? {
            Some(v) => Ok(Some(
                parse_dedup_value(&v).ok_or(StoreError::Corrupt("dedup"))?,
            )),
            None => Ok(None),
        })
    }

    /// Appends a batch of messages. Each message commits atomically (row,
    /// dedup entry, head, inbox entries, push-pending marks); a message whose
    /// `(sender, client_msg_id)` is stored already, or appears earlier in the
    /// batch, is reported with the first copy's id and stored once.
    ///
    /// `online` says which users have a live connection: the others get a
    /// push-pending mark. Outcomes come back in the batch's order.
    pub async fn append(
        &self,
        batch: Vec<NewMessage>,
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
    ) -> Vec<Result<Appended, StoreError>> {
        let n = batch.len();
        let mut slots: Vec<Slot> = batch
            .into_iter()
            .map(|msg| Slot {
                outcome: validate(&msg).err().map(Err),
                msg,
                maybe_ours: false,
            })
            .collect();
        if self.config.split_by_conversation {
            // Each conversation's slice runs in its own transactions, all at
            // once: a conflict on one never holds up the others.
            let mut by_conv: HashMap<ConversationId, Vec<usize>> = HashMap::new();
            for (i, s) in slots.iter().enumerate() {
                by_conv.entry(s.msg.conversation).or_default().push(i);
            }
            let mut groups: Vec<(Vec<usize>, Vec<Slot>)> = Vec::with_capacity(by_conv.len());
            let mut taken: Vec<Option<Slot>> = slots.drain(..).map(Some).collect();
            for (_, idx) in by_conv {
                let part = idx.iter().filter_map(|&i| taken[i].take()).collect();
                groups.push((idx, part));
            }
            let runs = groups.into_iter().map(|(idx, mut part)| async move {
                self.append_run(&mut part, ids, online).await;
                (idx, part)
            });
            let mut out: Vec<Option<Result<Appended, StoreError>>> = (0..n).map(|_| None).collect();
            for (idx, part) in futures::future::join_all(runs).await {
                for (i, s) in idx.into_iter().zip(part) {
                    out[i] = s.outcome;
                }
            }
            out.into_iter()
                .map(|o| o.unwrap_or(Err(StoreError::Invalid("message was not processed"))))
                .collect()
        } else {
            self.append_run(&mut slots, ids, online).await;
            slots
                .into_iter()
                .map(|s| {
                    s.outcome
                        .unwrap_or(Err(StoreError::Invalid("message was not processed")))
                })
                .collect()
        }
    }

    /// Appends `slots` in order, in as many transactions as the limits need.
    async fn append_run(
        &self,
        slots: &mut [Slot],
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
    ) {
        let mut start = 0;
        while start < slots.len() {
            let mut retry = Retry::default();
            loop {
                let attempt = self.append_attempt(&mut slots[start..], ids, online).await;
                let (end, result) = match attempt {
                    Ok((end, planned, txn)) => match txn.commit().await {
                        Ok(stamp) => {
                            finish(&mut slots[start..start + end], planned, Some(stamp));
                            start += end;
                            break;
                        }
                        Err(e) => (end, (e, planned)),
                    },
                    Err((end, e)) => (end, (e, Vec::new())),
                };
                let (err, planned) = result;
                if err.maybe_committed() {
                    for (s, p) in slots[start..start + end].iter_mut().zip(&planned) {
                        if matches!(p, Planned::Fresh { .. }) {
                            s.maybe_ours = true;
                        }
                    }
                }
                if let Err(e) = retry.backoff(err).await {
                    // Each message gets its own copy of the error, keeping
                    // whether trying again later may help (retries ran out
                    // on a conflict or an unknown result) or not.
                    let msg = e.to_string();
                    let retryable = e.is_retryable();
                    let end = end.max(1);
                    for s in slots[start..start + end].iter_mut() {
                        if s.outcome.is_none() {
                            let cause = std::io::Error::other(msg.clone());
                            s.outcome = Some(Err(StoreError::Kv(if retryable {
                                KvError::Unavailable(Box::new(cause))
                            } else {
                                KvError::engine(cause)
                            })));
                        }
                    }
                    start += end;
                    break;
                }
            }
        }
    }

    /// One attempt: plans and writes as many of `slots` as fit one
    /// transaction. Returns how many it took, what it planned, and the
    /// transaction to commit.
    async fn append_attempt(
        &self,
        slots: &mut [Slot],
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<(usize, Vec<Planned>, K::Txn), (usize, KvError)> {
        let mut txn = self.kv.begin().map_err(|e| (0, e))?;
        let mut st = AttemptState::default();
        let mut planned: Vec<Planned> = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            if slot.outcome.is_some() {
                planned.push(Planned::CopyOf(usize::MAX));
                continue;
            }
            match self.plan_one(&mut txn, &mut st, i, slot, ids, online).await {
                Ok(Some(p)) => planned.push(p),
                // Full: the rest goes to the next transaction.
                Ok(None) => break,
                Err(StoreError::Kv(e)) => return Err((planned.len().max(1), e)),
                Err(e) => planned.push(Planned::Failed(e)),
            }
        }
        let end = planned.len();
        Ok((end, planned, txn))
    }

    /// Plans one message inside the attempt's transaction; `None` when it
    /// does not fit and another message came first.
    async fn plan_one(
        &self,
        txn: &mut K::Txn,
        st: &mut AttemptState,
        index: usize,
        slot: &Slot,
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Option<Planned>, StoreError> {
        let msg = &slot.msg;
        let seen_key = (msg.sender, msg.client_msg_id.clone());
        if let Some(&first) = st.seen.get(&seen_key) {
            return Ok(Some(Planned::CopyOf(first)));
        }
        let dedup_key = keys::dedup(msg.sender, &msg.client_msg_id);
        if let Some(v) = txn.get(&dedup_key, false).await? {
            let (conv, message_id, sent_at) =
                parse_dedup_value(&v).ok_or(StoreError::Corrupt("dedup"))?;
            st.seen.insert(seen_key, index);
            if !slot.maybe_ours {
                return Ok(Some(Planned::Stored {
                    conversation: conv,
                    message_id,
                    sent_at,
                    found_before: true,
                    recipients: Vec::new(),
                    message: Bytes::new(),
                }));
            }
            // Committed by an earlier attempt whose outcome was unknown: its
            // recipients pull it from their inboxes.
            let recipients = self.current_recipients(txn, conv).await?;
            let row = txn
                .get(&keys::message(conv, message_id), true)
                .await?
                .unwrap_or_default();
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
            None => match txn.get(&keys::head(conv), false).await? {
                Some(v) => be_u64(&v, "heads")?,
                None => 0,
            },
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
            &keys::dedup(msg.sender, &msg.client_msg_id),
            &dedup_value(conv, message_id, msg.sent_at, first_order),
        );
        txn.set(&keys::head(conv), &message_id.to_be_bytes());
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
        for &r in &recipients {
            let order = st.order as u16;
            txn.set_versionstamped_key(&keys::inbox_stamped(r, order), &inbox_val);
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
            message: encoded,
        }))
    }

    /// Recipients of a group message and the membership effect to write:
    /// members after the change, plus those it removes (so they learn of it).
    async fn plan_group(
        &self,
        txn: &K::Txn,
        st: &mut AttemptState,
        group: u64,
        msg: &NewMessage,
    ) -> Result<(Vec<u64>, Option<GroupEffect>), StoreError> {
        let record = match st.group_records.get(&group) {
            Some(r) => r.clone(),
            None => {
                let r = match txn.get(&keys::group(group), false).await? {
                    Some(v) => Some(decode::<GroupRecord>(&v, "groups")?),
                    None => None,
                };
                st.group_records.insert(group, r.clone());
                r
            }
        };
        if let Some(MembershipChange::Create {
            name,
            members,
            max_members,
        }) = &msg.membership
        {
            if record.is_some() {
                return Err(StoreError::Invalid("group exists"));
            }
            let mut all = vec![msg.sender];
            for &m in members {
                if !all.contains(&m) {
                    all.push(m);
                }
            }
            if all.len() > *max_members as usize {
                return Err(StoreError::GroupFull { max: *max_members });
            }
            let add: Vec<(u64, Role)> = all
                .iter()
                .map(|&u| {
                    (
                        u,
                        if u == msg.sender {
                            Role::Owner
                        } else {
                            Role::Member
                        },
                    )
                })
                .collect();
            let effect = GroupEffect {
                record: GroupRecord {
                    name: name.clone(),
                    owner: msg.sender,
                    created_at: msg.sent_at,
                    member_count: all.len() as u32,
                    max_members: *max_members,
                },
                members_after: add.clone(),
                add,
                remove: Vec::new(),
            };
            return Ok((all, Some(effect)));
        }
        let Some(mut record) = record else {
            return Err(StoreError::NotFound("group"));
        };
        let with_roles = match st.members.get(&group) {
            Some(m) => m.clone(),
            None => {
                let m: Vec<(u64, Role)> = members_in(txn, group, false)
                    .await?
                    .into_iter()
                    .map(|(u, r)| (u, r.role()))
                    .collect();
                st.members.insert(group, m.clone());
                m
            }
        };
        // Decided here, inside the transaction that reads the membership, so
        // no change of membership can slip between the check and the write.
        let Some(sender_role) = with_roles
            .iter()
            .find(|(u, _)| *u == msg.sender)
            .map(|(_, r)| *r)
        else {
            return Err(StoreError::NotMember);
        };
        let manages = matches!(sender_role, Role::Owner | Role::Admin);
        let current: Vec<u64> = with_roles.iter().map(|(u, _)| *u).collect();
        match &msg.membership {
            None => Ok((current, None)),
            Some(MembershipChange::Add { .. }) if !manages => Err(StoreError::PermissionDenied),
            Some(MembershipChange::Remove { users })
                if users.iter().any(|&u| {
                    u != msg.sender
                        && (!manages || with_roles.iter().any(|&(m, r)| m == u && r == Role::Owner))
                }) =>
            {
                Err(StoreError::PermissionDenied)
            }
            Some(MembershipChange::Add { users, role }) => {
                let mut after = current.clone();
                let mut add = Vec::new();
                for &u in users {
                    if !after.contains(&u) {
                        after.push(u);
                        add.push((u, *role));
                    }
                }
                if after.len() > record.max_members as usize {
                    return Err(StoreError::GroupFull {
                        max: record.max_members,
                    });
                }
                record.member_count = after.len() as u32;
                let mut members_after = with_roles;
                members_after.extend(add.iter().copied());
                Ok((
                    after,
                    Some(GroupEffect {
                        record,
                        add,
                        remove: Vec::new(),
                        members_after,
                    }),
                ))
            }
            Some(MembershipChange::Remove { users }) => {
                let remove: Vec<u64> = users
                    .iter()
                    .copied()
                    .filter(|u| current.contains(u))
                    .collect();
                let members_after: Vec<(u64, Role)> = with_roles
                    .into_iter()
                    .filter(|(u, _)| !remove.contains(u))
                    .collect();
                record.member_count = members_after.len() as u32;
                Ok((
                    current,
                    Some(GroupEffect {
                        record,
                        add: Vec::new(),
                        remove,
                        members_after,
                    }),
                ))
            }
            Some(MembershipChange::Create { .. }) => unreachable!("handled above"),
        }
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

fn write_group_effect<T: KvTxn>(
    txn: &mut T,
    st: &mut AttemptState,
    group: u64,
    message_id: u64,
    effect: &GroupEffect,
) {
    txn.set(&keys::group(group), &effect.record.encode_to_vec());
    for &(u, role) in &effect.add {
        let rec = MemberRecord {
            role: role as i32,
            joined_at: message_id,
        }
        .encode_to_vec();
        txn.set(&keys::member(group, u), &rec);
        txn.set(&keys::user_group(u, group), &rec);
    }
    for &u in &effect.remove {
        txn.clear(&keys::member(group, u));
        txn.clear(&keys::user_group(u, group));
    }
    st.group_records.insert(group, Some(effect.record.clone()));
    st.members.insert(group, effect.members_after.clone());
}

/// The writes of a membership change.
#[derive(Clone, Debug)]
struct GroupEffect {
    record: GroupRecord,
    add: Vec<(u64, Role)>,
    remove: Vec<u64>,
    members_after: Vec<(u64, Role)>,
}

fn validate(msg: &NewMessage) -> Result<(), StoreError> {
    if msg.client_msg_id.is_empty()
        || msg.client_msg_id.len() > hanmadi_proto::MAX_CLIENT_MSG_ID_LEN
    {
        return Err(StoreError::Invalid("client_msg_id must be 1 to 64 bytes"));
    }
    if msg.sender == 0 {
        return Err(StoreError::Invalid("sender is 0"));
    }
    Ok(())
}

/// Records each planned message's outcome after its transaction committed
/// with `stamp`.
fn finish(slots: &mut [Slot], planned: Vec<Planned>, stamp: Option<Versionstamp>) {
    for (i, p) in planned.into_iter().enumerate() {
        let conversation = slots[i].msg.conversation;
        let outcome = match p {
            Planned::Fresh {
                message_id,
                first_order,
                recipients,
                message,
            } => Ok(Appended {
                conversation,
                message_id,
                sent_at: slots[i].msg.sent_at,
                duplicate: false,
                recipients,
                cursors: stamp.map(|s| (s, first_order)),
                message,
            }),
            Planned::Stored {
                conversation: stored_in,
                message_id,
                sent_at,
                found_before,
                recipients,
                message,
            } => Ok(Appended {
                // A reused id answers with where the first message went.
                conversation: stored_in,
                message_id,
                sent_at,
                duplicate: found_before,
                recipients,
                cursors: None,
                message,
            }),
            Planned::CopyOf(first) => match slots.get(first).and_then(|s| s.outcome.as_ref()) {
                Some(Ok(a)) => Ok(Appended {
                    conversation: a.conversation,
                    message_id: a.message_id,
                    sent_at: a.sent_at,
                    duplicate: true,
                    recipients: Vec::new(),
                    cursors: None,
                    message: a.message.clone(),
                }),
                Some(Err(_)) => Err(StoreError::Invalid(
                    "an earlier copy of this message failed",
                )),
                // Already decided before the attempt (invalid input).
                None => continue,
            },
            Planned::Failed(e) => Err(e),
        };
        if slots[i].outcome.is_none() {
            slots[i].outcome = Some(outcome);
        }
    }
}
