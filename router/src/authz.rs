//! Early authorization with caches (DESIGN §3.2). The append transaction has
//! the final word (it reads membership itself); these checks turn away what
//! is certainly refused before it takes a place in the append queue.
//!
//! The caches are bounded (`moka`, TinyLFU admission and LRU eviction): a
//! node that sees millions of users and groups keeps the hot ones, and a
//! client walking through ids cannot grow them without end. An evicted
//! entry is read again from the store on its next use.

use std::collections::HashMap;
use std::sync::Arc;

use hanmadi_storage::chat::Role;
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;

use moka::sync::Cache;

use crate::RouterError;

/// A group's membership as last read.
#[derive(Debug)]
pub struct GroupView {
    /// Members and their roles.
    pub members: HashMap<u64, Role>,
    /// The size cap.
    pub max_members: u32,
}

/// How much the authorization caches may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthzCapacity {
    /// Group memberships, counted in members (plus one per group), so a
    /// few huge groups weigh as much as many small ones.
    pub group_members: u64,
    /// Accounts known to be live.
    pub users: u64,
    /// User pairs whose block state is known.
    pub pairs: u64,
}

impl Default for AuthzCapacity {
    /// About 40 MB at most: a membership entry is a few tens of bytes with
    /// its map slot, a user or pair entry less.
    fn default() -> Self {
        Self {
            group_members: 1_000_000,
            users: 200_000,
            pairs: 200_000,
        }
    }
}

/// Caches of what authorization reads: group memberships, live accounts and
/// blocks. Each entry is dropped when the router changes what it mirrors,
/// and the least used ones when a cache is full.
pub struct Authz<K: Kv> {
    store: ChatStore<K>,
    groups: Cache<u64, Arc<GroupView>>,
    live_users: Cache<u64, ()>,
    /// Keyed by the ordered pair; true when either blocked the other.
    blocks: Cache<(u64, u64), bool>,
}

impl<K: Kv> std::fmt::Debug for Authz<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("groups", &self.groups.entry_count())
            .field("live_users", &self.live_users.entry_count())
            .field("blocks", &self.blocks.entry_count())
            .finish_non_exhaustive()
    }
}

