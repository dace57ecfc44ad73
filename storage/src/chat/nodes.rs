//! Node registrations with leases and fencing, and the presence index in
//! storage (DESIGN §6).
//!
//! A node of a cluster takes its id (the 10 node bits of message ids) with
//! [`ChatStore::acquire_node`]: the lowest id whose lease has lapsed. Each
//! take raises the id's **epoch**, a key of its own that the holder's
//! commits read ([`ChatStore::check_lease`]): once another node has taken
//! the id, every later commit of the old holder sees a different epoch and
//! fails with [`StoreError::LeaseLost`], so two nodes can never both
//! commit under one id. Renewing writes only the node's record, never the
//! epoch, so renewals do not conflict with the holder's own commits.
//!
//! Ids stay unique across a take-over whatever the clocks say: the new
//! holder mints ids above [`NodeLease::ids_floor_ms`], the old lease's
//! expiry, and the old holder never mints past its lease's expiry without
//! renewing first.

use std::time::Duration;

use prost::Message;

use super::records::NodeRecord;
use super::{be_u64, decode, keys, transact, ChatStore, StoreError};
use crate::kv::{Kv, KvTxn, RangeRead};

/// How many node ids there are: the 10 node bits of a message id.
pub const NODE_IDS: u64 = 1024;

/// A node's hold on its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLease {
    /// The id: the node bits of every message id this node mints.
    pub node_id: u64,
    /// Raised at each take; the holder's commits check it.
    pub epoch: u64,
    /// Ids minted under this lease must lie above this millisecond (Unix
    /// time): the previous holder's lease expiry, past which it minted none.
    pub ids_floor_ms: u64,
    /// The holder's random instance number, kept in its registration.
    pub instance: u64,
}

