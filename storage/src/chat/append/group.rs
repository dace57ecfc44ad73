//! Group messages: recipients, and the writes of a membership change.

use prost::Message;

use super::plan::AttemptState;
use super::{MembershipChange, NewMessage};
use crate::chat::groups::members_in;
use crate::chat::records::{GroupRecord, MemberRecord, Role};
use crate::chat::{decode, keys, ChatStore, StoreError};
use crate::kv::{Kv, KvTxn};

impl<K: Kv> ChatStore<K> {
    /// Recipients of a group message and the membership effect to write:
    /// members after the change, plus those it removes (so they learn of it).
    pub(super) async fn plan_group(
        &self,
        txn: &K::Txn,
        st: &mut AttemptState,
        group: u64,
        msg: &NewMessage,
    ) -> Result<(Vec<u64>, Option<GroupEffect>), StoreError> {
        let record = match st.group_records.get(&group) {
            Some(r) => r.clone(),
            None => {
                // A single writer's reads are snapshots (see `writer`).
                let snapshot = self.config.single_writer;
                let r = match txn.get(&keys::group(group), snapshot).await? {
                    Some(v) => Some(decode::<GroupRecord>(&v, "groups")?),
                    None => None,
                };
                st.group_records.insert(group, r.clone());
                r
            }
        };
        if let Some(MembershipChange::Create {
            name,
            members,
            max_members,
        }) = &msg.membership
        {
            if record.is_some() {
                return Err(StoreError::Invalid("group exists"));
            }
            let mut all = vec![msg.sender];
            for &m in members {
                if !all.contains(&m) {
                    all.push(m);
                }
            }
            // Whoever blocked the creator stays out.
            if any_blocked(txn, &all[1..], msg.sender).await? {
                return Err(StoreError::Blocked);
            }
            if all.len() > *max_members as usize {
                return Err(StoreError::GroupFull { max: *max_members });
            }
            let add: Vec<(u64, Role)> = all
                .iter()
                .map(|&u| {
                    (
                        u,
                        if u == msg.sender {
                            Role::Owner
                        } else {
                            Role::Member
                        },
                    )
                })
                .collect();
            let effect = GroupEffect {
                record: GroupRecord {
                    name: name.clone(),
                    owner: msg.sender,
                    created_at: msg.sent_at,
                    member_count: all.len() as u32,
                    max_members: *max_members,
                },
                members_after: add.clone(),
                add,
                remove: Vec::new(),
            };
            return Ok((all, Some(effect)));
        }
        let Some(mut record) = record else {
            return Err(StoreError::NotFound("group"));
        };
        let with_roles = match st.members.get(&group) {
            Some(m) => m.clone(),
            None => {
                let m: Vec<(u64, Role)> = members_in(txn, group, self.config.single_writer)
                    .await?
                    .into_iter()
                    .map(|(u, r)| (u, r.role()))
                    .collect();
                st.members.insert(group, m.clone());
                m
            }
        };
        // Decided here, inside the transaction that reads the membership, so
        // no change of membership can slip between the check and the write.
        let Some(sender_role) = with_roles
            .iter()
            .find(|(u, _)| *u == msg.sender)
            .map(|(_, r)| *r)
        else {
            return Err(StoreError::NotMember);
        };
        let manages = matches!(sender_role, Role::Owner | Role::Admin);
        let current: Vec<u64> = with_roles.iter().map(|(u, _)| *u).collect();
        match &msg.membership {
            None => Ok((current, None)),
            Some(MembershipChange::Add { .. }) if !manages => Err(StoreError::PermissionDenied),
            Some(MembershipChange::Remove { users })
                if users.iter().any(|&u| {
                    u != msg.sender
                        && (!manages || with_roles.iter().any(|&(m, r)| m == u && r == Role::Owner))
                }) =>
            {
                Err(StoreError::PermissionDenied)
            }
            Some(MembershipChange::Add { users, role }) => {
                // Whoever blocked the one adding them stays out.
                let joining: Vec<u64> = users
                    .iter()
                    .copied()
                    .filter(|u| !current.contains(u))
                    .collect();
                if any_blocked(txn, &joining, msg.sender).await? {
                    return Err(StoreError::Blocked);
                }
                let mut after = current.clone();
                let mut add = Vec::new();
                for &u in users {
                    if !after.contains(&u) {
                        after.push(u);
                        add.push((u, *role));
                    }
                }
                if after.len() > record.max_members as usize {
                    return Err(StoreError::GroupFull {
                        max: record.max_members,
                    });
                }
                record.member_count = after.len() as u32;
                let mut members_after = with_roles;
                members_after.extend(add.iter().copied());
                Ok((
                    after,
                    Some(GroupEffect {
                        record,
                        add,
                        remove: Vec::new(),
                        members_after,
                    }),
                ))
            }
            Some(MembershipChange::Remove { users }) => {
                let remove: Vec<u64> = users
                    .iter()
                    .copied()
                    .filter(|u| current.contains(u))
                    .collect();
                let members_after: Vec<(u64, Role)> = with_roles
                    .into_iter()
                    .filter(|(u, _)| !remove.contains(u))
                    .collect();
                record.member_count = members_after.len() as u32;
                Ok((
                    current,
                    Some(GroupEffect {
                        record,
                        add: Vec::new(),
                        remove,
                        members_after,
                    }),
                ))
            }
            Some(MembershipChange::Create { .. }) => unreachable!("handled above"),
        }
    }
}

pub(super) fn write_group_effect<T: KvTxn>(
    txn: &mut T,
    st: &mut AttemptState,
    group: u64,
    message_id: u64,
    effect: &GroupEffect,
) {
    txn.set(&keys::group(group), &effect.record.encode_to_vec());
    for &(u, role) in &effect.add {
        let rec = MemberRecord {
            role: role as i32,
            joined_at: message_id,
        }
        .encode_to_vec();
        txn.set(&keys::member(group, u), &rec);
        txn.set(&keys::user_group(u, group), &rec);
    }
    for &u in &effect.remove {
        txn.clear(&keys::member(group, u));
        txn.clear(&keys::user_group(u, group));
    }
    st.group_records.insert(group, Some(effect.record.clone()));
    st.members.insert(group, effect.members_after.clone());
}

/// The writes of a membership change.
#[derive(Clone, Debug)]
pub(super) struct GroupEffect {
    record: GroupRecord,
    add: Vec<(u64, Role)>,
    remove: Vec<u64>,
    members_after: Vec<(u64, Role)>,
}

/// Whether any of `users` blocked `by`. The reads go out together: one
/// round trip on FoundationDB for a group of any size, where one after
/// another a thousand members would take most of a transaction's 5 s.
async fn any_blocked<T: KvTxn>(txn: &T, users: &[u64], by: u64) -> Result<bool, StoreError> {
    let keys: Vec<Vec<u8>> = users.iter().map(|&u| keys::block(u, by)).collect();
    let found = futures::future::try_join_all(keys.iter().map(|k| txn.get(k, false))).await?;
    Ok(found.iter().any(Option::is_some))
}
