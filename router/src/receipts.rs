//! Delivery acks and read marks, coalesced in memory and written in
//! background batches.
//!
//! Clients send an `Ack` after every few deliveries and a `Read` whenever
//! the user looks at a conversation; each would be a durable transaction of
//! its own (on FoundationDB, a commit per frame). Both only move forward, so
//! only the newest value per key matters: [`Receipts`] keeps the highest
//! cursor per `(user, device)` and the highest read message per
//! `(user, conversation)` and a background task writes what has gathered,
//! [`MAX_RECEIPTS_PER_TXN`] keys per transaction. A flood of acks from one
//! device costs one map entry, not one commit each.
//!
//! The map is bounded ([`ReceiptsConfig::max_pending`]): when it is full, a
//! receipt for a key not pending yet waits until the writer has taken the
//! batch (back-pressure on that connection alone; it never grows without
//! bound). A receipt is written within [`ReceiptsConfig::linger`] plus one
//! commit; a crash loses at most the ones gathered since, which only means a
//! device's recorded progress is a little older (its next `Ack` moves it on)
//! and a push may go out for a message it had received.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hanmadi_proto::ConversationId;
use hanmadi_storage::chat::{Cursor, MAX_RECEIPTS_PER_TXN};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Sizes of the receipt writer.
#[derive(Clone, Copy, Debug)]
pub struct ReceiptsConfig {
    /// Distinct keys (devices plus conversations) waiting for the writer
    /// before new ones wait too.
    pub max_pending: usize,
    /// How long the writer lets receipts gather after the first one.
    pub linger: Duration,
}

impl Default for ReceiptsConfig {
    fn default() -> Self {
        Self {
            max_pending: 65_536,
            linger: Duration::from_millis(20),
        }
    }
}

/// One receipt.
#[derive(Clone, Copy, Debug)]
enum Receipt<'a> {
    /// Everything up to the cursor reached the user's device.
    Delivered(u64, &'a str, Cursor),
    /// The user read the conversation up to the message.
    Read(u64, ConversationId, u64),
}

/// What waits for the writer: the newest value per key.
#[derive(Debug, Default)]
struct Pending {
    /// Per user, the newest cursor of each device (a user has a handful).
    delivered: HashMap<u64, Vec<(Box<str>, Cursor)>>,
    read: HashMap<(u64, ConversationId), u64>,
    /// Keys held: devices plus read marks.
    keys: usize,
}

impl Pending {
    /// Merges `receipt` into its pending key, or adds the key when `room`.
    /// `false`: the key is new and there is no room.
    fn offer(&mut self, receipt: Receipt<'_>, room: bool) -> bool {
        match receipt {
            Receipt::Delivered(user, device, cursor) => {
                if let Some(devices) = self.delivered.get_mut(&user) {
                    if let Some((_, c)) = devices.iter_mut().find(|(name, _)| &**name == device) {
                        *c = (*c).max(cursor);
                        return true;
                    }
                }
                if !room {
                    return false;
                }
                self.delivered
                    .entry(user)
                    .or_default()
                    .push((device.into(), cursor));
            }
            Receipt::Read(user, conversation, id) => {
                if let Some(m) = self.read.get_mut(&(user, conversation)) {
                    *m = (*m).max(id);
                    return true;
                }
                if !room {
                    return false;
                }
                self.read.insert((user, conversation), id);
            }
        }
        self.keys += 1;
        true
    }
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer when the first receipt of a batch arrives.
    wake: Notify,
    /// Wakes receipts that found the map full.
    room: Notify,
    /// Set when the router goes: the writer flushes what is left and ends.
    closed: AtomicBool,
}

/// The router's receipt queue (see the module documentation).
#[derive(Debug)]
pub struct Receipts {
    shared: Arc<Shared>,
    max_pending: usize,
}

impl Receipts {
    /// A queue over `store` and its writer task, which ends once the queue
    /// is dropped and what it held is written.
    pub fn start<K: Kv>(store: ChatStore<K>, config: ReceiptsConfig) -> (Self, JoinHandle<()>) {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(write_loop(store, Arc::clone(&shared), config.linger));
        let receipts = Self {
            shared,
            max_pending: config.max_pending.max(1),
        };
        (receipts, task)
    }

    /// Records that `device` of `user` has received everything up to
    /// `cursor` (an older cursor than one already pending is ignored).
    pub async fn delivered(&self, user: u64, device: &str, cursor: Cursor) {
        self.offer(Receipt::Delivered(user, device, cursor)).await;
    }

    /// Records that `user` has read `conversation` up to `message_id`.
    pub async fn read(&self, user: u64, conversation: ConversationId, message_id: u64) {
        self.offer(Receipt::Read(user, conversation, message_id))
            .await;
    }

    /// Adds `receipt`, waiting for the writer to take a batch when the map
    /// is full and its key is not pending yet.
    async fn offer(&self, receipt: Receipt<'_>) {
        loop {
            // Registered before the check, so a batch taken in between still
            // wakes this receipt.
            let wait = self.shared.room.notified();
            {
                let mut pending = self.shared.pending.lock();
                let first = pending.keys == 0;
                let room = pending.keys < self.max_pending;
                if pending.offer(receipt, room) {
                    if first {
                        self.shared.wake.notify_one();
                    }
                    return;
                }
            }
            wait.await;
        }
    }
}

impl Drop for Receipts {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// The writer: waits for a first receipt, lets more gather for `linger`,
/// takes the whole map and writes it in transactions of at most
/// [`MAX_RECEIPTS_PER_TXN`] keys.
async fn write_loop<K: Kv>(store: ChatStore<K>, shared: Arc<Shared>, linger: Duration) {
    loop {
        let closed = shared.closed.load(Ordering::Acquire);
        let empty = shared.pending.lock().keys == 0;
        if empty {
            if closed {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        if !closed {
            tokio::time::sleep(linger).await;
        }
        let batch = std::mem::take(&mut *shared.pending.lock());
        shared.room.notify_waiters();
        write(&store, batch).await;
    }
}

async fn write<K: Kv>(store: &ChatStore<K>, batch: Pending) {
    let delivered: Vec<(u64, &str, Cursor)> = batch
        .delivered
        .iter()
        .flat_map(|(&user, devices)| {
            devices
                .iter()
                .map(move |(device, cursor)| (user, &**device, *cursor))
        })
        .collect();
    let read: Vec<(u64, ConversationId, u64)> = batch
        .read
        .iter()
        .map(|(&(user, conversation), &id)| (user, conversation, id))
        .collect();
    // Transactions of up to MAX_RECEIPTS_PER_TXN keys, acks and read marks
    // together.
    let (mut delivered, mut read) = (delivered.as_slice(), read.as_slice());
    while !delivered.is_empty() || !read.is_empty() {
        let (acks, rest) = delivered.split_at(delivered.len().min(MAX_RECEIPTS_PER_TXN));
        delivered = rest;
        let (marks, rest) = read.split_at(read.len().min(MAX_RECEIPTS_PER_TXN - acks.len()));
        read = rest;
        if let Err(e) = store.record_receipts(acks, marks).await {
            // A device's next ack, a user's next read, carries the same
            // progress or more.
            tracing::warn!(error = %e, receipts = acks.len() + marks.len(), "recording receipts failed");
        }
    }
}
