//! [`Seam`]: joins `Sync` pages and live `Deliver`s into one inbox stream
//! with no gap, no duplicate and no reordering. Pure: no I/O, no clock.
//!
//! # The seam rule
//!
//! After every (re)connect the client syncs from the last cursor it handed
//! out, while the new connection may already push live `Deliver`s.
//!
//! 1. While syncing, live entries are held back (buffered, in arrival
//!    order), never handed out.
//! 2. Sync pages are handed out in order; when a page says `has_more ==
//!    false`, the buffered live entries follow, then live entries flow
//!    directly.
//! 3. Whatever its source, an entry is handed out only if its cursor sorts
//!    bytewise **after the last cursor handed out**, and its `(conversation,
//!    message_id)` was not handed out before (within a bounded window of
//!    recent ids). Handing out an entry moves the last cursor to it; an
//!    entry dropped as a duplicate id but with a later cursor moves it too,
//!    so the next sync does not fetch it again.
//!
//! Why this is gapless: the server pushes every entry committed after the
//! connection's `Welcome`, in cursor order, and the sync read that answers
//! `has_more == false` happened after the `Welcome`. So the sync covers
//! everything up to some cursor `c`, the live stream everything committed
//! after the connection registered, and the two overlap rather than leave a
//! hole; rule 3 drops the overlap. Cursors sort in commit order (DESIGN
//! §3.4), which is the only thing about them this relies on.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use hanmadi_proto::{pb, ConversationId, SyncBatch};

/// Default size of the window of recent message ids kept for dedup.
pub const DEFAULT_DEDUP_WINDOW: usize = 4096;

/// A message handed to the user, with its inbox cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The message.
    pub message: pb::Message,
    /// Its inbox cursor; everything up to it has been handed out.
    pub cursor: Bytes,
}

/// What to do after a sync page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStep {
    /// Ask for the next page, after this cursor.
    More {
        /// The `Sync.after` of the next request.
        after: Bytes,
    },
    /// The sync is complete; live entries flow directly from now on.
    Done,
    /// The server said `has_more` without moving its cursor forward: asking
    /// again would loop forever.
    Stalled,
}

/// The merge state of one inbox stream across connections (see the module
/// docs for the rule it keeps).
#[derive(Debug)]
pub struct Seam {
    /// The cursor of the last entry handed out (or skipped as a duplicate);
    /// empty before the first.
    position: Bytes,
    /// Recently handed-out message ids.
    seen: RecentIds,
    /// `Some` while syncing: live entries held back until the sync ends.
    buffered: Option<VecDeque<Received>>,
    /// The `after` of the sync request in flight, to notice a stall.
    requested_after: Bytes,
}

impl Seam {
    /// A seam resuming after `position` (empty: from the oldest retained
    /// entry), remembering up to `dedup_window` recent message ids. It
    /// starts live; call [`Seam::begin_sync`] on every connect.
    #[must_use]
    pub fn new(position: Bytes, dedup_window: usize) -> Self {
        Self {
            requested_after: position.clone(),
            position,
            seen: RecentIds::new(dedup_window),
            buffered: None,
        }
    }

    /// The cursor of the last entry handed out.
    #[must_use]
    pub fn position(&self) -> &Bytes {
        &self.position
    }

    /// Whether live entries are currently held back.
    #[must_use]
    pub fn is_syncing(&self) -> bool {
        self.buffered.is_some()
    }

