//! A user's conversations: the list with each one's newest message and
//! unread count, history of a conversation named by what it is about, and
//! muting. Who may see what follows the same rules as sending and
//! [`Router::history`].

use std::cmp::Reverse;

use bytes::Bytes;
use hanmadi_proto::ConversationId;
use hanmadi_storage::chat::HistoryPage;
use hanmadi_storage::kv::Kv;

use crate::{page_limit, Router, RouterError};

/// Conversations a list page holds when the caller names no limit (`0`).
pub const DEFAULT_CONVERSATION_LIMIT: u32 = 50;
/// The most a list page holds: each entry costs several reads.
pub const MAX_CONVERSATION_LIMIT: u32 = 200;
/// Unread counts in a conversation list stop here (a client shows "99+"):
/// counting reads every unread message.
pub const MAX_LISTED_UNREAD: usize = 100;

/// One of a user's conversations, as a list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: ConversationId,
    /// The group's name, or the peer's display name (their username when
    /// they set none); `None` when the record is missing.
    pub name: Option<String>,
    /// The newest message the user may see, encoded.
    pub last_message: Option<Bytes>,
    /// Messages from others after the user's read mark that the user may
    /// see, counted up to [`MAX_LISTED_UNREAD`].
    pub unread: usize,
}

/// A page of a user's conversations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversationPage {
    /// Newest activity first.
    pub conversations: Vec<ConversationSummary>,
    /// Whether older conversations follow.
    pub has_more: bool,
}

impl<K: Kv> Router<K> {
    /// `user`'s conversations whose newest message id is below `before`
    /// (`None`: from the newest), newest activity first, a page of `limit`
    /// (`0`: [`DEFAULT_CONVERSATION_LIMIT`], at most
    /// [`MAX_CONVERSATION_LIMIT`]).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn conversations(
        &self,
        user: u64,
        before: Option<u64>,
        limit: u32,
    ) -> Result<ConversationPage, RouterError> {
        let limit = page_limit(limit, DEFAULT_CONVERSATION_LIMIT, MAX_CONVERSATION_LIMIT);
        let before = before.unwrap_or(u64::MAX);
        // Each conversation's head (its newest message id, time-sortable
        // across conversations) is one read, all in one transaction; only
        // the page's entries are filled in.
        let mut heads: Vec<(u64, ConversationId)> = self
            .store
            .conversation_heads(user)
            .await?
            .into_iter()
            .map(|(conversation, head)| (head, conversation))
            .filter(|(head, _)| *head < before)
            .collect();
        heads.sort_unstable_by_key(|(head, _)| Reverse(*head));
        let has_more = heads.len() > limit;
        heads.truncate(limit);
        let mut conversations = Vec::with_capacity(heads.len());
        for (_, conversation) in heads {
            conversations.push(self.summary(user, conversation).await?);
        }
        Ok(ConversationPage {
            conversations,
            has_more,
        })
    }

    async fn summary(
        &self,
        user: u64,
        conversation: ConversationId,
    ) -> Result<ConversationSummary, RouterError> {
        let name = match conversation {
            ConversationId::Direct { .. } => {
                let peer = conversation.peer_of(user).unwrap_or(user);
                self.store.user(peer).await?.map(|u| {
                    if u.display_name.is_empty() {
                        u.username
                    } else {
                        u.display_name
                    }
                })
            }
            ConversationId::Group(group) => self.store.group(group).await?.map(|g| g.name),
        };
        let newest = self.history(user, conversation, 0, 1).await?;
        Ok(ConversationSummary {
            conversation,
            name,
            last_message: newest.messages.into_iter().next(),
            unread: self.unread(user, conversation, MAX_LISTED_UNREAD).await?,
        })
    }

    /// As [`Router::history`], for callers that name a conversation by
    /// what it is about (the HTTP API's paths): one that does not exist is
    /// [`RouterError::NotFound`], an unknown group where `history` says
    /// [`RouterError::NotAMember`] and a peer who never had an account
    /// where it gives an empty page (a socket's `History` keeps those
    /// answers, docs/PROTOCOL.md §4.6). A deleted peer's messages stay
    /// readable.
    ///
    /// # Errors
    ///
    /// As [`Router::history`], and [`RouterError::NotFound`].
    pub async fn conversation_history(
        &self,
        user: u64,
        conversation: ConversationId,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, RouterError> {
        // Existence is asked only when the answer could hide it: a page
        // with messages proves the conversation, so the common read costs
        // nothing more.
        match self.history(user, conversation, before, limit).await {
            Err(RouterError::NotAMember) => match conversation {
                ConversationId::Group(group) if self.store.group(group).await?.is_none() => {
                    Err(RouterError::NotFound("group"))
                }
                _ => Err(RouterError::NotAMember),
            },
            Ok(page) if page.messages.is_empty() => match conversation.peer_of(user) {
                Some(peer) if self.store.user(peer).await?.is_none() => {
                    Err(RouterError::NotFound("user"))
                }
                _ => Ok(page),
            },
            other => other,
        }
    }

    /// Mutes or unmutes `conversation` for `user`: its messages are not
    /// pushed to them. A direct conversation needs a live peer (or none:
    /// one's own), a group needs `user` in it.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`] for a peer who does not exist or was
    /// deleted, [`RouterError::NotAMember`] for a group `user` is not in
    /// (unknown groups included) or a direct conversation of others; a
    /// storage failure.
    pub async fn set_muted(
        &self,
        user: u64,
        conversation: ConversationId,
        muted: bool,
    ) -> Result<(), RouterError> {
        match conversation {
            ConversationId::Direct { .. } => match conversation.peer_of(user) {
                None => return Err(RouterError::NotAMember),
                Some(peer) if peer != user => self.authz.check_live(peer).await?,
                Some(_) => {}
            },
            ConversationId::Group(group) => {
                if self.store.member(group, user).await?.is_none() {
                    return Err(RouterError::NotAMember);
                }
            }
        }
        Ok(self.store.set_muted(user, conversation, muted).await?)
    }
}
