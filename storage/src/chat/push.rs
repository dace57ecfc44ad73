//! Push notifications for offline recipients: device registrations, muted
//! conversations, and the durable state of the webhook worker.
//!
//! The append marks each recipient it found offline with a push-pending
//! entry `(user, cursor)`, valued like the inbox entry of that cursor, and
//! an index entry `push_due/(sent_at, user)`. Both are blind writes, so
//! marking never conflicts. Reading the inbox (sync, ack) clears the
//! pending entries it covered ([`ChatStore::clear_push_pending`]).
//!
//! A worker pages the due part of the index ([`ChatStore::due_pushes`]),
//! never the whole keyspace, and claims each user in one serializable
//! transaction ([`ChatStore::claim_push`]): it reads the user's pending
//! entries (a conflict read), builds the request, and stores it as the
//! user's job with a lease (`not_before`) and a `push_retry` entry at the
//! lease's end. Two workers claiming one user conflict, and the loser finds
//! the job leased, so each pending user is handled by exactly one live
//! worker; a worker that dies leaves the retry entry, and whoever finds it
//! due after the lease re-sends the stored request with the same
//! idempotency key. [`ChatStore::finish_push`] records the outcome: the job
//! and the pending entries it covered are cleared only after the gateway
//! accepted it (or it was dropped).

use std::collections::HashSet;

use bytes::Bytes;
use hanmadi_proto::ConversationId;
use prost::Message as _;

use super::append::parse_inbox_value;
use super::inbox::Cursor;
use super::keys::{self, CURSOR_LEN};
use super::records::{PushDeviceRecord, PushJobRecord, PushPlatform, UserRecord};
use super::{decode, transact, ChatStore, StoreError};
use crate::kv::{Kv, KvError, KvTxn, RangeRead};

/// Most devices of one user with a push registration.
pub const MAX_PUSH_DEVICES: usize = 10;
/// Longest push token (a Web Push subscription is the largest), in bytes.
pub const MAX_PUSH_TOKEN: usize = 4096;
/// Longest device id, in bytes (the same bound as `Hello`'s).
pub const MAX_DEVICE_ID: usize = 64;
/// Pending entries one claim reads; more wait for the next push.
const MAX_PENDING_READ: usize = 1000;

/// A device's push registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushDevice {
    /// The device, as it names itself in `Hello`.
    pub device_id: String,
    /// Which service the token belongs to.
    pub platform: PushPlatform,
    /// The service's token.
    pub token: String,
    /// When it was registered or last changed (ms since the Unix epoch).
    pub updated_at: u64,
}

/// Which index a due entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DueKind {
    /// `push_due`: new pending messages, due a push delay after `at`.
    Pending,
    /// `push_retry`: a job's retry or the end of its lease, due at `at`.
    Scheduled,
}

/// A user whose push may be due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DuePush {
    /// The user.
    pub user: u64,
    /// The time in the index entry (ms since the Unix epoch).
    pub at: u64,
    /// Which index.
    pub kind: DueKind,
}

/// Where a scan of the push index starts, per index (ms since the Unix
/// epoch; `0`: from the first entry).
///
/// Entries are cleared as users are handled, and an LSM engine keeps a
/// cleared key as a tombstone until compaction: a scan that always began
/// at the front would step over every entry handled lately. A worker
/// starts where the previous scan found its first entry, and now and then
/// from the front, for entries written behind it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DueFrom {
    /// In `push_due`.
    pub pending: u64,
    /// In `push_retry`.
    pub scheduled: u64,
}

/// What a push tells: everything pending for one user.
#[derive(Clone, Debug)]
pub struct PushContent {
    /// The recipient.
    pub user: u64,
    /// Messages pending for them, muted conversations left out.
    pub unseen: u64,
    /// The newest one's conversation.
    pub conversation: ConversationId,
    /// The newest one's id.
    pub message_id: u64,
    /// The newest one's sender.
    pub sender: u64,
    /// The sender's display name, or username when they set none.
    pub sender_name: String,
    /// The newest one's text.
    pub body: String,
    /// When the newest one was sent (ms since the Unix epoch).
    pub sent_at: u64,
    /// The newest pending cursor the push covers.
    pub cursor: Cursor,
    /// The recipient's push registrations.
    pub devices: Vec<PushDevice>,
}

/// Builds a request body from what is pending and its idempotency key;
/// `None` when no request can reach the user (nothing is sent).
pub type BuildPush<'a> = &'a (dyn Fn(&PushContent, &str) -> Option<Bytes> + Sync);

