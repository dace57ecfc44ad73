//! The chat keyspace, written once over the KV layer (DESIGN §5).
//!
//! - [`keys`]: the subspaces and their tuple-encoded keys.
//! - [`records`]: stored values.
//! - `users`, `groups`: accounts, blocks, groups and memberships.
//! - `append`: the atomic append of a batch of messages.
//! - `inbox`: sync after a cursor, history, read state, retention.
//! - `push`: push registrations, mutes, and the push worker's pending
//!   entries, index and jobs.
//! - `nodes`: node registrations and presence.
//! - [`feed`]: the change feed other nodes of a cluster read.

mod append;
pub mod feed;
mod groups;
mod inbox;
pub mod keys;
mod nodes;
mod push;
mod recent;
pub mod records;
mod users;

pub use append::{
    Appended, Before, IdSource, MembershipChange, NewMessage, PreparedAppend, CHAINED_MEMBERS_MAX,
};
pub use feed::FeedPosition;
pub use inbox::{Cursor, HistoryPage, SyncBatch, SyncEntry, HISTORY_CHUNK, MAX_RECEIPTS_PER_TXN};
pub use keys::CURSOR_LEN;
pub use nodes::NodeLease;
pub use push::{
    idempotency_key, BuildPush, Claimed, DueFrom, DueKind, DuePush, PushClaim, PushContent,
    PushDevice, PushJob, PushOutcome, MAX_DEVICE_ID, MAX_PUSH_DEVICES, MAX_PUSH_TOKEN,
};
pub use records::{
    FeedEvent, GroupRecord, MemberRecord, NodeRecord, PushPlatform, Role, UserRecord,
};

use crate::kv::{Kv, KvError, KvTxn};

/// What a chat-store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Sign-up with a username that is in use.
    #[error("username is taken")]
    UsernameTaken,
    /// The thing named does not exist (or was deleted).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// One of the two users blocked the other (a direct message), or a
    /// user being added to a group blocked the one adding them.
    #[error("blocked")]
    Blocked,
    /// The user is not a member of the group.
    #[error("not a member of this conversation")]
    NotMember,
    /// The user's role does not allow the change.
    #[error("permission denied: only the group's owner and admins may do this")]
    PermissionDenied,
    /// Adding would pass the group's size cap.
    #[error("the group is full ({max} members)")]
    GroupFull {
        /// The cap.
        max: u32,
    },
    /// The cursor points before the retention window: page history instead.
    #[error("cursor expired: its messages are past the retention window")]
    CursorExpired,
    /// A malformed argument.
    #[error("invalid input: {0}")]
    Invalid(&'static str),
    /// Stored data that does not decode.
    #[error("corrupt record in {0}")]
    Corrupt(&'static str),
    /// The KV layer failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// This node's id was taken by another node after its lease lapsed:
    /// it must commit nothing more under that id.
    #[error("node {node_id} lost its lease: another node holds its id")]
    LeaseLost {
        /// The id that was lost.
        node_id: u64,
    },
    /// Every node id is held by a live lease.
    #[error("all {0} node ids are held by live nodes")]
    NoFreeNodeId(u64),
    /// An append failed after an attempt that may have committed: the
    /// message may be stored. `recipients` must read their inboxes (they may
    /// have an entry nobody will deliver live), and a retry of the send with
    /// the same `client_msg_id` is answered with the stored message, if any.
    #[error("the message may have been stored; retry with the same client_msg_id: {source}")]
    MaybeStored {
        /// The last failure.
        #[source]
        source: KvError,
        /// Users the message was planned for.
        recipients: Vec<u64>,
    },
}

impl StoreError {
    /// Whether the operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Kv(e) => e.may_succeed_later(),
            // Retrying is always safe: the dedup entry answers it.
            StoreError::MaybeStored { .. } => true,
            _ => false,
        }
    }
}

