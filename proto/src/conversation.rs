//! [`ConversationId`]: a validated, `Copy` conversation name.
//!
//! On the wire a conversation is the [`Conversation`] message, whose oneof
//! may be unset and whose ids may be zero or out of order. Code that keys by
//! a conversation (storage, the router, client caches) converts it once with
//! [`ConversationId::try_from`] and works with a value that cannot be
//! malformed. Its `Ord` puts every direct conversation before every group,
//! each ordered by its ids.

use std::fmt;

use crate::pb::{conversation::Kind, Conversation, DirectConversation};

/// One conversation, validated: every id is non-zero and a direct
/// conversation's users are in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    /// A conversation between two users, named by both ids, smaller first,
    /// so both members derive the same name. The two ids may be equal (a
    /// user writing to themself); whether that is allowed is the router's
    /// decision.
    Direct {
        /// The smaller user id.
        user_low: u64,
        /// The larger user id.
        user_high: u64,
    },
    /// A group conversation, named by the group's id.
    Group(u64),
}

/// Why a [`Conversation`] from the wire is not a valid [`ConversationId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    /// The message or its `kind` oneof is not set.
    #[error("conversation is not set")]
    Missing,
    /// A user or group id is zero.
    #[error("conversation names id 0")]
    ZeroId,
    /// A direct conversation's `user_low` is greater than its `user_high`.
    #[error("direct conversation users out of order: {user_low} > {user_high}")]
    Unordered {
        /// The `user_low` received.
        user_low: u64,
        /// The `user_high` received.
        user_high: u64,
    },
}

impl ConversationId {
    /// The direct conversation between users `a` and `b`, in either order.
    #[must_use]
    pub fn direct(a: u64, b: u64) -> Self {
        Self::Direct {
            user_low: a.min(b),
            user_high: a.max(b),
        }
    }

    /// The conversation of group `group_id`.
    #[must_use]
    pub fn group(group_id: u64) -> Self {
        Self::Group(group_id)
    }

    /// For a direct conversation that includes `user`, the other member
    /// (`user` itself in a conversation with oneself); `None` for a group or
    /// a conversation `user` is not part of.
    #[must_use]
    pub fn peer_of(self, user: u64) -> Option<u64> {
        match self {
            Self::Direct {
                user_low,
                user_high,
            } if user == user_low => Some(user_high),
            Self::Direct {
                user_low,
                user_high,
            } if user == user_high => Some(user_low),
            Self::Direct { .. } | Self::Group(_) => None,
        }
    }

    /// The wire form of this conversation.
    #[must_use]
    pub fn to_proto(self) -> Conversation {
        self.into()
    }
}

impl From<ConversationId> for Conversation {
    fn from(id: ConversationId) -> Self {
        let kind = match id {
            ConversationId::Direct {
                user_low,
                user_high,
            } => Kind::Direct(DirectConversation {
                user_low,
                user_high,
            }),
            ConversationId::Group(group_id) => Kind::GroupId(group_id),
        };
        Conversation { kind: Some(kind) }
    }
}

impl TryFrom<&Conversation> for ConversationId {
    type Error = ConversationError;

    /// Validates a conversation received on the wire.
    ///
    /// # Errors
    ///
    /// [`ConversationError`] when the kind is unset, an id is zero, or a
    /// direct conversation's users are out of order.
    fn try_from(conversation: &Conversation) -> Result<Self, Self::Error> {
        match conversation.kind {
            None => Err(ConversationError::Missing),
            Some(Kind::GroupId(0)) => Err(ConversationError::ZeroId),
            Some(Kind::GroupId(group_id)) => Ok(Self::Group(group_id)),
            Some(Kind::Direct(DirectConversation {
                user_low,
                user_high,
            })) => {
                if user_low == 0 || user_high == 0 {
                    Err(ConversationError::ZeroId)
                } else if user_low > user_high {
                    Err(ConversationError::Unordered {
                        user_low,
                        user_high,
                    })
                } else {
                    Ok(Self::Direct {
                        user_low,
                        user_high,
                    })
                }
            }
        }
    }
}

impl TryFrom<Conversation> for ConversationId {
    type Error = ConversationError;

    /// Validates a conversation received on the wire.
    ///
    /// # Errors
    ///
    /// As for `TryFrom<&Conversation>`.
    fn try_from(conversation: Conversation) -> Result<Self, Self::Error> {
        Self::try_from(&conversation)
    }
}

impl TryFrom<Option<&Conversation>> for ConversationId {
    type Error = ConversationError;

    /// Validates an optional message field such as `Message.conversation`.
    ///
    /// # Errors
    ///
    /// [`ConversationError::Missing`] for `None`, else as for
    /// `TryFrom<&Conversation>`.
    fn try_from(conversation: Option<&Conversation>) -> Result<Self, Self::Error> {
        conversation.map_or(Err(ConversationError::Missing), Self::try_from)
    }
}

impl fmt::Display for ConversationId {
    /// `direct:<low>:<high>` or `group:<id>`, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct {
                user_low,
                user_high,
            } => write!(f, "direct:{user_low}:{user_high}"),
            Self::Group(group_id) => write!(f, "group:{group_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_is_the_same_from_both_sides() {
        assert_eq!(ConversationId::direct(7, 3), ConversationId::direct(3, 7));
        assert_eq!(
            ConversationId::direct(7, 3),
            ConversationId::Direct {
                user_low: 3,
                user_high: 7
            }
        );
    }

    #[test]
    fn round_trips_through_the_wire_form() {
        for id in [ConversationId::direct(9, 2), ConversationId::group(41)] {
            assert_eq!(ConversationId::try_from(id.to_proto()), Ok(id));
        }
    }

    #[test]
    fn refuses_malformed_wire_forms() {
        let missing = Conversation { kind: None };
        assert_eq!(
            ConversationId::try_from(&missing),
            Err(ConversationError::Missing)
        );
        assert_eq!(
            ConversationId::try_from(None::<&Conversation>),
            Err(ConversationError::Missing)
        );
        let zero_group = Conversation {
            kind: Some(Kind::GroupId(0)),
        };
        assert_eq!(
            ConversationId::try_from(&zero_group),
            Err(ConversationError::ZeroId)
        );
        let zero_user = Conversation {
            kind: Some(Kind::Direct(DirectConversation {
                user_low: 0,
                user_high: 4,
            })),
        };
        assert_eq!(
            ConversationId::try_from(&zero_user),
            Err(ConversationError::ZeroId)
        );
        let unordered = Conversation {
            kind: Some(Kind::Direct(DirectConversation {
                user_low: 5,
                user_high: 4,
            })),
        };
        assert_eq!(
            ConversationId::try_from(&unordered),
            Err(ConversationError::Unordered {
                user_low: 5,
                user_high: 4
            })
        );
    }

    #[test]
    fn peer_of_names_the_other_member() {
        let direct = ConversationId::direct(3, 7);
        assert_eq!(direct.peer_of(3), Some(7));
        assert_eq!(direct.peer_of(7), Some(3));
        assert_eq!(direct.peer_of(5), None);
        assert_eq!(ConversationId::direct(4, 4).peer_of(4), Some(4));
        assert_eq!(ConversationId::group(3).peer_of(3), None);
    }

    #[test]
    fn displays_for_logs() {
        assert_eq!(ConversationId::direct(7, 3).to_string(), "direct:3:7");
        assert_eq!(ConversationId::group(12).to_string(), "group:12");
    }
}
