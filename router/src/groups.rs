//! Groups: who may see a group and its members, create one, add members
//! and remove them. Each change commits with the system message that
//! announces it in the group's conversation.

use futures::{StreamExt, TryStreamExt};
use hanmadi_proto::pb::MessageKind;
use hanmadi_storage::chat::{GroupRecord, MemberRecord, MembershipChange, Role};
use hanmadi_storage::kv::Kv;

use crate::{Router, RouterError, SendAck};

/// Account reads in flight while checking a list of new members: each is
/// one round trip to the store (on FoundationDB, a read version and a
/// read), so a large group's are overlapped rather than paid in turn.
const LIVE_CHECKS_AT_ONCE: usize = 16;

/// A group with every member, as a member sees it.
#[derive(Clone, Debug)]
pub struct GroupDetails {
    /// The group's record.
    pub record: GroupRecord,
    /// Every member with their role and the message that recorded their
    /// join.
    pub members: Vec<(u64, MemberRecord)>,
}

impl<K: Kv> Router<K> {
    /// `group` with its members, for `caller` to see: members only, so
    /// outsiders learn nothing about who is in it. Read from the store, not
    /// the authorization cache: the answer shows what was committed.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`] for an unknown group,
    /// [`RouterError::NotAMember`]; a storage failure.
    pub async fn group_details(
        &self,
        caller: u64,
        group: u64,
    ) -> Result<GroupDetails, RouterError> {
        let record = self
            .store
            .group(group)
            .await?
            .ok_or(RouterError::NotFound("group"))?;
        let members = self.store.members(group).await?;
        if !members.iter().any(|(u, _)| *u == caller) {
            return Err(RouterError::NotAMember);
        }
        Ok(GroupDetails { record, members })
    }

    /// The groups `user` is in, with their role in each, read in one
    /// transaction.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn groups_of(
        &self,
        user: u64,
    ) -> Result<Vec<(u64, MemberRecord, GroupRecord)>, RouterError> {
        Ok(self.store.groups_of_with_records(user).await?)
    }

    /// Refuses a list of new members that cannot fit any group, then one
    /// that names an account that does not exist, so a group never names a
    /// ghost.
    async fn check_new_members(&self, users: &[u64]) -> Result<(), RouterError> {
        let max = self.config.max_group_members;
        if users.len() > max as usize {
            return Err(RouterError::GroupFull { max });
        }
        let checks: Vec<_> = users
            .iter()
            .map(|&user| self.authz.check_live(user))
            .collect();
        futures::stream::iter(checks)
            .buffer_unordered(LIVE_CHECKS_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    /// Whether `actor` may add and remove members of `group` (its owner or
    /// an admin), for callers that want to refuse before doing other work.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotAMember`], [`RouterError::PermissionDenied`].
    pub async fn check_manage(&self, actor: u64, group: u64) -> Result<(), RouterError> {
        self.authz.check_manage(actor, group).await
    }

    /// Creates a group owned by `owner` with `members`, all live accounts;
    /// announced by a system message. Returns the group id and that
    /// message's ack.
    ///
    /// # Errors
    ///
    /// [`RouterError::GroupFull`] past the size cap,
    /// [`RouterError::NotFound`] for a member who does not exist (or was
    /// deleted), [`RouterError::Blocked`] for one who blocked the owner; a
    /// storage failure.
    pub async fn create_group(
        &self,
        owner: u64,
        name: String,
        mut members: Vec<u64>,
    ) -> Result<(u64, SendAck), RouterError> {
        self.check_new_members(&members).await?;
        // The creator joins as owner; the announcement's `user_ids` lists
        // the others only, even when the creator named themself.
        members.retain(|&m| m != owner);
        let group = self.ids.next_above(0);
        let ack = self
            .system(
                owner,
                group,
                MessageKind::GroupCreated,
                MembershipChange::Create {
                    name,
                    members,
                    max_members: self.config.max_group_members,
                },
            )
            .await?;
        Ok((group, ack))
    }

    /// Adds `users`, all live accounts, to `group` with `role`: members by
    /// the owner or admins, admins by the owner only. A group has one
    /// owner, its creator, so `Role::Owner` is never granted.
    ///
    /// # Errors
    ///
    /// [`RouterError::InvalidArgument`] for no users or `Role::Owner`;
    /// [`RouterError::NotFound`] for an unknown group or user;
    /// [`RouterError::NotAMember`], [`RouterError::PermissionDenied`],
    /// [`RouterError::GroupFull`], [`RouterError::Blocked`]; a storage
    /// failure.
    pub async fn add_members(
        &self,
        actor: u64,
        group: u64,
        users: Vec<u64>,
        role: Role,
    ) -> Result<SendAck, RouterError> {
        if users.is_empty() {
            return Err(RouterError::InvalidArgument("no users to add"));
        }
        // Permission first: a refused caller costs no account reads.
        self.authz.check_manage(actor, group).await?;
        self.check_new_members(&users).await?;
        match role {
            Role::Owner => return Err(RouterError::InvalidArgument("role")),
            Role::Admin
                if self.authz.group(group).await?.members.get(&actor) != Some(&Role::Owner) =>
            {
                return Err(RouterError::PermissionDenied);
            }
            Role::Admin | Role::Member => {}
        }
        self.system(
            actor,
            group,
            MessageKind::MembersAdded,
            MembershipChange::Add { users, role },
        )
        .await
    }

    /// Removes `user` from `group`: owner or admins may remove others, and
    /// anyone but the owner may remove themself (leave).
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`] for an unknown group;
    /// [`RouterError::NotAMember`] when `actor` is not in it, before
    /// anything else, so outsiders learn nothing about who is;
    /// [`RouterError::NotFound`] when `user` is not in it (nothing to
    /// announce); [`RouterError::PermissionDenied`];
    /// [`RouterError::OwnerStays`] when `user` is the owner; a storage
    /// failure.
    pub async fn remove_member(
        &self,
        actor: u64,
        group: u64,
        user: u64,
    ) -> Result<SendAck, RouterError> {
        let view = self.authz.group(group).await?;
        let Some(&actor_role) = view.members.get(&actor) else {
            return Err(RouterError::NotAMember);
        };
        let Some(&user_role) = view.members.get(&user) else {
            return Err(RouterError::NotFound("member"));
        };
        let kind = if actor == user {
            MessageKind::MemberLeft
        } else if matches!(actor_role, Role::Owner | Role::Admin) {
            MessageKind::MembersRemoved
        } else {
            return Err(RouterError::PermissionDenied);
        };
        // Without its owner nobody could manage the group again; the owner
        // stays (ownership is not transferred).
        if user_role == Role::Owner {
            return Err(RouterError::OwnerStays);
        }
        self.system(
            actor,
            group,
            kind,
            MembershipChange::Remove { users: vec![user] },
        )
        .await
    }
}