fn pair(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl<K: Kv> Authz<K> {
    /// Empty caches over `store`, of the default capacity.
    pub fn new(store: ChatStore<K>) -> Self {
        Self::with_capacity(store, AuthzCapacity::default())
    }

    /// Empty caches over `store` that hold at most `capacity`.
    pub fn with_capacity(store: ChatStore<K>, capacity: AuthzCapacity) -> Self {
        Self {
            store,
            groups: Cache::builder()
                .max_capacity(capacity.group_members)
                .weigher(|_, view: &Arc<GroupView>| {
                    u32::try_from(view.members.len() + 1).unwrap_or(u32::MAX)
                })
                .build(),
            live_users: Cache::new(capacity.users),
            blocks: Cache::new(capacity.pairs),
        }
    }

    /// Entries held by the three caches (groups, users, pairs), after
    /// pending evictions ran.
    pub fn cached_entries(&self) -> (u64, u64, u64) {
        self.groups.run_pending_tasks();
        self.live_users.run_pending_tasks();
        self.blocks.run_pending_tasks();
        (
            self.groups.entry_count(),
            self.live_users.entry_count(),
            self.blocks.entry_count(),
        )
    }

    /// A group's membership, from the cache or the store.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`] for an unknown group; a storage failure.
    pub async fn group(&self, group: u64) -> Result<Arc<GroupView>, RouterError> {
        if let Some(v) = self.groups.get(&group) {
            return Ok(v);
        }
        let record = self
            .store
            .group(group)
            .await?
            .ok_or(RouterError::NotFound("group"))?;
        let members = self
            .store
            .members(group)
            .await?
            .into_iter()
            .map(|(u, m)| (u, m.role()))
            .collect();
        let view = Arc::new(GroupView {
            members,
            max_members: record.max_members,
        });
        self.groups.insert(group, Arc::clone(&view));
        Ok(view)
    }

    /// Checks that `sender` may post to `group`.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotAMember`], [`RouterError::NotFound`].
    pub async fn check_post(&self, sender: u64, group: u64) -> Result<(), RouterError> {
        if self.group(group).await?.members.contains_key(&sender) {
            Ok(())
        } else {
            Err(RouterError::NotAMember)
        }
    }

    /// Checks that `actor` may add members to, or remove others from,
    /// `group`.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotAMember`], [`RouterError::PermissionDenied`].
    pub async fn check_manage(&self, actor: u64, group: u64) -> Result<(), RouterError> {
        match self.group(group).await?.members.get(&actor) {
            None => Err(RouterError::NotAMember),
            Some(Role::Owner | Role::Admin) => Ok(()),
            Some(Role::Member) => Err(RouterError::PermissionDenied),
        }
    }

    /// Checks that `sender` may message `peer` directly: `peer` is a live
    /// account and neither blocked the other.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`], [`RouterError::Blocked`].
    pub async fn check_direct(&self, sender: u64, peer: u64) -> Result<(), RouterError> {
        self.check_live(peer).await?;
        let key = pair(sender, peer);
        let blocked = match self.blocks.get(&key) {
            Some(b) => b,
            None => {
                let b = self.store.blocked_either(sender, peer).await?;
                self.blocks.insert(key, b);
                b
            }
        };
        if blocked {
            Err(RouterError::Blocked)
        } else {
            Ok(())
        }
    }

    /// Checks that `user` is a live account (it exists and was not
    /// deleted).
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`]; a storage failure.
    pub async fn check_live(&self, user: u64) -> Result<(), RouterError> {
        if self.live_users.contains_key(&user) {
            return Ok(());
        }
        match self.store.user(user).await? {
            Some(u) if !u.deleted => {
                self.live_users.insert(user, ());
                Ok(())
            }
            _ => Err(RouterError::NotFound("user")),
        }
    }

    /// Forgets a group's membership (after it changed).
    pub fn invalidate_group(&self, group: u64) {
        self.groups.invalidate(&group);
    }

    /// Forgets whether two users block each other.
    pub fn invalidate_block(&self, a: u64, b: u64) {
        self.blocks.invalidate(&pair(a, b));
    }

    /// Forgets that a user is live (after the account was deleted).
    pub fn invalidate_user(&self, user: u64) {
        self.live_users.invalidate(&user);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hanmadi_storage::chat::UserRecord;
    use hanmadi_storage::sim::{SimKv, SimOptions};
    use hanmadi_storage::StoreConfig;

    use super::*;

    #[tokio::test]
    async fn caches_stay_within_their_capacity() {
        let store = ChatStore::new(SimKv::new(SimOptions::healthy()), StoreConfig::default());
        for user in 1..=200 {
            let record = UserRecord {
                username: format!("u{user}"),
                ..UserRecord::default()
            };
            store.create_user(user, &record).await.unwrap();
        }
        let authz = Authz::with_capacity(
            store,
            AuthzCapacity {
                group_members: 10,
                users: 10,
                pairs: 10,
            },
        );
        // Every user messages every other: 200 live users, ~20,000 pairs.
        for sender in 1..=200u64 {
            for peer in (1..=200u64).filter(|p| *p != sender).step_by(20) {
                authz.check_direct(sender, peer).await.unwrap();
            }
        }
        let (_, users, pairs) = authz.cached_entries();
        assert!(users <= 10, "{users} users cached");
        assert!(pairs <= 10, "{pairs} pairs cached");
        // Evicted entries are read again, with the same answer.
        authz.check_direct(1, 2).await.unwrap();
        assert!(matches!(
            authz.check_direct(1, 999).await,
            Err(RouterError::NotFound("user"))
        ));
    }
}
