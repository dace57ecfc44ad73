//! Accounts: who exists, who may be shown, signed up, logged in against,
//! changed and provisioned. Whether a field is well formed (a username's
//! characters, a display name's length) is the caller's to check; what an
//! account may become is decided here.

use hanmadi_storage::chat::UserRecord;
use hanmadi_storage::kv::Kv;

use crate::{Router, RouterError};

/// Most accounts one [`Router::provision_accounts`] call may name: they are
/// made in one transaction, which must stay well under FoundationDB's size
/// and time limits.
pub const MAX_PROVISION_BATCH: usize = 1000;
const _: () = assert!(MAX_PROVISION_BATCH == 1000, "the refusal's text names it");

/// A change to a profile: fields left `None` stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileChange {
    /// The name shown to others.
    pub display_name: Option<String>,
    /// The status line.
    pub status_text: Option<String>,
    /// The picture's address (empty removes it).
    pub avatar_url: Option<String>,
}

/// An account to sign up with a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccount {
    /// Its login name, unique regardless of case.
    pub username: String,
    /// The name shown to others.
    pub display_name: String,
    /// The password's hash (never the password).
    pub password_hash: String,
}

impl<K: Kv> Router<K> {
    /// `user`'s record, for showing their profile: deleted accounts are
    /// gone to everyone, themselves included.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`] for an unknown or deleted account; a
    /// storage failure.
    pub async fn account(&self, user: u64) -> Result<UserRecord, RouterError> {
        match self.store.user(user).await? {
            Some(r) if !r.deleted => Ok(r),
            _ => Err(RouterError::NotFound("user")),
        }
    }

    /// The live account named `username` (in any case), with its id.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`]; a storage failure.
    pub async fn account_by_name(&self, username: &str) -> Result<(u64, UserRecord), RouterError> {
        let id = self
            .store
            .user_id_by_name(username)
            .await?
            .ok_or(RouterError::NotFound("user"))?;
        Ok((id, self.account(id).await?))
    }

    /// Refuses a username some account holds, so a sign-up can stop before
    /// it pays for a password hash. [`Router::create_account`] checks again
    /// atomically.
    ///
    /// # Errors
    ///
    /// [`RouterError::UsernameTaken`]; a storage failure.
    pub async fn check_username_free(&self, username: &str) -> Result<(), RouterError> {
        match self.store.user_id_by_name(username).await? {
            Some(_) => Err(RouterError::UsernameTaken),
            None => Ok(()),
        }
    }

    /// Signs up an account; returns its new id.
    ///
    /// # Errors
    ///
    /// [`RouterError::UsernameTaken`]; [`RouterError::InvalidArgument`] for
    /// an empty username; a storage failure.
    pub async fn create_account(&self, account: NewAccount) -> Result<u64, RouterError> {
        let user = self.ids.next_above(0);
        let record = UserRecord {
            username: account.username,
            display_name: account.display_name,
            password_hash: account.password_hash,
            created_at: self.now_ms(),
            ..UserRecord::default()
        };
        self.store.create_user(user, &record).await?;
        Ok(user)
    }

    /// The id and password hash a log-in as `username` is checked against:
    /// `None` for an unknown or deleted account, and for a provisioned one,
    /// which has no password and logs in with the application's tokens
    /// only.
    ///
    /// # Errors
    ///
    /// A storage failure.
    pub async fn password_account(
        &self,
        username: &str,
    ) -> Result<Option<(u64, String)>, RouterError> {
        let Some(id) = self.store.user_id_by_name(username).await? else {
            return Ok(None);
        };
        Ok(self
            .store
            .user(id)
            .await?
            .filter(|r| !r.deleted && !r.password_hash.is_empty())
            .map(|r| (id, r.password_hash)))
    }

    /// Changes `user`'s own profile; the username never changes. Returns
    /// the record after the change.
    ///
    /// # Errors
    ///
    /// [`RouterError::NotFound`] for a deleted account; a storage failure.
    pub async fn update_profile(
        &self,
        user: u64,
        change: ProfileChange,
    ) -> Result<UserRecord, RouterError> {
        Ok(self
            .store
            .update_user(user, |r| {
                let fields = [
                    (&change.display_name, &mut r.display_name),
                    (&change.status_text, &mut r.status_text),
                    (&change.avatar_url, &mut r.avatar_url),
                ];
                for (new, old) in fields {
                    if let Some(new) = new {
                        old.clone_from(new);
                    }
                }
            })
            .await?)
    }

    /// Makes sure an account exists for each `(username, display name)`, in
    /// one transaction and without passwords (their users log in with the
    /// application's tokens). A free username gets a new account; a taken
    /// one keeps its account. Answers each one's id and whether this call
    /// made it, in order, so an operator may repeat the call safely.
    ///
    /// # Errors
    ///
    /// [`RouterError::InvalidArgument`] for none or more than
    /// [`MAX_PROVISION_BATCH`], or an empty username; a storage failure.
    pub async fn provision_accounts(
        &self,
        accounts: Vec<(String, String)>,
    ) -> Result<Vec<(u64, bool)>, RouterError> {
        if accounts.is_empty() || accounts.len() > MAX_PROVISION_BATCH {
            return Err(RouterError::InvalidArgument(
                "users: 1 to 1000 accounts per batch",
            ));
        }
        let created_at = self.now_ms();
        let records: Vec<(u64, UserRecord)> = accounts
            .into_iter()
            .map(|(username, display_name)| {
                let record = UserRecord {
                    username,
                    display_name,
                    created_at,
                    ..UserRecord::default()
                };
                (self.ids.next_above(0), record)
            })
            .collect();
        Ok(self.store.ensure_users(&records).await?)
    }
}
