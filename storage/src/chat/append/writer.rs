//! What a single writer (the embedded engine's one appender) keeps in
//! memory instead of reading it back, with a conflict, in every append: the
//! conversation heads, and what the batches planned but not yet committed
//! may change.
//!
//! ## Heads
//!
//! A message's id must be greater than its conversation's head. With one
//! writer per store (the embedded engine's appender), the head it planned
//! last is at least the stored one, so it need not read the head again, nor
//! take a read conflict on it: that conflict would otherwise make a batch
//! planned while the one before it commits fail whenever the two share a
//! conversation. A single writer keeps no head key either (one write fewer
//! per message): a head it does not know is its conversation's last
//! message, read without a conflict range.
//!
//! A failed commit drops every cached head (its planned heads may not have
//! committed) and moves the generation on, so a plan made before that is
//! made again.
//!
//! ## Ids in commit order
//!
//! Ids are drawn while a batch is planned, and the next batch is planned
//! while the one before commits. If that one has to plan again (a failed
//! commit, a stale plan), both draw ids at once and the later batch may hold
//! ids below the earlier one's: committed after it, they would run backwards
//! in a conversation. So the cache keeps the highest id committed, and a
//! plan holding an id at or below it is made again before it commits
//! ([`HeadCache::is_current`]), at a moment when no other batch plans.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hanmadi_proto::ConversationId;
use parking_lot::Mutex;

use super::plan::Planned;
use super::NewMessage;

/// Most heads kept; past it the cache starts again empty (each entry is a
/// few dozen bytes, and a miss costs one read).
const MAX_HEADS: usize = 1 << 20;

/// The heads a single writer planned or read.
#[derive(Debug, Default)]
pub(crate) struct HeadCache {
    heads: Mutex<HashMap<ConversationId, u64>>,
    generation: AtomicU64,
    /// The highest id committed so far.
    committed: AtomicU64,
}

impl HeadCache {
    /// The head of `conv` as this writer knows it.
    pub(crate) fn get(&self, conv: ConversationId) -> Option<u64> {
        self.heads.lock().get(&conv).copied()
    }

    /// Records heads an attempt planned, or read.
    pub(crate) fn extend(&self, planned: impl IntoIterator<Item = (ConversationId, u64)>) {
        let mut heads = self.heads.lock();
        if heads.len() >= MAX_HEADS {
            heads.clear();
        }
        for (conv, head) in planned {
            let h = heads.entry(conv).or_insert(0);
            *h = (*h).max(head);
        }
    }

    /// Forgets every head, after a commit that failed.
    pub(crate) fn clear(&self) {
        let mut heads = self.heads.lock();
        heads.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes each time the cache is dropped.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records the ids of a committed attempt.
    pub(super) fn committed(&self, planned: &[Planned]) {
        if let Some(max) = fresh_ids(planned).max() {
            self.committed.fetch_max(max, Ordering::AcqRel);
        }
    }

    /// Whether a plan made under `generation` may still commit: no commit
    /// failed since (its heads may rest on one), and each of its new ids
    /// lies above every id committed so far.
    pub(super) fn is_current(&self, generation: u64, planned: &[Planned]) -> bool {
        generation == self.generation()
            && fresh_ids(planned)
                .min()
                .is_none_or(|min| min > self.committed.load(Ordering::Acquire))
    }
}

/// The ids a plan drew for new messages.
fn fresh_ids(planned: &[Planned]) -> impl Iterator<Item = u64> + '_ {
    planned.iter().filter_map(|p| match p {
        Planned::Fresh { message_id, .. } => Some(*message_id),
        _ => None,
    })
}

/// What the batches planned but not yet committed may change, so that a
/// batch planned meanwhile, whose reads are snapshots, can tell whether it
/// read something they change.
///
/// ## Batches in flight
///
/// A single writer's append reads only what appends write: dedup entries,
/// group records and members. So a batch planned while earlier ones commit
/// can read snapshots, without conflict ranges, unless it holds a
/// `(sender, client_msg_id)` one of them holds, or a message to a group
/// whose membership one of them changes: then it is planned only when it
/// commits, after them.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    batches: Mutex<Vec<(u64, Pending)>>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    sends: HashSet<(u64, Bytes)>,
    groups: HashSet<u64>,
}

impl InFlight {
    /// Records a batch as planned and not yet committed; returns whether it
    /// reads something an earlier such batch may change, and the guard that
    /// ends the record.
    pub(crate) fn enter<'a>(
        self: &Arc<Self>,
        batch: impl Iterator<Item = &'a NewMessage> + Clone,
    ) -> (bool, InFlightGuard) {
        let mut pending = Pending::default();
        for m in batch.clone() {
            pending.sends.insert((m.sender, m.client_msg_id.clone()));
            if let (ConversationId::Group(g), Some(_)) = (m.conversation, &m.membership) {
                pending.groups.insert(g);
            }
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let mut batches = self.batches.lock();
        let overlaps = batches.iter().any(|(_, p)| {
            batch.clone().any(|m| {
                p.sends.contains(&(m.sender, m.client_msg_id.clone()))
                    || matches!(m.conversation, ConversationId::Group(g) if p.groups.contains(&g))
            })
        });
        batches.push((token, pending));
        (
            overlaps,
            InFlightGuard {
                in_flight: Arc::clone(self),
                token,
            },
        )
    }
}

/// Ends a batch's record in [`InFlight`] when dropped (committed, failed or
/// abandoned).
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    in_flight: Arc<InFlight>,
    token: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.in_flight
            .batches
            .lock()
            .retain(|(t, _)| *t != self.token);
    }
}
