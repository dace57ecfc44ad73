//! The chat keyspace's keys: one tuple-encoded subspace per table of
//! DESIGN §5, so the layout is the same on every engine and ordered the way
//! the reads need it.

use foundationdb_tuple::{pack_into, TuplePack, Versionstamp as TupleStamp};
use hanmadi_proto::ConversationId;

use crate::kv::VERSIONSTAMP_LEN;

/// First element of every key: which table it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Space {
    Users = 1,
    Usernames = 2,
    Blocks = 3,
    Groups = 4,
    Members = 5,
    UserGroups = 6,
    Messages = 7,
    Heads = 8,
    Dedup = 9,
    Inbox = 10,
    InboxFloor = 11,
    ReadMarks = 12,
    Delivered = 13,
    PushPending = 14,
    Nodes = 15,
    Presence = 16,
    Directs = 17,
    PushDevices = 18,
    Mutes = 19,
    PushDue = 20,
    PushRetry = 21,
    PushJobs = 22,
    NodeEpochs = 30,
    Feed = 31,
}

impl TuplePack for Space {
    fn pack<W: std::io::Write>(
        &self,
        w: &mut W,
        tuple_depth: foundationdb_tuple::TupleDepth,
    ) -> std::io::Result<foundationdb_tuple::VersionstampOffset> {
        u16::from(*self as u8).pack(w, tuple_depth)
    }
}

/// A conversation as tuple elements: `(0, low, high)` for a direct
/// conversation, `(1, group)` for a group, so each kind's keys are contiguous.
pub(crate) fn conv_elems(c: ConversationId) -> (u16, u64, u64) {
    match c {
        ConversationId::Direct {
            user_low,
            user_high,
        } => (0, user_low, user_high),
        ConversationId::Group(g) => (1, g, 0),
    }
}

/// Length of an inbox cursor: the commit's 10-byte versionstamp and a 2-byte
/// order inside the commit, as in a tuple-layer versionstamp.
pub const CURSOR_LEN: usize = VERSIONSTAMP_LEN + 2;