    /// How many live entries are held back.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buffered.as_ref().map_or(0, VecDeque::len)
    }

    /// A new connection is up: hold live entries back until the sync ends,
    /// and return the `after` of the first `Sync`. Entries still held from
    /// an earlier connection are dropped; the new sync fetches them again.
    pub fn begin_sync(&mut self) -> Bytes {
        self.buffered = Some(VecDeque::new());
        self.requested_after = self.position.clone();
        self.position.clone()
    }

    /// Takes one `SyncBatch` (the answer to the last `Sync` asked for) and
    /// appends what may be handed out to `out`, in order. When the batch
    /// ends the sync, the held-back live entries follow it.
    pub fn sync_page(&mut self, batch: SyncBatch, out: &mut Vec<Received>) -> SyncStep {
        for deliver in batch.messages {
            if let Some(message) = deliver.message {
                out.extend(self.admit(message, deliver.cursor));
            }
        }
        if !batch.has_more {
            for held in self.buffered.take().into_iter().flatten() {
                out.extend(self.admit(held.message, held.cursor));
            }
            return SyncStep::Done;
        }
        // `next` may run ahead of the entries when the server skipped some.
        let after = std::cmp::max(&batch.next, &self.position).clone();
        if after <= self.requested_after {
            return SyncStep::Stalled;
        }
        self.requested_after = after.clone();
        SyncStep::More { after }
    }

    /// Takes one live `Deliver`: held back while syncing, else appended to
    /// `out` unless it is old or a duplicate.
    pub fn live(&mut self, message: pb::Message, cursor: Bytes, out: &mut Vec<Received>) {
        if cursor <= self.position {
            return;
        }
        match self.buffered.as_mut() {
            Some(buffered) => buffered.push_back(Received { message, cursor }),
            None => out.extend(self.admit(message, cursor)),
        }
    }

    /// Rule 3 of the module docs.
    fn admit(&mut self, message: pb::Message, cursor: Bytes) -> Option<Received> {
        // An empty cursor sorts first, so it is dropped here too: it cannot
        // be placed in the stream.
        if cursor <= self.position {
            return None;
        }
        self.position = cursor.clone();
        // A message without a valid conversation cannot be keyed; the cursor
        // rule alone applies to it.
        if let Ok(conversation) = ConversationId::try_from(message.conversation.as_ref()) {
            if !self.seen.insert((conversation, message.message_id)) {
                return None;
            }
        }
        Some(Received { message, cursor })
    }
}

/// A bounded set of recent message ids: the oldest is forgotten first, so
/// memory stays flat over a long session. A duplicate older than the window
/// is still caught by the cursor rule, since it carries its old cursor.
#[derive(Debug)]
struct RecentIds {
    set: HashSet<(ConversationId, u64)>,
    order: VecDeque<(ConversationId, u64)>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Remembers `id`; `false` if it was already known.
    fn insert(&mut self, id: (ConversationId, u64)) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanmadi_proto::Deliver;
    use proptest::prelude::*;

    /// Entry `i` of a test inbox: cursor `i + 1` (8 bytes, big-endian, as
    /// the embedded engine's), message `100 + i` in one of three groups.
    fn entry(i: usize) -> Received {
        let group = 1 + (i % 3) as u64;
        Received {
            message: pb::Message {
                conversation: Some(ConversationId::group(group).to_proto()),
                message_id: 100 + i as u64,
                body: format!("m{i}"),
                ..pb::Message::default()
            },
            cursor: cursor(i),
        }
    }

    fn cursor(i: usize) -> Bytes {
        Bytes::copy_from_slice(&(i as u64 + 1).to_be_bytes())
    }

    fn batch(entries: &[Received], next: Bytes, has_more: bool) -> SyncBatch {
        SyncBatch {
            messages: entries
                .iter()
                .map(|e| Deliver {
                    message: Some(e.message.clone()),
                    cursor: e.cursor.clone(),
                })
                .collect(),
            next,
            has_more,
        }
    }

    fn ids(out: &[Received]) -> Vec<u64> {
        out.iter().map(|r| r.message.message_id).collect()
    }

