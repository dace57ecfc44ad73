//! Appending messages: the one write path of the message sync queue
//! (DESIGN §3.4). Each message's row, dedup entry, head, inbox entries and
//! push-pending marks commit together or not at all; a batch shares as few
//! transactions as the engine's shape allows.
//!
//! - [`plan`]: one attempt's dedup checks, ids, recipients and writes.
//! - [`group`]: group recipients and membership changes.
//! - [`writer`]: what a single writer keeps in memory (heads, batches in
//!   flight).
//! - [`values`]: the layout of inbox and dedup values.

mod chain;
mod group;
mod plan;
mod values;
pub(crate) mod writer;

use std::collections::HashMap;

use bytes::Bytes;
use hanmadi_proto::pb::MessageKind;
use hanmadi_proto::ConversationId;

use super::records::Role;
use super::{keys, ChatStore, StoreError};
use crate::kv::{Kv, KvError, KvTxn, Retry, Versionstamp};
pub(crate) use chain::Chaining;
pub use chain::{Before, CHAINED_MEMBERS_MAX};
pub(crate) use plan::last_message_id;
use plan::{Attempt, Planned};
use values::parse_dedup_value;
pub(crate) use values::parse_inbox_value;

/// A batch planned by [`ChatStore::prepare_append`], for
/// [`ChatStore::commit_append`]. Dropping it abandons the plan.
pub struct PreparedAppend<K: Kv> {
    slots: Vec<Slot>,
    /// Marks the batch in flight until it has committed (single writer).
    _in_flight: Option<writer::InFlightGuard>,
    /// The first attempt, with the head cache's generation it was planned
    /// under.
    first: Option<(u64, Attempt<K>)>,
}

impl<K: Kv> std::fmt::Debug for PreparedAppend<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedAppend")
            .field("messages", &self.slots.len())
            .field("planned", &self.first.is_some())
            .finish()
    }
}

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
    /// Each recipient's inbox entry right before the new one, as the commit
    /// proved it (see [`Before`]); empty when it proved none.
    pub before: Vec<Before>,
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

    /// The inbox entry right before `recipients[i]`'s new one.
    pub fn before(&self, i: usize) -> Before {
        self.before.get(i).copied().unwrap_or(Before::Unknown)
    }
}

#[derive(Debug)]
struct Slot {
    msg: NewMessage,
    /// An attempt that wrote this message may have committed.
    maybe_ours: bool,
    /// Recipients planned by every attempt that may have committed it: if
    /// the append ends in an error, they are told to read their inboxes.
    notify: Vec<u64>,
    outcome: Option<Result<Appended, StoreError>>,
}