/// Who claims and how.
#[derive(Clone, Copy)]
pub struct PushClaim<'a> {
    /// The claiming worker (random per process).
    pub owner: u64,
    /// The time now (ms since the Unix epoch).
    pub now: u64,
    /// How long new messages wait before a push (ms).
    pub delay_ms: u64,
    /// How long the claim excludes other workers (ms): longer than one
    /// request may take.
    pub lease_ms: u64,
    /// Builds the request of a new job.
    pub build: BuildPush<'a>,
}

impl std::fmt::Debug for PushClaim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushClaim")
            .field("owner", &self.owner)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// A request to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushJob {
    /// The recipient.
    pub user: u64,
    /// The same on every attempt of this request.
    pub idempotency_key: String,
    /// The request body.
    pub body: Bytes,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// Send this, then call [`ChatStore::finish_push`].
    Send(PushJob),
    /// Nothing to send now: not due yet, already read, muted, or held by
    /// another worker.
    Nothing,
    /// The builder found no way to reach the user; what was pending is
    /// cleared.
    Unreachable,
}

/// How an attempt ended, for [`ChatStore::finish_push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Accepted by the gateway, or given up: the job and what it covered
    /// are cleared.
    Done,
    /// Try again at this time (ms since the Unix epoch).
    RetryAt(u64),
}

/// One pending entry as stored.
struct Pending {
    cursor: [u8; CURSOR_LEN],
    conversation: ConversationId,
    message_id: u64,
    sent_at: u64,
}

fn parse_pending(key: &[u8], value: &[u8]) -> Result<Pending, StoreError> {
    let corrupt = || StoreError::Corrupt("push_pending");
    let cursor = keys::cursor_of_inbox_key(key).ok_or_else(corrupt)?;
    let (conversation, message_id, sent_at) = parse_inbox_value(value).ok_or_else(corrupt)?;
    Ok(Pending {
        cursor,
        conversation,
        message_id,
        sent_at,
    })
}

fn conversation_of(kind: u16, a: u64, b: u64) -> Option<ConversationId> {
    match kind {
        0 => Some(ConversationId::Direct {
            user_low: a,
            user_high: b,
        }),
        1 => Some(ConversationId::Group(a)),
        _ => None,
    }
}