impl<K: Kv> ChatStore<K> {
    /// Writes (registers or renews) a node's record.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn put_node(&self, node_id: u64, record: &NodeRecord) -> Result<(), StoreError> {
        let key = keys::node(node_id);
        let value = record.encode_to_vec();
        transact!(&self.kv, |txn| {
            txn.set(&key, &value);
            Ok(())
        })
    }

    /// Every registered node, expired leases included.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn nodes(&self) -> Result<Vec<(u64, NodeRecord)>, StoreError> {
        let rows = self.scan_ids(&keys::nodes(), "nodes").await?;
        rows.into_iter()
            .map(|(id, value)| Ok((id, decode::<NodeRecord>(&value, "nodes")?)))
            .collect()
    }

    /// Takes the lowest node id whose lease has lapsed (or that was never
    /// taken), for `expiry` from `now_ms`, and registers `record` under it.
    ///
    /// A take retried after an unknown commit result finds the id its
    /// first attempt took (by `record.instance`, drawn here when zero)
    /// rather than taking a second one.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoFreeNodeId`] when every id is held, or a storage
    /// failure.
    pub async fn acquire_node(
        &self,
        record: &NodeRecord,
        now_ms: u64,
        expiry: Duration,
    ) -> Result<NodeLease, StoreError> {
        let begin = keys::nodes();
        let end = keys::prefix_end(&begin);
        let expires = now_ms.saturating_add(duration_ms(expiry));
        let instance = match record.instance {
            0 => rand::random::<u64>().max(1),
            given => given,
        };
        transact!(&self.kv, |txn| {
            // A conflict-checked read of every registration: two nodes
            // taking ids at once conflict, and the loser picks again. (A
            // snapshot read would spare takes the renewals of other ids,
            // but a take retried after an unknown commit result could then
            // miss its first attempt's registration landing meanwhile and
            // take a second id.)
            let rows = txn.get_range(RangeRead::new(&begin, &end)).await?;
            let mut held = vec![None; NODE_IDS as usize];
            for row in &rows {
                let id = super::trailing_id(&row.key, begin.len(), "nodes")?;
                if let Some(slot) = held.get_mut(id as usize) {
                    let r = decode::<NodeRecord>(&row.value, "nodes")?;
                    if r.instance == instance && r.lease_expires_at > now_ms {
                        // An earlier attempt of this take committed.
                        return Ok(NodeLease {
                            node_id: id,
                            epoch: r.epoch,
                            ids_floor_ms: r.ids_floor_ms,
                            instance,
                        });
                    }
                    *slot = Some(r);
                }
            }
            let Some(node_id) = (0..NODE_IDS).find(|&id| {
                held[id as usize]
                    .as_ref()
                    .is_none_or(|r| r.lease_expires_at <= now_ms)
            }) else {
                return Err(StoreError::NoFreeNodeId(NODE_IDS));
            };
            let previous = held[node_id as usize].take();
            let epoch_key = keys::node_epoch(node_id);
            let epoch = match txn.get(&epoch_key, false).await? {
                Some(v) => be_u64(&v, "node epochs")? + 1,
                None => 1,
            };
            txn.set(&epoch_key, &epoch.to_be_bytes());
            let ids_floor_ms = previous.map_or(0, |r| r.lease_expires_at);
            let mut record = record.clone();
            record.lease_expires_at = expires;
            record.epoch = epoch;
            record.draining = false;
            record.instance = instance;
            record.ids_floor_ms = ids_floor_ms;
            txn.set(&keys::node(node_id), &record.encode_to_vec());
            Ok(NodeLease {
                node_id,
                epoch,
                ids_floor_ms,
                instance,
            })
        })
    }

    /// Renews `lease` until `now_ms + expiry` and rewrites the node's record
    /// (its connection count, draining flag, endpoints).
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseLost`] when another node took the id, or a
    /// storage failure.
    pub async fn renew_node(
        &self,
        lease: &NodeLease,
        record: &NodeRecord,
        now_ms: u64,
        expiry: Duration,
    ) -> Result<u64, StoreError> {
        let mut record = record.clone();
        record.lease_expires_at = now_ms.saturating_add(duration_ms(expiry));
        record.epoch = lease.epoch;
        record.instance = lease.instance;
        record.ids_floor_ms = lease.ids_floor_ms;
        let value = record.encode_to_vec();
        let key = keys::node(lease.node_id);
        transact!(&self.kv, |txn| {
            check_epoch(&txn, lease).await?;
            txn.set(&key, &value);
            Ok(record.lease_expires_at)
        })
    }

    /// Gives the id up (a node that drains): its lease ends now, so another
    /// node may take the id at once. A lease already lost is left alone.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn release_node(&self, lease: &NodeLease) -> Result<(), StoreError> {
        let key = keys::node(lease.node_id);
        transact!(&self.kv, |txn| {
            if check_epoch(&txn, lease).await.is_err() {
                return Ok(());
            }
            if let Some(v) = txn.get(&key, false).await? {
                let mut record = decode::<NodeRecord>(&v, "nodes")?;
                record.lease_expires_at = 0;
                record.draining = true;
                txn.set(&key, &record.encode_to_vec());
            }
            Ok(())
        })
    }

    /// Whether `lease` still holds: the same check every commit of the
    /// holder makes inside its own transaction (see [`check_epoch`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseLost`], or a storage failure.
    pub async fn check_lease(&self, lease: &NodeLease) -> Result<(), StoreError> {
        transact!(&self.kv, |txn| check_epoch(&txn, lease).await)
    }

    /// Records, for the node holding `lease`, which of `users` it holds
    /// live connections of (`true`) and which it no longer does (`false`),
    /// in one transaction. An entry names the lease's epoch: it counts only
    /// while that lease is live. Absolute, so a retried write is harmless.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn set_presence(
        &self,
        lease: &NodeLease,
        users: &[(u64, bool)],
    ) -> Result<(), StoreError> {
        let epoch = lease.epoch.to_be_bytes();
        transact!(&self.kv, |txn| {
            for &(user, present) in users {
                let key = keys::presence(user, lease.node_id);
                if present {
                    txn.set(&key, &epoch);
                } else {
                    txn.clear(&key);
                }
            }
            Ok(())
        })
    }

    /// The nodes with an entry for `user` in the presence index, each with
    /// the epoch of the lease it was written under. An entry counts only
    /// while its node's lease of that epoch is live.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn presence(&self, user: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let rows = self.scan_ids(&keys::presence_of(user), "presence").await?;
        rows.into_iter()
            .map(|(node, epoch)| Ok((node, be_u64(&epoch, "presence")?)))
            .collect()
    }
}

/// Fails with [`StoreError::LeaseLost`] unless `lease`'s epoch is still the
/// id's. A conflict-checked read: a take-over that commits while `txn` is
/// open aborts `txn`.
pub(crate) async fn check_epoch<T: KvTxn>(txn: &T, lease: &NodeLease) -> Result<(), StoreError> {
    let current = match txn.get(&keys::node_epoch(lease.node_id), false).await? {
        Some(v) => be_u64(&v, "node epochs")?,
        None => 0,
    };
    if current == lease.epoch {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            node_id: lease.node_id,
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
