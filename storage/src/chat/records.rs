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