/// Tunables of the chat keyspace.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// Commit each conversation's slice of a batch in its own transactions,
    /// so a conflict on one hot conversation never aborts the others
    /// (FoundationDB). Off: a batch commits in as few transactions as the
    /// limits allow (the embedded engine, whose resolver writes them all in
    /// one durable batch anyway).
    pub split_by_conversation: bool,
    /// Most bytes of mutations one append transaction collects before the
    /// rest of the batch goes to the next one.
    pub max_txn_bytes: usize,
    /// Default group size cap.
    pub max_group_members: u32,
    /// This store is the only writer of messages (one appender over the
    /// embedded engine): conversation heads are kept in its memory instead of
    /// read, with a conflict, by every append (see `chat::append::writer`).
    /// Never on a cluster, where other nodes append too.
    pub single_writer: bool,
    /// Attempts an append transaction gets (conflicts, unknown results, an
    /// unavailable cluster) before its messages fail with a retryable error.
    pub append_attempts: u32,
    /// Write what other nodes act on (new inbox entries, membership,
    /// account and block changes) to the change feed in the same
    /// transaction (see [`feed`]). On a cluster.
    pub change_feed: bool,
    /// Bytes of messages this store committed lately to keep for the
    /// pulls their commits set off, which then read only inbox entries (a
    /// message is immutable once stored); `0` keeps none. On a cluster,
    /// where many deliveries are pulls.
    pub recent_message_bytes: u64,
    /// Read each direct conversation's recipients' newest inbox entries,
    /// with conflict ranges, in the append's transaction, so its commit
    /// proves which entry comes right before each new one
    /// ([`Appended::before`]): the node can then hand its own connections
    /// the message without reading their inboxes. On a cluster.
    pub chain_deliveries: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            split_by_conversation: false,
            max_txn_bytes: 8_000_000,
            max_group_members: 1000,
            single_writer: false,
            append_attempts: 100,
            change_feed: false,
            recent_message_bytes: 0,
            chain_deliveries: false,
        }
    }
}

impl StoreConfig {
    /// One node on the embedded engine, whose appender is the only writer
    /// of messages.
    pub fn single_node() -> Self {
        Self {
            single_writer: true,
            ..Self::default()
        }
    }

    /// FoundationDB's shape: per-conversation transactions under 1 MB.
    pub fn for_cluster() -> Self {
        Self {
            split_by_conversation: true,
            max_txn_bytes: 900_000,
            change_feed: true,
            recent_message_bytes: 32 << 20,
            chain_deliveries: true,
            ..Self::default()
        }
    }
}

/// The chat keyspace over a KV engine.
#[derive(Clone, Debug)]
pub struct ChatStore<K: Kv> {
    kv: K,
    config: StoreConfig,
    /// Heads of a single writer (`config.single_writer`).
    heads: std::sync::Arc<append::writer::HeadCache>,
    /// Batches of a single writer planned and not yet committed.
    in_flight: std::sync::Arc<append::writer::InFlight>,
    /// In a cluster, the lease whose epoch every commit that mints ids
    /// checks (see [`ChatStore::fenced`]).
    fence: Option<NodeLease>,
    /// Messages committed lately (`config.recent_message_bytes`).
    recent: Option<recent::RecentMessages>,
    /// What chained appends remember (`config.chain_deliveries`).
    chaining: Option<append::Chaining>,
}

impl<K: Kv> ChatStore<K> {
    /// The keyspace over `kv`.
    pub fn new(kv: K, config: StoreConfig) -> Self {
        Self {
            kv,
            config,
            heads: std::sync::Arc::default(),
            in_flight: std::sync::Arc::default(),
            fence: None,
            recent: (config.recent_message_bytes > 0)
                .then(|| recent::RecentMessages::new(config.recent_message_bytes)),
            chaining: config.chain_deliveries.then(append::Chaining::new),
        }
    }

    /// This store, for a cluster node holding `lease`: from now on every
    /// append and every account creation reads the id's epoch in its own
    /// transaction and fails with [`StoreError::LeaseLost`] once another
    /// node has taken the id, so ids minted under a lost lease are never
    /// stored.
    #[must_use]
    pub fn fenced(&self, lease: NodeLease) -> Self {
        Self {
            fence: Some(lease),
            ..self.clone()
        }
    }

    /// Fails when the node's id was taken (see [`ChatStore::fenced`]); a
    /// conflict-checked read inside `txn`.
    pub(crate) async fn check_fence<T: crate::kv::KvTxn>(&self, txn: &T) -> Result<(), StoreError> {
        match &self.fence {
            Some(lease) => nodes::check_epoch(txn, lease).await,
            None => Ok(()),
        }
    }