/// Packs `t` into a new key.
pub(crate) fn key<T: TuplePack>(t: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    pack_into(t, &mut out);
    out
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

/// The first key after `key` itself.
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

pub(crate) fn user(id: u64) -> Vec<u8> {
    key(&(Space::Users, id))
}

pub(crate) fn username(name: &str) -> Vec<u8> {
    key(&(Space::Usernames, name))
}

pub(crate) fn block(user: u64, other: u64) -> Vec<u8> {
    key(&(Space::Blocks, user, other))
}

pub(crate) fn group(id: u64) -> Vec<u8> {
    key(&(Space::Groups, id))
}

pub(crate) fn member(group: u64, user: u64) -> Vec<u8> {
    key(&(Space::Members, group, user))
}

pub(crate) fn members_of(group: u64) -> Vec<u8> {
    key(&(Space::Members, group))
}

pub(crate) fn user_group(user: u64, group: u64) -> Vec<u8> {
    key(&(Space::UserGroups, user, group))
}

pub(crate) fn user_groups(user: u64) -> Vec<u8> {
    key(&(Space::UserGroups, user))
}

pub(crate) fn direct(user: u64, peer: u64) -> Vec<u8> {
    key(&(Space::Directs, user, peer))
}

pub(crate) fn directs(user: u64) -> Vec<u8> {
    key(&(Space::Directs, user))
}

pub(crate) fn message(c: ConversationId, id: u64) -> Vec<u8> {
    let (kind, a, b) = conv_elems(c);
    key(&(Space::Messages, kind, a, b, id))
}

pub(crate) fn messages_of(c: ConversationId) -> Vec<u8> {
    let (kind, a, b) = conv_elems(c);
    key(&(Space::Messages, kind, a, b))
}

pub(crate) fn head(c: ConversationId) -> Vec<u8> {
    let (kind, a, b) = conv_elems(c);
    key(&(Space::Heads, kind, a, b))
}

pub(crate) fn dedup(sender: u64, client_msg_id: &[u8]) -> Vec<u8> {
    key(&(Space::Dedup, sender, client_msg_id))
}

pub(crate) fn inbox_of(user: u64) -> Vec<u8> {
    key(&(Space::Inbox, user))
}

/// An inbox key whose cursor the commit completes (FoundationDB's
/// versionstamped-key format: placeholder plus 4-byte offset).
pub(crate) fn inbox_stamped(user: u64, order: u16) -> Vec<u8> {
    foundationdb_tuple::pack_with_versionstamp(&(Space::Inbox, user, TupleStamp::incomplete(order)))
}

/// The inbox key of a known cursor.
pub(crate) fn inbox_at(user: u64, cursor: &[u8; CURSOR_LEN]) -> Vec<u8> {
    let mut stamp = [0u8; VERSIONSTAMP_LEN];
    stamp.copy_from_slice(&cursor[..VERSIONSTAMP_LEN]);
    let order = u16::from_be_bytes([cursor[VERSIONSTAMP_LEN], cursor[VERSIONSTAMP_LEN + 1]]);
    key(&(Space::Inbox, user, TupleStamp::complete(stamp, order)))
}

/// The cursor at the end of an inbox key: tuple versionstamps are the last
/// 12 bytes.
pub(crate) fn cursor_of_inbox_key(key: &[u8]) -> Option<[u8; CURSOR_LEN]> {
    let start = key.len().checked_sub(CURSOR_LEN)?;
    key[start..].try_into().ok()
}

pub(crate) fn inbox_floor(user: u64) -> Vec<u8> {
    key(&(Space::InboxFloor, user))
}

pub(crate) fn read_mark(user: u64, c: ConversationId) -> Vec<u8> {
    let (kind, a, b) = conv_elems(c);
    key(&(Space::ReadMarks, user, kind, a, b))
}

pub(crate) fn delivered(user: u64, device: &str) -> Vec<u8> {
    key(&(Space::Delivered, user, device))
}

/// A user's push-pending entries: `(user, cursor)` per message that found
/// them offline, valued like the inbox entry of the same cursor.
pub(crate) fn push_of(user: u64) -> Vec<u8> {
    key(&(Space::PushPending, user))
}

/// The push-pending key of a new message, completed at commit with the
/// same cursor as the recipient's inbox entry.
pub(crate) fn push_stamped(user: u64, order: u16) -> Vec<u8> {
    foundationdb_tuple::pack_with_versionstamp(&(
        Space::PushPending,
        user,
        TupleStamp::incomplete(order),
    ))
}

/// The push-pending key of a known cursor.
pub(crate) fn push_at(user: u64, cursor: &[u8; CURSOR_LEN]) -> Vec<u8> {
    let mut stamp = [0u8; VERSIONSTAMP_LEN];
    stamp.copy_from_slice(&cursor[..VERSIONSTAMP_LEN]);
    let order = u16::from_be_bytes([cursor[VERSIONSTAMP_LEN], cursor[VERSIONSTAMP_LEN + 1]]);
    key(&(Space::PushPending, user, TupleStamp::complete(stamp, order)))
}

/// The push index by first-pending time: `(sent_at, user)`, due once the
/// push delay has passed since `sent_at`.
pub(crate) fn push_due(sent_at: u64, user: u64) -> Vec<u8> {
    key(&(Space::PushDue, sent_at, user))
}

/// The schedule of push jobs: `(at, user)`, due at `at` (a retry, or the
/// end of a claim's lease).
pub(crate) fn push_retry(at: u64, user: u64) -> Vec<u8> {
    key(&(Space::PushRetry, at, user))
}

/// A user's push job: the request being sent or retried.
pub(crate) fn push_job(user: u64) -> Vec<u8> {
    key(&(Space::PushJobs, user))
}

pub(crate) fn push_device(user: u64, device: &str) -> Vec<u8> {
    key(&(Space::PushDevices, user, device))
}

pub(crate) fn push_devices(user: u64) -> Vec<u8> {
    key(&(Space::PushDevices, user))
}

pub(crate) fn mute(user: u64, c: ConversationId) -> Vec<u8> {
    let (kind, a, b) = conv_elems(c);
    key(&(Space::Mutes, user, kind, a, b))
}

pub(crate) fn mutes(user: u64) -> Vec<u8> {
    key(&(Space::Mutes, user))
}

pub(crate) fn delivered_of(user: u64) -> Vec<u8> {
    key(&(Space::Delivered, user))
}

pub(crate) fn node(id: u64) -> Vec<u8> {
    key(&(Space::Nodes, id))
}

pub(crate) fn nodes() -> Vec<u8> {
    key(&(Space::Nodes,))
}

/// The fencing epoch of a node id: written only when a node takes the id,
/// read by every commit the holder makes, so a holder whose id was taken
/// commits nothing more.
pub(crate) fn node_epoch(id: u64) -> Vec<u8> {
    key(&(Space::NodeEpochs, id))
}

pub(crate) fn presence(user: u64, node: u64) -> Vec<u8> {
    key(&(Space::Presence, user, node))
}

pub(crate) fn presence_of(user: u64) -> Vec<u8> {
    key(&(Space::Presence, user))
}

/// A change-feed entry the commit completes: `(feed, stamp, chunk)`, one
/// per chunk of a transaction's changes.
pub(crate) fn feed_stamped(chunk: u16) -> Vec<u8> {
    foundationdb_tuple::pack_with_versionstamp(&(Space::Feed, TupleStamp::incomplete(chunk)))
}

/// The change feed's prefix.
pub(crate) fn feed() -> Vec<u8> {
    key(&(Space::Feed,))
}

/// The feed key of a known position.
pub(crate) fn feed_at(position: &[u8; CURSOR_LEN]) -> Vec<u8> {
    let mut stamp = [0u8; VERSIONSTAMP_LEN];
    stamp.copy_from_slice(&position[..VERSIONSTAMP_LEN]);
    let order = u16::from_be_bytes([position[VERSIONSTAMP_LEN], position[VERSIONSTAMP_LEN + 1]]);
    key(&(Space::Feed, TupleStamp::complete(stamp, order)))
}
