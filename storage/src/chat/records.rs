//! Values of the chat keyspace, as protobuf records so fields can be added
//! without rewriting stored data.

use prost::Message;

/// A user's profile and credentials, under `users/(user_id)`.
#[derive(Clone, PartialEq, Message)]
pub struct UserRecord {
    /// Unique login name, as given at sign-up (lookups fold case).
    #[prost(string, tag = "1")]
    pub username: String,
    /// Name shown to others.
    #[prost(string, tag = "2")]
    pub display_name: String,
    /// Free-form status line.
    #[prost(string, tag = "3")]
    pub status_text: String,
    /// Profile picture address.
    #[prost(string, tag = "4")]
    pub avatar_url: String,
    /// PHC-formatted password hash (argon2id).
    #[prost(string, tag = "5")]
    pub password_hash: String,
    /// Milliseconds since the Unix epoch.
    #[prost(uint64, tag = "6")]
    pub created_at: u64,
    /// Deleted accounts keep their id (messages still name them) but lose
    /// their username and every token.
    #[prost(bool, tag = "7")]
    pub deleted: bool,
    /// Tokens issued before this time (ms) are no longer valid.
    #[prost(uint64, tag = "8")]
    pub tokens_valid_after: u64,
}

/// A group, under `groups/(group_id)`.
#[derive(Clone, PartialEq, Message)]
pub struct GroupRecord {
    /// Display name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The creator.
    #[prost(uint64, tag = "2")]
    pub owner: u64,
    /// Milliseconds since the Unix epoch.
    #[prost(uint64, tag = "3")]
    pub created_at: u64,
    /// Members right now; kept here so the size cap is one read.
    #[prost(uint32, tag = "4")]
    pub member_count: u32,
    /// Most members the group may have.
    #[prost(uint32, tag = "5")]
    pub max_members: u32,
}

/// A member's role in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Role {
    /// An ordinary member.
    Member = 0,
    /// May add and remove members.
    Admin = 1,
    /// The group's owner.
    Owner = 2,
}

/// A membership, under `members/(group, user)` and `user_groups/(user, group)`.
#[derive(Clone, PartialEq, Message)]
pub struct MemberRecord {
    /// The member's role.
    #[prost(enumeration = "Role", tag = "1")]
    pub role: i32,
    /// Id of the message that recorded the join; history starts there.
    #[prost(uint64, tag = "2")]
    pub joined_at: u64,
}

/// What one transaction changed that other nodes of a cluster act on, under
/// `feed/(versionstamp, chunk)` and on the node-to-node link.
#[derive(Clone, PartialEq, Message)]
pub struct FeedEvent {
    /// Users with new inbox entries: their connections read their inboxes.
    #[prost(uint64, repeated, tag = "1")]
    pub users: Vec<u64>,
    /// Groups whose membership changed.
    #[prost(uint64, repeated, tag = "2")]
    pub groups: Vec<u64>,
    /// Accounts deleted: their sockets close everywhere.
    #[prost(uint64, repeated, tag = "3")]
    pub accounts: Vec<u64>,
    /// Pairs of users whose block state changed, flattened
    /// (`[a0, b0, a1, b1, ...]`).
    #[prost(uint64, repeated, tag = "4")]
    pub blocks: Vec<u64>,
    /// When as long as `users`: the order, within the commit, of each
    /// user's last new entry, so a reader pulls each user through that
    /// entry only (a connection that already wrote it reads nothing).
    /// Empty, or another length: each user reads through the commit's end.
    #[prost(uint32, repeated, tag = "5")]
    pub orders: Vec<u32>,
}

impl FeedEvent {
    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.groups.is_empty()
            && self.accounts.is_empty()
            && self.blocks.is_empty()
    }
}

/// A chat node, under `nodes/(node_id)`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeRecord {
    /// The node's host name (its TLS name).
    #[prost(string, tag = "1")]
    pub hostname: String,
    /// Region, for discovery ranking.
    #[prost(string, tag = "2")]
    pub region: String,
    /// Endpoints by transport (`tcp`, `tls`, `ws`, `wss`).
    #[prost(map = "string, string", tag = "3")]
    pub endpoints: std::collections::HashMap<String, String>,
    /// Most connections the node takes.
    #[prost(uint64, tag = "4")]
    pub max_connections: u64,
    /// Connections it holds now.
    #[prost(uint64, tag = "5")]
    pub current_connections: u64,
    /// Shutting down: takes no new clients.
    #[prost(bool, tag = "6")]
    pub draining: bool,
    /// Milliseconds since the Unix epoch after which the entry is void.
    #[prost(uint64, tag = "7")]
    pub lease_expires_at: u64,
    /// The holder's fencing epoch (see [`crate::chat::NodeLease`]).
    #[prost(uint64, tag = "8")]
    pub epoch: u64,
    /// Where the node-to-node link of this node listens (`host:port`).
    #[prost(string, tag = "9")]
    pub link: String,
    /// A random number naming the process that holds the lease, so a take
    /// retried after an unknown commit result finds its own.
    #[prost(uint64, tag = "10")]
    pub instance: u64,
    /// The holder mints ids above this millisecond (see
    /// [`crate::chat::NodeLease::ids_floor_ms`]).
    #[prost(uint64, tag = "11")]
    pub ids_floor_ms: u64,
}

/// Where a device's push notifications go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PushPlatform {
    /// Any other service; the push gateway knows what the token means.
    Other = 0,
    /// Apple Push Notification service.
    Apns = 1,
    /// Firebase Cloud Messaging.
    Fcm = 2,
    /// A Web Push subscription.
    Webpush = 3,
}

impl PushPlatform {
    /// The name used in the HTTP API and in push requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Other => "other",
            Self::Apns => "apns",
            Self::Fcm => "fcm",
            Self::Webpush => "webpush",
        }
    }
}

/// A device's push registration, under `push_devices/(user, device_id)`.
#[derive(Clone, PartialEq, Message)]
pub struct PushDeviceRecord {
    /// Which service the token belongs to.
    #[prost(enumeration = "PushPlatform", tag = "1")]
    pub platform: i32,
    /// The service's device token (or Web Push subscription).
    #[prost(string, tag = "2")]
    pub token: String,
    /// When it was registered or last changed, in ms since the Unix epoch.
    #[prost(uint64, tag = "3")]
    pub updated_at: u64,
}

/// A push request being sent or waiting to be retried, under
/// `push_jobs/(user)`: kept until the push gateway accepts it or it is
/// dropped, so a retry and a crash re-send the very same request.
#[derive(Clone, PartialEq, Message)]
pub struct PushJobRecord {
    /// Stays the same on every attempt, so the gateway can deduplicate.
    #[prost(string, tag = "1")]
    pub idempotency_key: String,
    /// The newest push-pending cursor the request covers.
    #[prost(bytes = "bytes", tag = "2")]
    pub cursor: bytes::Bytes,
    /// The request body, as first built.
    #[prost(bytes = "bytes", tag = "3")]
    pub body: bytes::Bytes,
    /// Attempts started so far.
    #[prost(uint32, tag = "4")]
    pub attempts: u32,
    /// The worker that holds it (a random id per process).
    #[prost(uint64, tag = "5")]
    pub owner: u64,
    /// Nobody else touches the job before this time (ms): the end of the
    /// holder's lease, or the time of the next retry. `push_retry` holds
    /// an entry at exactly this time.
    #[prost(uint64, tag = "6")]
    pub not_before: u64,
}
