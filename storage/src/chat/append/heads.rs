//! Conversation heads kept in the memory of a single writer.
//!
//! A message's id must be greater than its conversation's head. With one
//! writer per store (the embedded engine's appender), the head it planned
//! last is at least the stored one, so it need not read the head again, nor
//! take a read conflict on it: that conflict would otherwise make a batch
//! planned while the one before it commits fail whenever the two share a
//! conversation. Heads read from storage are snapshot reads then.
//!
//! A failed commit drops every cached head (its planned heads may not have
//! committed) and moves the generation on, so a plan made before that is
//! made again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hanmadi_proto::ConversationId;
use parking_lot::Mutex;

/// Most heads kept; past it the cache starts again empty (each entry is a
/// few dozen bytes, and a miss costs one read).
const MAX_HEADS: usize = 1 << 20;

/// The heads a single writer planned or read.
#[derive(Debug, Default)]
pub(crate) struct HeadCache {
    heads: Mutex<HashMap<ConversationId, u64>>,
    generation: AtomicU64,
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
}
