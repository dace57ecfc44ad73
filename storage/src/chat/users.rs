//! Accounts, unique usernames and blocks.

use prost::Message;

use super::records::UserRecord;
use super::{decode, keys, transact, ChatStore, StoreError};
use crate::kv::{Kv, KvTxn};

/// The account record under `key`, deleted or not, read with a conflict
/// check.
///
/// # Errors
///
/// [`StoreError::NotFound`] for an unknown user.
async fn record<T: KvTxn>(txn: &T, key: &[u8]) -> Result<UserRecord, StoreError> {
    let Some(v) = txn.get(key, false).await? else {
        return Err(StoreError::NotFound("user"));
    };
    decode::<UserRecord>(&v, "users")
}

/// The account record under `key`, read with a conflict check.
///
/// # Errors
///
/// [`StoreError::NotFound`] for an unknown or deleted user.
async fn live_record<T: KvTxn>(txn: &T, key: &[u8]) -> Result<UserRecord, StoreError> {
    let rec = record(txn, key).await?;
    if rec.deleted {
        return Err(StoreError::NotFound("user"));
    }
    Ok(rec)
}

/// Usernames are unique regardless of case.
fn fold(username: &str) -> String {
    username.to_lowercase()
}

impl<K: Kv> ChatStore<K> {
    /// Creates a user with a caller-chosen id (so a retry after an unknown
    /// commit result recognises its own sign-up).
    ///
    /// # Errors
    ///
    /// [`StoreError::UsernameTaken`], or a storage failure.
    pub async fn create_user(&self, user_id: u64, record: &UserRecord) -> Result<(), StoreError> {
        if record.username.is_empty() {
            return Err(StoreError::Invalid("empty username"));
        }
        let name_key = keys::username(&fold(&record.username));
        let user_key = keys::user(user_id);
        let value = record.encode_to_vec();
        transact!(&self.kv, |txn| {
            self.check_fence(&txn).await?;
            if let Some(owner) = txn.get(&name_key, false).await? {
                if owner.as_ref() == user_id.to_be_bytes() {
                    return Ok(());
                }
                return Err(StoreError::UsernameTaken);
            }
            if txn.get(&user_key, false).await?.is_some() {
                return Err(StoreError::Invalid("user id in use"));
            }
            txn.set(&name_key, &user_id.to_be_bytes());
            txn.set(&user_key, &value);
            Ok(())
        })
    }