    /// The engine under the store.
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }
}

/// Runs a transaction body in a retry loop and commits it.
///
/// The body is an expression using the transaction named by `$txn` and
/// evaluating to `Result<T, StoreError>`; it runs again, on a fresh
/// transaction, after a retryable KV error. Yields `Result<T, StoreError>`.
/// Bodies must be safe to re-run after `commit_unknown_result`.
///
/// `transact!(kv, at version, |txn| body)` makes the first attempt read at
/// `version` (an `Option<u64>`, see [`Kv::begin_at`](crate::kv::Kv::begin_at));
/// a retry reads at the newest version.
macro_rules! transact {
    ($kv:expr, |$txn:ident| $body:expr) => {
        $crate::chat::transact!($kv, at None, |$txn| $body)
    };
    ($kv:expr, at $at:expr, |$txn:ident| $body:expr) => {{
        let mut retry = $crate::kv::Retry::default();
        let mut at: Option<u64> = $at;
        loop {
            // A read at a named version that failed (too old, or not yet
            // served) is retried at the newest at once: no backoff helps it.
            let hinted = at.is_some();
            let begun = match at.take() {
                Some(version) => $crate::kv::Kv::begin_at($kv, version),
                None => $crate::kv::Kv::begin($kv),
            };
            #[allow(unused_mut)]
            let mut $txn = match begun {
                Ok(t) => t,
                Err(e) => break Err($crate::chat::StoreError::Kv(e)),
            };
            let outcome: Result<_, $crate::chat::StoreError> = async { $body }.await;
            let err = match outcome {
                Ok(v) => match $crate::kv::KvTxn::commit($txn).await {
                    Ok(_) => break Ok(v),
                    Err(e) => e,
                },
                Err($crate::chat::StoreError::Kv(e)) => e,
                Err(e) => break Err(e),
            };
            if hinted && err.is_retryable() {
                continue;
            }
            if let Err(e) = retry.backoff(err).await {
                break Err($crate::chat::StoreError::Kv(e));
            }
        }
    }};
}
pub(crate) use transact;

impl<K: Kv> ChatStore<K> {
    /// Every entry under `prefix` (a snapshot read), each with the id that
    /// ends its key.
    pub(crate) async fn scan_ids(
        &self,
        prefix: &[u8],
        what: &'static str,
    ) -> Result<Vec<(u64, bytes::Bytes)>, StoreError> {
        self.scan(prefix)
            .await?
            .into_iter()
            .map(|kv| Ok((trailing_id(&kv.key, prefix.len(), what)?, kv.value)))
            .collect()
    }

    /// Every entry under `prefix`, in key order, in one snapshot read.
    pub(crate) async fn scan(&self, prefix: &[u8]) -> Result<Vec<crate::kv::KeyValue>, StoreError> {
        let end = keys::prefix_end(prefix);
        transact!(&self.kv, |txn| {
            Ok(txn
                .get_range(crate::kv::RangeRead::new(prefix, &end).snapshot(true))
                .await?)
        })
    }
}

/// The id that ends a key whose first `prefix_len` bytes are its subspace
/// prefix (tuple elements concatenate, so the rest is a tuple of its own).
pub(crate) fn trailing_id(
    key: &[u8],
    prefix_len: usize,
    what: &'static str,
) -> Result<u64, StoreError> {
    key.get(prefix_len..)
        .and_then(|rest| foundationdb_tuple::unpack::<(u64,)>(rest).ok())
        .map(|(id,)| id)
        .ok_or(StoreError::Corrupt(what))
}

/// Decodes a stored protobuf record.
pub(crate) fn decode<M: prost::Message + Default>(
    bytes: &[u8],
    what: &'static str,
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|_| StoreError::Corrupt(what))
}

/// Reads a big-endian u64 value.
pub(crate) fn be_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt(what))?;
    Ok(u64::from_be_bytes(raw))
}

/// Reads a little-endian u64 value (atomic-operation operands).
pub(crate) fn le_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    let n = bytes.len().min(8);
    raw[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(raw)
}