    #[test]
    fn live_entries_wait_for_the_sync_and_overlap_is_dropped() {
        let mut seam = Seam::new(Bytes::new(), 16);
        let mut out = Vec::new();
        assert_eq!(seam.begin_sync(), Bytes::new());
        // Entries 2 and 3 arrive live while the first page is in flight.
        for i in [2, 3] {
            let e = entry(i);
            seam.live(e.message, e.cursor, &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(seam.buffered_len(), 2);
        let step = seam.sync_page(batch(&[entry(0), entry(1)], cursor(1), true), &mut out);
        assert_eq!(step, SyncStep::More { after: cursor(1) });
        assert_eq!(ids(&out), [100, 101]);
        // The last page overlaps the live entry 2.
        let step = seam.sync_page(batch(&[entry(2)], cursor(2), false), &mut out);
        assert_eq!(step, SyncStep::Done);
        assert_eq!(ids(&out), [100, 101, 102, 103]);
        assert!(!seam.is_syncing());
        let e = entry(4);
        seam.live(e.message, e.cursor, &mut out);
        assert_eq!(ids(&out), [100, 101, 102, 103, 104]);
        assert_eq!(seam.position(), &cursor(4));
    }

    #[test]
    fn stale_and_repeated_live_entries_are_dropped() {
        let mut seam = Seam::new(cursor(1), 16);
        let mut out = Vec::new();
        for i in [0, 1, 2, 2, 1, 3] {
            let e = entry(i);
            seam.live(e.message, e.cursor, &mut out);
        }
        assert_eq!(ids(&out), [102, 103]);
    }

    #[test]
    fn a_known_message_under_a_new_cursor_is_dropped_but_moves_the_cursor() {
        let mut seam = Seam::new(Bytes::new(), 16);
        let mut out = Vec::new();
        let first = entry(0);
        seam.live(first.message.clone(), first.cursor, &mut out);
        seam.live(first.message, cursor(5), &mut out);
        assert_eq!(ids(&out), [100]);
        assert_eq!(seam.position(), &cursor(5));
        assert_eq!(seam.begin_sync(), cursor(5));
    }

    #[test]
    fn an_empty_sync_releases_the_held_entries() {
        let mut seam = Seam::new(cursor(3), 16);
        let mut out = Vec::new();
        seam.begin_sync();
        for i in [3, 4] {
            let e = entry(i);
            seam.live(e.message, e.cursor, &mut out);
        }
        let step = seam.sync_page(batch(&[], cursor(3), false), &mut out);
        assert_eq!(step, SyncStep::Done);
        assert_eq!(ids(&out), [104]);
    }

    #[test]
    fn held_entries_of_a_lost_connection_are_dropped_and_synced_again() {
        let mut seam = Seam::new(Bytes::new(), 16);
        let mut out = Vec::new();
        seam.begin_sync();
        let e = entry(0);
        seam.live(e.message, e.cursor, &mut out);
        // Reconnect before the sync answered.
        assert_eq!(seam.begin_sync(), Bytes::new());
        assert_eq!(seam.buffered_len(), 0);
        seam.sync_page(batch(&[entry(0)], cursor(0), false), &mut out);
        assert_eq!(ids(&out), [100]);
    }

    #[test]
    fn a_page_that_does_not_advance_is_a_stall() {
        let mut seam = Seam::new(cursor(2), 16);
        let mut out = Vec::new();
        seam.begin_sync();
        let step = seam.sync_page(batch(&[entry(1)], cursor(2), true), &mut out);
        assert_eq!(step, SyncStep::Stalled);
        assert!(out.is_empty());
    }

    #[test]
    fn next_may_skip_ahead_of_the_entries() {
        let mut seam = Seam::new(Bytes::new(), 16);
        let mut out = Vec::new();
        seam.begin_sync();
        let step = seam.sync_page(batch(&[entry(0)], cursor(4), true), &mut out);
        assert_eq!(step, SyncStep::More { after: cursor(4) });
        assert_eq!(seam.position(), &cursor(0));
    }

    #[test]
    fn entries_without_cursor_or_conversation() {
        let mut seam = Seam::new(Bytes::new(), 16);
        let mut out = Vec::new();
        let e = entry(0);
        seam.live(e.message.clone(), Bytes::new(), &mut out);
        assert!(out.is_empty(), "an entry without a cursor cannot be placed");
        let mut loose = e.message;
        loose.conversation = None;
        seam.live(loose, cursor(0), &mut out);
        assert_eq!(ids(&out), [100], "the cursor rule alone still applies");
    }

    #[test]
    fn the_dedup_window_forgets_the_oldest() {
        let mut ids = RecentIds::new(2);
        let a = (ConversationId::group(1), 1);
        let b = (ConversationId::group(1), 2);
        let c = (ConversationId::group(2), 1);
        assert!(ids.insert(a));
        assert!(ids.insert(b));
        assert!(!ids.insert(a));
        assert!(ids.insert(c));
        assert!(ids.insert(a), "a fell out of the window");
        assert!(!ids.insert(c));
    }

    /// One step of the simulated client, server and inbox.
    #[derive(Debug, Clone)]
    enum Op {
        /// Commit up to this many more entries.
        Commit(usize),
        /// The connection pushes its next live entry.
        Live,
        /// The connection pushes again an entry it pushed before (any age).
        Repeat(usize),
        /// The server reads the pending sync page now, with this limit;
        /// `true` also returns one entry at or before `after` (overlap).
        ReadPage(usize, bool),
        /// The page read earlier arrives.
        ReplyPage,
        /// The connection drops; a new one starts live `back` entries
        /// before the newest commit (a server pushing some it need not).
        Reconnect(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1usize..4).prop_map(Op::Commit),
            4 => Just(Op::Live),
            1 => (0usize..64).prop_map(Op::Repeat),
            2 => ((1usize..5), any::<bool>()).prop_map(|(l, o)| Op::ReadPage(l, o)),
            2 => Just(Op::ReplyPage),
            1 => (0usize..3).prop_map(Op::Reconnect),
        ]
    }

    /// The sync request of the current connection.
    enum SyncState {
        Requested(Bytes),
        Read(SyncBatch),
        Done,
    }

    struct Sim {
        inbox: Vec<Received>,
        committed: usize,
        /// Next entry the connection pushes live.
        live_next: usize,
        /// Entries this connection has pushed, for repeats.
        pushed: Vec<usize>,
        sync: SyncState,
        limit_default: usize,
        seam: Seam,
        out: Vec<Received>,
    }

    impl Sim {
        fn connect(&mut self, back: usize) {
            self.live_next = self.committed.saturating_sub(back);
            self.pushed.clear();
            self.sync = SyncState::Requested(self.seam.begin_sync());
        }

        /// What a server holding `committed` entries answers to
        /// `Sync{after, limit}`.
        fn read_page(&self, after: &Bytes, limit: usize, overlap: bool) -> SyncBatch {
            let start = self.inbox[..self.committed]
                .iter()
                .position(|e| e.cursor > *after)
                .unwrap_or(self.committed);
            let end = (start + limit).min(self.committed);
            let from = if overlap {
                start.saturating_sub(1)
            } else {
                start
            };
            let page = &self.inbox[from..end];
            let next = if end > start {
                self.inbox[end - 1].cursor.clone()
            } else {
                after.clone()
            };
            batch(page, next, end < self.committed)
        }

        fn step(&mut self, op: Op) {
            match op {
                Op::Commit(n) => self.committed = (self.committed + n).min(self.inbox.len()),
                Op::Live => {
                    if self.live_next < self.committed {
                        let e = self.inbox[self.live_next].clone();
                        self.pushed.push(self.live_next);
                        self.live_next += 1;
                        self.seam.live(e.message, e.cursor, &mut self.out);
                    }
                }
                Op::Repeat(k) => {
                    if !self.pushed.is_empty() {
                        let e = self.inbox[self.pushed[k % self.pushed.len()]].clone();
                        self.seam.live(e.message, e.cursor, &mut self.out);
                    }
                }
                Op::ReadPage(limit, overlap) => {
                    if let SyncState::Requested(after) = &self.sync {
                        self.sync = SyncState::Read(self.read_page(after, limit, overlap));
                    }
                }
                Op::ReplyPage => {
                    if matches!(self.sync, SyncState::Read(_)) {
                        let SyncState::Read(page) =
                            std::mem::replace(&mut self.sync, SyncState::Done)
                        else {
                            unreachable!("checked above")
                        };
                        match self.seam.sync_page(page, &mut self.out) {
                            SyncStep::More { after } => self.sync = SyncState::Requested(after),
                            SyncStep::Done => {}
                            SyncStep::Stalled => panic!("a well-behaved server stalled"),
                        }
                    }
                }
                Op::Reconnect(back) => self.connect(back),
            }
        }

        /// Everything commits; the connection finishes its sync and pushes
        /// the rest.
        fn settle(&mut self) {
            self.committed = self.inbox.len();
            while !matches!(self.sync, SyncState::Done) {
                self.step(Op::ReadPage(self.limit_default, false));
                self.step(Op::ReplyPage);
            }
            while self.live_next < self.committed {
                self.step(Op::Live);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the interleaving of commits, pages, live pushes,
        /// repeats, overlaps and reconnects, the user sees exactly the
        /// inbox after the starting cursor, in order, once each.
        #[test]
        fn interleavings_yield_the_exact_inbox(
            len in 0usize..40,
            start in 0usize..5,
            initially_committed in 0usize..10,
            first_back in 0usize..3,
            limit_default in 1usize..6,
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let inbox: Vec<Received> = (0..len).map(entry).collect();
            let start = start.min(len);
            let position = if start == 0 { Bytes::new() } else { cursor(start - 1) };
            let mut sim = Sim {
                committed: initially_committed.clamp(start, len.max(start)),
                inbox,
                live_next: 0,
                pushed: Vec::new(),
                sync: SyncState::Done,
                limit_default,
                seam: Seam::new(position, 8),
                out: Vec::new(),
            };
            sim.connect(first_back);
            for op in ops {
                sim.step(op);
            }
            sim.settle();
            let expected: Vec<u64> = sim.inbox[start..].iter().map(|e| e.message.message_id).collect();
            prop_assert_eq!(ids(&sim.out), expected);
            prop_assert!(!sim.seam.is_syncing());
            let last = sim.inbox.last().map(|e| e.cursor.clone());
            if len > start {
                prop_assert_eq!(Some(sim.seam.position().clone()), last);
            }
        }
    }
}