    /// Makes sure each of `users` exists, in one transaction: a username
    /// that is free gets the record under its caller-chosen id; one taken
    /// by a provisioned account (no password) keeps it. Answers each
    /// username's id and whether this call created it (a retry after an
    /// unknown commit result counts its own accounts as created). Operators
    /// provision accounts this way, with no password: such users
    /// authenticate with JWTs an application mints.
    ///
    /// The caller bounds the batch so the transaction stays small (each
    /// user is two keys of well under a kilobyte).
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] for an empty username or a repeated id;
    /// [`StoreError::UsernameTaken`] when a username belongs to an account
    /// someone signed up for with a password (nothing is stored then); a
    /// storage failure.
    pub async fn ensure_users(
        &self,
        users: &[(u64, UserRecord)],
    ) -> Result<Vec<(u64, bool)>, StoreError> {
        if users.iter().any(|(_, r)| r.username.is_empty()) {
            return Err(StoreError::Invalid("empty username"));
        }
        let encoded: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = users
            .iter()
            .map(|(id, r)| {
                (
                    keys::username(&fold(&r.username)),
                    keys::user(*id),
                    r.encode_to_vec(),
                )
            })
            .collect();
        transact!(&self.kv, |txn| {
            self.check_fence(&txn).await?;
            let mut out = Vec::with_capacity(users.len());
            for ((user_id, _), (name_key, user_key, value)) in users.iter().zip(&encoded) {
                if let Some(owner) = txn.get(name_key, false).await? {
                    let owner = super::be_u64(&owner, "usernames")?;
                    // An account with a password is whoever signed up for
                    // it: answering its id would have the application mint
                    // tokens for the user it means into a stranger's
                    // account.
                    if let Some(record) = txn.get(&keys::user(owner), false).await? {
                        if !decode::<UserRecord>(&record, "users")?
                            .password_hash
                            .is_empty()
                        {
                            return Err(StoreError::UsernameTaken);
                        }
                    }
                    out.push((owner, owner == *user_id));
                    continue;
                }
                if txn.get(user_key, false).await?.is_some() {
                    return Err(StoreError::Invalid("user id in use"));
                }
                txn.set(name_key, &user_id.to_be_bytes());
                txn.set(user_key, value);
                out.push((*user_id, true));
            }
            Ok(out)
        })
    }

    /// A user's record, deleted accounts included.
    ///
    /// # Errors
    ///
    /// A storage failure or a corrupt record.
    pub async fn user(&self, user_id: u64) -> Result<Option<UserRecord>, StoreError> {
        let key = keys::user(user_id);
        transact!(&self.kv, |txn| {
            match txn.get(&key, true).await? {
                Some(v) => Ok(Some(decode::<UserRecord>(&v, "users")?)),
                None => Ok(None),
            }
        })
    }

    /// The id of a live account by username (any case).
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn user_id_by_name(&self, username: &str) -> Result<Option<u64>, StoreError> {
        let key = keys::username(&fold(username));
        transact!(&self.kv, |txn| {
            match txn.get(&key, true).await? {
                Some(v) => Ok(Some(super::be_u64(&v, "usernames")?)),
                None => Ok(None),
            }
        })
    }

    /// Rewrites a user's record with `update` (which must keep the username).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown or deleted user.
    pub async fn update_user(
        &self,
        user_id: u64,
        update: impl Fn(&mut UserRecord) + Send + Sync,
    ) -> Result<UserRecord, StoreError> {
        let key = keys::user(user_id);
        transact!(&self.kv, |txn| {
            let mut rec = live_record(&txn, &key).await?;
            let username = rec.username.clone();
            update(&mut rec);
            rec.username = username;
            txn.set(&key, &rec.encode_to_vec());
            Ok(rec)
        })
    }

    /// Deletes an account: frees its username and voids its tokens. Its id
    /// stays, since stored messages name it.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown user.
    pub async fn delete_user(&self, user_id: u64, now_ms: u64) -> Result<(), StoreError> {
        let key = keys::user(user_id);
        transact!(&self.kv, |txn| {
            let mut rec = record(&txn, &key).await?;
            if rec.deleted {
                return Ok(());
            }
            txn.clear(&keys::username(&fold(&rec.username)));
            // Nothing is pushed to a deleted account, nor kept for it.
            for prefix in [
                keys::push_devices(user_id),
                keys::push_of(user_id),
                keys::mutes(user_id),
            ] {
                txn.clear_range(&prefix, &keys::prefix_end(&prefix));
            }
            rec.deleted = true;
            rec.password_hash.clear();
            rec.tokens_valid_after = now_ms;
            txn.set(&key, &rec.encode_to_vec());
            self.account_changed(&mut txn, user_id);
            Ok(())
        })
    }

    /// Voids every token of `user_id` issued before `now_ms` ("log out
    /// everywhere"); tokens issued from then on work.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown or deleted user.
    pub async fn revoke_tokens(&self, user_id: u64, now_ms: u64) -> Result<(), StoreError> {
        let key = keys::user(user_id);
        transact!(&self.kv, |txn| {
            let mut rec = live_record(&txn, &key).await?;
            rec.tokens_valid_after = rec.tokens_valid_after.max(now_ms);
            txn.set(&key, &rec.encode_to_vec());
            self.account_changed(&mut txn, user_id);
            Ok(())
        })
    }

    /// Tells the cluster, through the change feed, that `user_id`'s tokens
    /// were voided: other nodes drop what they cached of the account and
    /// close its sockets.
    fn account_changed(&self, txn: &mut K::Txn, user_id: u64) {
        if self.config.change_feed {
            let event = crate::chat::FeedEvent {
                accounts: vec![user_id],
                ..Default::default()
            };
            crate::chat::feed::write(txn, event);
        }
    }

    /// Blocks (or unblocks) `other` for `user`.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn set_blocked(
        &self,
        user: u64,
        other: u64,
        blocked: bool,
    ) -> Result<(), StoreError> {
        let key = keys::block(user, other);
        transact!(&self.kv, |txn| {
            if blocked {
                txn.set(&key, b"");
            } else {
                txn.clear(&key);
            }
            if self.config.change_feed {
                let event = crate::chat::FeedEvent {
                    blocks: vec![user, other],
                    ..Default::default()
                };
                crate::chat::feed::write(&mut txn, event);
            }
            Ok(())
        })
    }

    /// Whether either user blocked the other.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn blocked_either(&self, a: u64, b: u64) -> Result<bool, StoreError> {
        let (ab, ba) = (keys::block(a, b), keys::block(b, a));
        transact!(&self.kv, |txn| {
            Ok(txn.get(&ab, true).await?.is_some() || txn.get(&ba, true).await?.is_some())
        })
    }

    /// Users that `user` blocked.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn blocked_by(&self, user: u64) -> Result<Vec<u64>, StoreError> {
        let prefix = keys::key(&(keys::Space::Blocks, user));
        let rows = self.scan_ids(&prefix, "blocks").await?;
        Ok(rows.into_iter().map(|(other, _)| other).collect())
    }
}
