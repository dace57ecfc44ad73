//! What a routing operation can fail with, and the wire code for each.

use hanmadi_proto::ErrorCode;
use hanmadi_storage::StoreError;

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The sender is not in the conversation.
    #[error("not a member of this conversation")]
    NotAMember,
    /// One of the two users blocked the other.
    #[error("messages between these users are blocked")]
    Blocked,
    /// The user, group or conversation does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The user's role does not allow it.
    #[error("permission denied: only the group's owner and admins may do this")]
    PermissionDenied,
    /// The group's owner tried to leave, or someone tried to remove the
    /// owner: a group always keeps its owner.
    #[error("permission denied: the group's owner cannot leave or be removed")]
    OwnerStays,
    /// The group is at its size cap.
    #[error("the group is full ({max} members)")]
    GroupFull {
        /// The cap.
        max: u32,
    },
    /// The username belongs to another account (usernames are unique
    /// regardless of case).
    #[error("username is taken")]
    UsernameTaken,
    /// A malformed request.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The body is over the limit.
    #[error("message body of {len} bytes exceeds {max}")]
    BodyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The cursor is older than the retention window: page history instead.
    #[error("cursor expired: page history instead")]
    CursorExpired,
    /// The append queue is full (callers that cannot wait get this).
    #[error("server busy: try again shortly")]
    Busy,
    /// The router is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// Storage failed. The message clients see names no detail of the
    /// engine (docs/PROTOCOL.md promises a code only); the cause stays in
    /// [`std::error::Error::source`] for the server's log.
    #[error("storage failed; try again later")]
    Store(#[source] StoreError),
}

impl From<StoreError> for RouterError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotMember => RouterError::NotAMember,
            StoreError::Blocked => RouterError::Blocked,
            StoreError::NotFound(what) => RouterError::NotFound(what),
            StoreError::PermissionDenied => RouterError::PermissionDenied,
            StoreError::GroupFull { max } => RouterError::GroupFull { max },
            StoreError::CursorExpired => RouterError::CursorExpired,
            StoreError::Invalid(what) => RouterError::InvalidArgument(what),
            StoreError::UsernameTaken => RouterError::UsernameTaken,
            other => RouterError::Store(other),
        }
    }
}

impl RouterError {
    /// The protocol's error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            RouterError::NotAMember => ErrorCode::NotAMember,
            RouterError::Blocked => ErrorCode::Blocked,
            RouterError::NotFound(_) => ErrorCode::NotFound,
            RouterError::PermissionDenied | RouterError::OwnerStays => ErrorCode::PermissionDenied,
            RouterError::GroupFull { .. } => ErrorCode::GroupFull,
            RouterError::UsernameTaken => ErrorCode::AlreadyExists,
            RouterError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            RouterError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            RouterError::CursorExpired => ErrorCode::CursorExpired,
            RouterError::Busy => ErrorCode::ServerBusy,
            RouterError::ShuttingDown
            | RouterError::Store(hanmadi_storage::StoreError::LeaseLost { .. }) => {
                // The node lost its id and is stopping: reconnect elsewhere
                // and resend with the same client_msg_id.
                ErrorCode::ServerDraining
            }
            RouterError::Store(e) if e.is_retryable() => ErrorCode::Unavailable,
            RouterError::Store(_) => ErrorCode::Internal,
        }
    }
}
