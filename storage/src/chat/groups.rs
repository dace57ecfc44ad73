//! Groups and memberships. Changes to membership go through
//! [`ChatStore::append`] with a [`super::MembershipChange`], so each change
//! commits together with the system message that announces it.

use super::records::{GroupRecord, MemberRecord};
use super::{decode, keys, transact, ChatStore, StoreError};
use crate::kv::{KeyValue, Kv, KvTxn, RangeRead};

/// Reads `(id, member record)` pairs from a members or user-groups range
/// whose keys start with `prefix_len` bytes of prefix.
pub(crate) fn parse_memberships(
    rows: &[KeyValue],
    prefix_len: usize,
    what: &'static str,
) -> Result<Vec<(u64, MemberRecord)>, StoreError> {
    rows.iter()
        .map(|kv| {
            let id = super::trailing_id(&kv.key, prefix_len, what)?;
            Ok((id, decode::<MemberRecord>(&kv.value, what)?))
        })
        .collect()
}

/// The members of `group`, read in `txn` with a read conflict (so a
/// membership change concurrent with the caller's commit aborts it).
pub(crate) async fn members_in<T: KvTxn>(
    txn: &T,
    group: u64,
    snapshot: bool,
) -> Result<Vec<(u64, MemberRecord)>, StoreError> {
    let begin = keys::members_of(group);
    let end = keys::prefix_end(&begin);
    let rows = txn
        .get_range(RangeRead::new(&begin, &end).snapshot(snapshot))
        .await?;
    parse_memberships(&rows, begin.len(), "members")
}

impl<K: Kv> ChatStore<K> {
    /// A group's record.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn group(&self, group: u64) -> Result<Option<GroupRecord>, StoreError> {
        let key = keys::group(group);
        transact!(&self.kv, |txn| {
            match txn.get(&key, true).await? {
                Some(v) => Ok(Some(decode::<GroupRecord>(&v, "groups")?)),
                None => Ok(None),
            }
        })
    }

    /// A group's members with their roles and join points, by user id.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn members(&self, group: u64) -> Result<Vec<(u64, MemberRecord)>, StoreError> {
        transact!(&self.kv, |txn| members_in(&txn, group, true).await)
    }

    /// One membership.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn member(&self, group: u64, user: u64) -> Result<Option<MemberRecord>, StoreError> {
        let key = keys::member(group, user);
        transact!(&self.kv, |txn| {
            match txn.get(&key, true).await? {
                Some(v) => Ok(Some(decode::<MemberRecord>(&v, "members")?)),
                None => Ok(None),
            }
        })
    }

    /// The groups `user` belongs to, by group id.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn groups_of(&self, user: u64) -> Result<Vec<(u64, MemberRecord)>, StoreError> {
        let begin = keys::user_groups(user);
        let rows = self.scan(&begin).await?;
        parse_memberships(&rows, begin.len(), "user_groups")
    }

    /// The groups `user` belongs to, each with its membership and its
    /// record, in one transaction: one range read of the user's groups, then
    /// the group records read concurrently. A group whose record is gone
    /// (removed between membership and record) is left out.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn groups_of_with_records(
        &self,
        user: u64,
    ) -> Result<Vec<(u64, MemberRecord, GroupRecord)>, StoreError> {
        let begin = keys::user_groups(user);
        let end = keys::prefix_end(&begin);
        transact!(&self.kv, |txn| {
            let rows = txn
                .get_range(RangeRead::new(&begin, &end).snapshot(true))
                .await?;
            let memberships = parse_memberships(&rows, begin.len(), "user_groups")?;
            let keys: Vec<Vec<u8>> = memberships.iter().map(|(g, _)| keys::group(*g)).collect();
            let records =
                futures::future::try_join_all(keys.iter().map(|key| txn.get(key, true))).await?;
            let mut groups = Vec::with_capacity(memberships.len());
            for ((group, membership), record) in memberships.into_iter().zip(records) {
                if let Some(record) = record {
                    groups.push((group, membership, decode::<GroupRecord>(&record, "groups")?));
                }
            }
            Ok(groups)
        })
    }

    /// The users `user` has a direct conversation with.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn direct_peers(&self, user: u64) -> Result<Vec<u64>, StoreError> {
        let rows = self.scan_ids(&keys::directs(user), "directs").await?;
        Ok(rows.into_iter().map(|(peer, _)| peer).collect())
    }
}
