//! Node registrations and the presence index in storage (DESIGN §6).

use prost::Message;

use super::records::NodeRecord;
use super::{be_u64, decode, keys, transact, ChatStore, StoreError};
use crate::kv::{Kv, KvTxn};

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

    /// Sets how many connections of `user` `node` holds (`0` removes the
    /// entry). Absolute, so a retried write is harmless.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn set_presence(
        &self,
        user: u64,
        node: u64,
        connections: u64,
    ) -> Result<(), StoreError> {
        let key = keys::presence(user, node);
        transact!(&self.kv, |txn| {
            if connections == 0 {
                txn.clear(&key);
            } else {
                txn.set(&key, &connections.to_be_bytes());
            }
            Ok(())
        })
    }

    /// The nodes holding connections of `user`, with their counts.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn presence(&self, user: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let rows = self.scan_ids(&keys::presence_of(user), "presence").await?;
        rows.into_iter()
            .map(|(node, count)| Ok((node, be_u64(&count, "presence")?)))
            .collect()
    }
}
