//! Password hashing: argon2id PHC strings, a bounded number at once
//! (DESIGN §7).
//!
//! A hash takes tens of milliseconds of CPU and ~19 MiB of memory by design,
//! so hashes run on the blocking pool behind a semaphore: a burst of sign-ups
//! or log-ins queues for a permit instead of starving the runtime, and one
//! that cannot get a permit soon is refused as busy rather than left waiting.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use tokio::sync::Semaphore;

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every permit stayed taken for the whole wait: try again shortly.
    #[error("too many password checks in progress; try again shortly")]
    Busy,
    /// The hashing task failed (a panic or a hasher error), never the
    /// client's fault.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// How long a request waits for a hashing permit by default: past a few
/// seconds the client is better told the node is busy.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// Hashes and verifies passwords, a bounded number at a time.
#[derive(Debug)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Longest a request waits for a permit before it is refused.
    wait: Duration,
}

impl Passwords {
    /// At most `concurrent` hashes at once (at least one); a request waits up
    /// to `wait` for its turn.
    pub fn new(concurrent: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrent.max(1))),
            wait,
        }
    }

    /// One hash per core: hashing is pure CPU, more at once only queues
    /// them inside the blocking pool.
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Hashes `password` into an argon2id PHC string with a fresh salt.
    ///
    /// # Errors
    ///
    /// [`PasswordError::Busy`] when no permit comes within the wait.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Failed(e.to_string()))
        })
        .await?
    }

    /// Whether `password` matches the stored PHC string `stored`. With no
    /// stored hash (an unknown user) it still spends one hash and answers
    /// false, so response time does not tell which usernames exist.
    ///
    /// # Errors
    ///
    /// [`PasswordError::Busy`] when no permit comes within the wait.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        self.run(move || {
            let argon2 = Argon2::default();
            match stored {
                Some(phc) => argon2
                    .verify_password(password.as_bytes(), phc.as_str())
                    .is_ok(),
                None => {
                    // Same parameters as a real verification: same cost.
                    let _ = argon2.hash_password(password.as_bytes());
                    false
                }
            }
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            // The semaphore is never closed.
            .map_err(|_| PasswordError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| PasswordError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_fail() {
        let p = Passwords::new(2, Duration::from_secs(5));
        let phc = p.hash("correct horse".into()).await.expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(p
            .verify("correct horse".into(), Some(phc.clone()))
            .await
            .expect("verify"));
        assert!(!p
            .verify("wrong horse".into(), Some(phc))
            .await
            .expect("verify"));
        assert!(!p.verify("anything".into(), None).await.expect("verify"));
    }

    #[tokio::test]
    async fn refuses_when_no_permit_comes() {
        let p = Passwords::new(1, Duration::from_millis(10));
        let _held = Arc::clone(&p.permits)
            .acquire_owned()
            .await
            .expect("permit");
        assert!(matches!(
            p.hash("password".into()).await,
            Err(PasswordError::Busy)
        ));
    }
}