impl Slot {
    /// Remembers that an attempt planning `recipients` for this message may
    /// have committed.
    fn maybe_committed(&mut self, recipients: &[u64]) {
        self.maybe_ours = true;
        for &u in recipients {
            if !self.notify.contains(&u) {
                self.notify.push(u);
            }
        }
    }
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
        let prepared = self.prepare_append(batch, ids, online).await;
        self.commit_append(prepared, ids, online).await
    }

    /// The first half of [`ChatStore::append`]: plans the batch (dedup
    /// reads, ids, recipients, encoding) in a transaction, without
    /// committing it. A single writer plans its next batch this way while
    /// the one before it commits; committing in the order planned keeps
    /// every conversation's and every user's order.
    ///
    /// On a cluster (`split_by_conversation`) the planning happens inside
    /// [`ChatStore::commit_append`], per conversation.
    pub async fn prepare_append(
        &self,
        batch: Vec<NewMessage>,
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
    ) -> PreparedAppend<K> {
        let mut slots: Vec<Slot> = batch
            .into_iter()
            .map(|msg| Slot {
                outcome: validate(&msg).err().map(Err),
                msg,
                maybe_ours: false,
                notify: Vec::new(),
            })
            .collect();
        let (overlaps, in_flight) = if self.config.single_writer {
            let (overlaps, guard) = self.in_flight.enter(slots.iter().map(|s| &s.msg));
            (overlaps, Some(guard))
        } else {
            (false, None)
        };
        // A batch that reads what an earlier one in flight may change is
        // planned when it commits, after that one.
        let first = if self.config.split_by_conversation || slots.is_empty() || overlaps {
            None
        } else {
            let generation = self.heads.generation();
            Some((
                generation,
                self.append_attempt(&mut slots, ids, online, false).await,
            ))
        };
        PreparedAppend {
            slots,
            _in_flight: in_flight,
            first,
        }
    }

    /// Plans `prepared` again if its plan went stale while the batch before
    /// it committed (see [`writer`]). A single writer calls this once the
    /// batch before has committed and before the next one is planned, so
    /// the ids drawn now lie above every id committed and below every id
    /// the next batch draws.
    pub async fn refresh_append(
        &self,
        prepared: &mut PreparedAppend<K>,
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
    ) {
        let stale = match &prepared.first {
            Some((generation, Ok((_, planned, _)))) => !self.heads.is_current(*generation, planned),
            _ => false,
        };
        if stale {
            // Its transaction is dropped uncommitted; the ids it drew are
            // skipped, never reused.
            prepared.first = None;
            let generation = self.heads.generation();
            prepared.first = Some((
                generation,
                self.append_attempt(&mut prepared.slots, ids, online, false)
                    .await,
            ));
        }
    }

    /// The second half of [`ChatStore::append`]: commits a planned batch
    /// (planning again what the first transaction did not hold, and
    /// whatever a retry needs). Outcomes come back in the batch's order.
    pub async fn commit_append(
        &self,
        prepared: PreparedAppend<K>,
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
    ) -> Vec<Result<Appended, StoreError>> {
        let PreparedAppend {
            mut slots,
            _in_flight: in_flight,
            first,
        } = prepared;
        let n = slots.len();
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
                let chain = match (&self.chaining, part.first()) {
                    (Some(chaining), Some(s)) => chaining.allows(s.msg.conversation),
                    _ => false,
                };
                self.append_run(&mut part, ids, online, None, chain).await;
                (idx, part)
            });
            let mut out: Vec<Option<Result<Appended, StoreError>>> = (0..n).map(|_| None).collect();
            for (idx, part) in futures::future::join_all(runs).await {
                for (i, s) in idx.into_iter().zip(part) {
                    if let (Some(recent), Some(Ok(a))) = (&self.recent, &s.outcome) {
                        recent.insert(a.conversation, a.message_id, &a.message);
                    }
                    out[i] = s.outcome;
                }
            }
            out.into_iter()
                .map(|o| o.unwrap_or(Err(StoreError::Invalid("message was not processed"))))
                .collect()
        } else {
            // A plan made before the head cache was dropped (a failed
            // commit) may rest on heads that never committed, and one whose
            // ids were drawn beside an earlier batch's may hold ids below
            // it: plan again ([`ChatStore::refresh_append`] does it earlier,
            // while no other batch plans).
            let first = first.filter(|(generation, attempt)| match attempt {
                Ok((_, planned, _)) => self.heads.is_current(*generation, planned),
                Err(_) => *generation == self.heads.generation(),
            });
            self.append_run(&mut slots, ids, online, first.map(|(_, a)| a), false)
                .await;
            // Committed (or failed): later batches need not wait for it.
            drop(in_flight);
            slots
                .into_iter()
                .map(|s| {
                    s.outcome
                        .unwrap_or(Err(StoreError::Invalid("message was not processed")))
                })
                .collect()
        }
    }

    /// Appends `slots` in order, in as many transactions as the limits need;
    /// `chain`: one conversation's slots whose attempts read the
    /// recipients' newest inbox entries until one conflicts (see [`chain`]).
    async fn append_run(
        &self,
        slots: &mut [Slot],
        ids: &dyn IdSource,
        online: &(dyn Fn(u64) -> bool + Sync),
        mut first: Option<Attempt<K>>,
        mut chain: bool,
    ) {
        let mut start = 0;
        while start < slots.len() {
            let mut retry = Retry::new(self.config.append_attempts);
            loop {
                let attempt = match first.take() {
                    Some(planned) => planned,
                    None => {
                        self.append_attempt(&mut slots[start..], ids, online, chain)
                            .await
                    }
                };
                let (end, result) = match attempt {
                    Ok((end, planned, txn)) => match txn.commit().await {
                        Ok(stamp) => {
                            if self.config.single_writer {
                                self.heads.committed(&planned);
                            }
                            finish(&mut slots[start..start + end], planned, Some(stamp));
                            start += end;
                            break;
                        }
                        Err(e) => (end, (e, planned)),
                    },
                    Err((end, e)) => (end, (e, Vec::new())),
                };
                let (err, planned) = result;
                tracing::debug!(error = %err, messages = end, "an append attempt failed");
                if chain && matches!(err, KvError::Conflict) {
                    // The inbox reads may be what conflicted: the retry
                    // and the conversation's next appends go without them.
                    chain = false;
                    if let (Some(chaining), Some(s)) = (&self.chaining, slots.first()) {
                        chaining.conflicted(s.msg.conversation);
                    }
                }
                // Heads this attempt planned may not have committed.
                self.heads.clear();
                if err.maybe_committed() {
                    for (s, p) in slots[start..start + end].iter_mut().zip(&planned) {
                        match p {
                            Planned::Fresh { recipients, .. }
                            | Planned::Stored {
                                found_before: false,
                                recipients,
                                ..
                            } => s.maybe_committed(recipients),
                            _ => {}
                        }
                    }
                }
                if let Err(e) = retry.backoff(err).await {
                    // Each message gets its own copy of the error, keeping
                    // whether trying again later may help (retries ran out
                    // on a conflict or an unknown result, or the cluster
                    // did not answer in time) or not.
                    let msg = e.to_string();
                    let retryable = e.may_succeed_later();
                    let end = end.max(1);
                    for s in slots[start..start + end].iter_mut() {
                        if s.outcome.is_some() {
                            continue;
                        }
                        let cause = std::io::Error::other(msg.clone());
                        let kv = if retryable {
                            KvError::Unavailable(Box::new(cause))
                        } else {
                            KvError::engine(cause)
                        };
                        // A message that may be stored must reach whoever
                        // it was planned for: they pull, and a retry of the
                        // send is answered with the stored message.
                        s.outcome = Some(Err(if s.maybe_ours {
                            StoreError::MaybeStored {
                                source: kv,
                                recipients: std::mem::take(&mut s.notify),
                            }
                        } else {
                            StoreError::Kv(kv)
                        }));
                    }
                    start += end;
                    break;
                }
            }
        }
    }
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
                before,
                message,
            } => Ok(Appended {
                conversation,
                message_id,
                sent_at: slots[i].msg.sent_at,
                duplicate: false,
                recipients,
                cursors: stamp.map(|s| (s, first_order)),
                before: match stamp {
                    Some(stamp) if before.iter().any(Option::is_some) => before
                        .into_iter()
                        .map(|t| t.map_or(Before::Unknown, |t| t.settle(stamp)))
                        .collect(),
                    _ => Vec::new(),
                },
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
                before: Vec::new(),
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
                    before: Vec::new(),
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
