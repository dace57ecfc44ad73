//! Early authorization with caches (DESIGN §3.2). The append transaction has
//! the final word (it reads membership itself); these checks turn away what
//! is certainly refused before it takes a place in the append queue.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use hanmadi_storage::chat::Role;
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;

use crate::RouterError;

/// A group's membership as last read.
#[derive(Debug)]
pub struct GroupView {
    /// Members and their roles.
    pub members: HashMap<u64, Role>,
    /// The size cap.
    pub max_members: u32,
}

/// Caches of what authorization reads: group memberships, live accounts and
/// blocks. Each entry is dropped when the router changes what it mirrors.
#[derive(Debug)]
pub struct Authz<K: Kv> {
    store: ChatStore<K>,
    groups: DashMap<u64, Arc<GroupView>>,
    live_users: DashMap<u64, ()>,
    /// Keyed by the ordered pair; true when either blocked the other.
    blocks: DashMap<(u64, u64), bool>,
}

fn pair(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl<K: Kv> Authz<K> {
    /// Empty caches over `store`.
    pub fn new(store: ChatStore<K>) -> Self {
        Self {
            store,
            groups: DashMap::new(),
            live_users: DashMap::new(),
            blocks: DashMap::new(),
        }
    }

    /// A group's membership, from the cache or the store.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`] for an unknown group; a storage failure.
    pub async fn group(&self, group: u64) -> Result<Arc<GroupView>, RouterError> {
        if let Some(v) = self.groups.get(&group) {
            return Ok(Arc::clone(&v));
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
        if !self.live_users.contains_key(&peer) {
            match self.store.user(peer).await? {
                Some(u) if !u.deleted => {
                    self.live_users.insert(peer, ());
                }
                _ => return Err(RouterError::NotFound("user")),
            }
        }
        let key = pair(sender, peer);
        let blocked = match self.blocks.get(&key).map(|b| *b) {
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

    /// Forgets a group's membership (after it changed).
    pub fn invalidate_group(&self, group: u64) {
        self.groups.remove(&group);
    }

    /// Forgets whether two users block each other.
    pub fn invalidate_block(&self, a: u64, b: u64) {
        self.blocks.remove(&pair(a, b));
    }

    /// Forgets that a user is live (after the account was deleted).
    pub fn invalidate_user(&self, user: u64) {
        self.live_users.remove(&user);
    }
}