fn job_cursor(job: &PushJobRecord) -> Result<[u8; CURSOR_LEN], StoreError> {
    job.cursor
        .as_ref()
        .try_into()
        .map_err(|_| StoreError::Corrupt("push_jobs"))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The idempotency key of a push: the user and the newest cursor it
/// covers, so it is the same whoever builds it and however often.
pub fn idempotency_key(user: u64, cursor: &Cursor) -> String {
    format!("{user}-{}", hex(cursor.as_bytes()))
}

/// Ends a job: clears it, its schedule entry and the pending entries it
/// covered, and indexes whatever arrived after them (their own index
/// entries were dropped while the job held the user) at `now` at the
/// earliest: a user just pushed waits a whole delay for the next push, and
/// the entry lands ahead of where scans start.
async fn close_job<T: KvTxn>(
    txn: &mut T,
    user: u64,
    job: &PushJobRecord,
    now: u64,
) -> Result<(), StoreError> {
    let cursor = job_cursor(job)?;
    let prefix = keys::push_of(user);
    let through = keys::key_after(&keys::push_at(user, &cursor));
    txn.clear(&keys::push_job(user));
    txn.clear(&keys::push_retry(job.not_before, user));
    txn.clear_range(&prefix, &through);
    let end = keys::prefix_end(&prefix);
    let next = txn
        .get_range(RangeRead::new(&through, &end).limit(1).snapshot(true))
        .await?;
    if let Some(kv) = next.into_iter().next() {
        let p = parse_pending(&kv.key, &kv.value)?;
        txn.set(&keys::push_due(p.sent_at.max(now), user), b"");
    }
    Ok(())
}

impl<K: Kv> ChatStore<K> {
    /// Registers (or replaces) the push token of one of `user`'s devices.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] for an empty or oversized device id or
    /// token, or past [`MAX_PUSH_DEVICES`]; a storage failure.
    pub async fn put_push_device(
        &self,
        user: u64,
        device_id: &str,
        platform: PushPlatform,
        token: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if device_id.is_empty() || device_id.len() > MAX_DEVICE_ID {
            return Err(StoreError::Invalid("device_id must be 1 to 64 bytes"));
        }
        if token.is_empty() || token.len() > MAX_PUSH_TOKEN {
            return Err(StoreError::Invalid("token must be 1 to 4096 bytes"));
        }
        let key = keys::push_device(user, device_id);
        let prefix = keys::push_devices(user);
        let end = keys::prefix_end(&prefix);
        let value = PushDeviceRecord {
            platform: platform as i32,
            token: token.to_owned(),
            updated_at: now_ms,
        }
        .encode_to_vec();
        transact!(&self.kv, |txn| {
            let existing = txn
                .get_range(RangeRead::new(&prefix, &end).limit(MAX_PUSH_DEVICES + 1))
                .await?;
            let replaces = existing.iter().any(|kv| kv.key.as_ref() == key.as_slice());
            if !replaces && existing.len() >= MAX_PUSH_DEVICES {
                return Err(StoreError::Invalid(
                    "at most 10 devices per user may register for push",
                ));
            }
            txn.set(&key, &value);
            Ok(())
        })
    }

    /// Removes a device's push registration; whether there was one.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn delete_push_device(&self, user: u64, device_id: &str) -> Result<bool, StoreError> {
        let key = keys::push_device(user, device_id);
        transact!(&self.kv, |txn| {
            let found = txn.get(&key, false).await?.is_some();
            txn.clear(&key);
            Ok(found)
        })
    }

    /// `user`'s push registrations, by device id.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt record.
    pub async fn push_devices(&self, user: u64) -> Result<Vec<PushDevice>, StoreError> {
        self.scan(&keys::push_devices(user))
            .await?
            .iter()
            .map(|kv| parse_device(&kv.key, &kv.value))
            .collect()
    }

    /// The devices of `user` that acknowledged deliveries, with the last
    /// cursor each acknowledged.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt record.
    pub async fn delivered_devices(&self, user: u64) -> Result<Vec<(String, Cursor)>, StoreError> {
        let corrupt = || StoreError::Corrupt("delivered");
        self.scan(&keys::delivered_of(user))
            .await?
            .iter()
            .map(|kv| {
                let (_, _, device) = foundationdb_tuple::unpack::<(u16, u64, String)>(&kv.key)
                    .map_err(|_| corrupt())?;
                let cursor = Cursor::parse(&kv.value)
                    .map_err(|_| corrupt())?
                    .ok_or_else(corrupt)?;
                Ok((device, cursor))
            })
            .collect()
    }

    /// Mutes (or unmutes) a conversation for `user`: its messages no longer
    /// count towards push notifications.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn set_muted(
        &self,
        user: u64,
        conversation: ConversationId,
        muted: bool,
    ) -> Result<(), StoreError> {
        let key = keys::mute(user, conversation);
        transact!(&self.kv, |txn| {
            if muted {
                txn.set(&key, b"");
            } else {
                txn.clear(&key);
            }
            Ok(())
        })
    }

    /// The conversations `user` muted.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt key.
    pub async fn muted(&self, user: u64) -> Result<Vec<ConversationId>, StoreError> {
        transact!(&self.kv, |txn| Ok(read_mutes(&txn, user)
            .await?
            .into_iter()
            .collect()))
    }

    /// Clears `user`'s push-pending entries up to `through`: the user has
    /// read them (sync) or a device acknowledged them. A snapshot read
    /// first, so a reader with nothing pending writes nothing.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn clear_push_pending(&self, user: u64, through: Cursor) -> Result<(), StoreError> {
        transact!(&self.kv, |txn| {
            clear_pending_through(&mut txn, user, through).await?;
            Ok(())
        })
    }

    /// Index entries due at `now`: new pending messages older than
    /// `delay_ms`, and scheduled retries and lapsed leases; at most `limit`
    /// of each, oldest first, from the times in `from` on. A snapshot read
    /// of the due part of the index only.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt key.
    pub async fn due_pushes(
        &self,
        from: DueFrom,
        now: u64,
        delay_ms: u64,
        limit: usize,
    ) -> Result<Vec<DuePush>, StoreError> {
        let limit = limit.max(1);
        let pending_begin = keys::push_due(from.pending, 0);
        let pending_end = keys::push_due(now.saturating_sub(delay_ms).saturating_add(1), 0);
        let retry_begin = keys::push_retry(from.scheduled, 0);
        let retry_end = keys::push_retry(now.saturating_add(1), 0);
        transact!(&self.kv, |txn| {
            let mut out = Vec::new();
            for (begin, end, kind) in [
                (&retry_begin, &retry_end, DueKind::Scheduled),
                (&pending_begin, &pending_end, DueKind::Pending),
            ] {
                let rows = txn
                    .get_range(RangeRead::new(begin, end).limit(limit).snapshot(true))
                    .await?;
                for kv in rows {
                    let (_, at, user) = foundationdb_tuple::unpack::<(u16, u64, u64)>(&kv.key)
                        .map_err(|_| StoreError::Corrupt("push index"))?;
                    out.push(DuePush { user, at, kind });
                }
            }
            Ok(out)
        })
    }

    /// Claims a due user for `claim.owner`: takes over their job when its
    /// lease or retry time has passed, or builds a new one from what is
    /// pending, in one transaction (see the module docs).
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt record.
    pub async fn claim_push(
        &self,
        due: DuePush,
        claim: PushClaim<'_>,
    ) -> Result<Claimed, StoreError> {
        let user = due.user;
        let index_key = match due.kind {
            DueKind::Pending => keys::push_due(due.at, user),
            DueKind::Scheduled => keys::push_retry(due.at, user),
        };
        let job_key = keys::push_job(user);
        let prefix = keys::push_of(user);
        let lease_end = claim.now.saturating_add(claim.lease_ms);
        transact!(&self.kv, |txn| {
            if txn.get(&index_key, false).await?.is_none() {
                return Ok(Claimed::Nothing);
            }
            if let Some(v) = txn.get(&job_key, false).await? {
                let mut job = decode::<PushJobRecord>(&v, "push_jobs")?;
                if job.not_before > claim.now {
                    // Held or waiting for its retry: whatever is pending
                    // besides is indexed again when the job ends.
                    if due.kind == DueKind::Pending || due.at != job.not_before {
                        txn.clear(&index_key);
                    }
                    return Ok(Claimed::Nothing);
                }
                txn.clear(&index_key);
                let cursor = job_cursor(&job)?;
                let through = keys::key_after(&keys::push_at(user, &cursor));
                let left = txn
                    .get_range(RangeRead::new(&prefix, &through).limit(1))
                    .await?;
                if left.is_empty() {
                    // Read meanwhile: nothing left to tell.
                    close_job(&mut txn, user, &job, claim.now).await?;
                    return Ok(Claimed::Nothing);
                }
                txn.clear(&keys::push_retry(job.not_before, user));
                job.attempts += 1;
                job.owner = claim.owner;
                job.not_before = lease_end;
                txn.set(&keys::push_retry(lease_end, user), b"");
                txn.set(&job_key, &job.encode_to_vec());
                return Ok(Claimed::Send(PushJob {
                    user,
                    idempotency_key: job.idempotency_key,
                    body: job.body,
                    attempt: job.attempts,
                }));
            }
            if due.kind == DueKind::Scheduled {
                // The job it scheduled is gone.
                txn.clear(&index_key);
                return Ok(Claimed::Nothing);
            }
            let end = keys::prefix_end(&prefix);
            let rows = txn
                .get_range(RangeRead::new(&prefix, &end).limit(MAX_PENDING_READ))
                .await?;
            let Some(last) = rows.last() else {
                txn.clear(&index_key);
                return Ok(Claimed::Nothing);
            };
            let through = keys::key_after(&last.key);
            let pending = rows
                .into_iter()
                .map(|kv| parse_pending(&kv.key, &kv.value))
                .collect::<Result<Vec<_>, _>>()?;
            let muted = read_mutes(&txn, user).await?;
            let live: Vec<&Pending> = pending
                .iter()
                .filter(|p| !muted.contains(&p.conversation))
                .collect();
            let (Some(first_at), Some(newest)) =
                (live.iter().map(|p| p.sent_at).min(), live.last())
            else {
                // Only muted conversations: nothing to tell, ever.
                for p in &pending {
                    txn.clear(&keys::push_due(p.sent_at, user));
                }
                txn.clear(&index_key);
                txn.clear_range(&prefix, &through);
                return Ok(Claimed::Nothing);
            };
            if first_at.saturating_add(claim.delay_ms) > claim.now {
                // An index entry older than what is pending now (the rest
                // was read): wait for the oldest pending message's turn.
                if due.at != first_at {
                    txn.clear(&index_key);
                    txn.set(&keys::push_due(first_at, user), b"");
                }
                return Ok(Claimed::Nothing);
            }
            let row = txn
                .get(&keys::message(newest.conversation, newest.message_id), true)
                .await?
                .ok_or(StoreError::Corrupt("push entry without its message"))?;
            let message = decode::<hanmadi_proto::pb::Message>(&row, "messages")?;
            let sender_name = match txn.get(&keys::user(message.sender), true).await? {
                Some(v) => {
                    let u = decode::<UserRecord>(&v, "users")?;
                    if u.display_name.is_empty() {
                        u.username
                    } else {
                        u.display_name
                    }
                }
                None => String::new(),
            };
            let devices_prefix = keys::push_devices(user);
            let devices = txn
                .get_range(
                    RangeRead::new(&devices_prefix, &keys::prefix_end(&devices_prefix))
                        .snapshot(true),
                )
                .await?
                .iter()
                .map(|kv| parse_device(&kv.key, &kv.value))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(covered) = pending.last().map(|p| Cursor(p.cursor)) else {
                return Ok(Claimed::Nothing);
            };
            let content = PushContent {
                user,
                unseen: live.len() as u64,
                conversation: newest.conversation,
                message_id: newest.message_id,
                sender: message.sender,
                sender_name,
                body: message.body,
                sent_at: message.sent_at,
                cursor: covered,
                devices,
            };
            let key = idempotency_key(user, &covered);
            for p in &pending {
                txn.clear(&keys::push_due(p.sent_at, user));
            }
            txn.clear(&index_key);
            let Some(body) = (claim.build)(&content, &key) else {
                txn.clear_range(&prefix, &through);
                return Ok(Claimed::Unreachable);
            };
            let job = PushJobRecord {
                idempotency_key: key.clone(),
                cursor: Bytes::copy_from_slice(covered.as_bytes()),
                body: body.clone(),
                attempts: 1,
                owner: claim.owner,
                not_before: lease_end,
            };
            txn.set(&job_key, &job.encode_to_vec());
            txn.set(&keys::push_retry(lease_end, user), b"");
            Ok(Claimed::Send(PushJob {
                user,
                idempotency_key: key,
                body,
                attempt: 1,
            }))
        })
    }

    /// Records how an attempt of `user`'s job `idempotency_key` ended, at
    /// `now`. A job that another worker replaced or ended meanwhile is left
    /// alone.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt record.
    pub async fn finish_push(
        &self,
        user: u64,
        idempotency_key: &str,
        outcome: PushOutcome,
        now: u64,
    ) -> Result<(), StoreError> {
        let job_key = keys::push_job(user);
        transact!(&self.kv, |txn| {
            let Some(v) = txn.get(&job_key, false).await? else {
                return Ok(());
            };
            let mut job = decode::<PushJobRecord>(&v, "push_jobs")?;
            if job.idempotency_key != idempotency_key {
                return Ok(());
            }
            match outcome {
                PushOutcome::Done => close_job(&mut txn, user, &job, now).await?,
                PushOutcome::RetryAt(at) => {
                    txn.clear(&keys::push_retry(job.not_before, user));
                    job.not_before = at;
                    txn.set(&keys::push_retry(at, user), b"");
                    txn.set(&job_key, &job.encode_to_vec());
                }
            }
            Ok(())
        })
    }
}

fn parse_device(key: &[u8], value: &[u8]) -> Result<PushDevice, StoreError> {
    let (_, _, device_id) = foundationdb_tuple::unpack::<(u16, u64, String)>(key)
        .map_err(|_| StoreError::Corrupt("push_devices"))?;
    let record = decode::<PushDeviceRecord>(value, "push_devices")?;
    Ok(PushDevice {
        device_id,
        platform: PushPlatform::try_from(record.platform).unwrap_or(PushPlatform::Other),
        token: record.token,
        updated_at: record.updated_at,
    })
}

async fn read_mutes<T: KvTxn>(txn: &T, user: u64) -> Result<HashSet<ConversationId>, StoreError> {
    let prefix = keys::mutes(user);
    let rows = txn
        .get_range(RangeRead::new(&prefix, &keys::prefix_end(&prefix)).snapshot(true))
        .await?;
    rows.iter()
        .map(|kv| {
            foundationdb_tuple::unpack::<(u16, u64, u16, u64, u64)>(&kv.key)
                .ok()
                .and_then(|(_, _, kind, a, b)| conversation_of(kind, a, b))
                .ok_or(StoreError::Corrupt("mutes"))
        })
        .collect()
}

/// Clears `user`'s push-pending entries up to `through` in `txn`, after a
/// snapshot read, so a user with nothing pending writes nothing.
pub(crate) async fn clear_pending_through<T: KvTxn>(
    txn: &mut T,
    user: u64,
    through: Cursor,
) -> Result<(), KvError> {
    let prefix = keys::push_of(user);
    let end = keys::key_after(&keys::push_at(user, &through.0));
    let any = txn
        .get_range(RangeRead::new(&prefix, &end).limit(1).snapshot(true))
        .await?;
    if !any.is_empty() {
        txn.clear_range(&prefix, &end);
    }
    Ok(())
}
