//! Password hashing: argon2id PHC strings, a bounded number at once
//! (DESIGN §7).
//!
//! A hash takes tens of milliseconds of CPU and ~19 MiB of memory by design,
//! so these bound it:
//!
//! - **Permits.** At most `concurrent` hashes run at once; a request waits a
//!   short while for its turn and is then refused as busy rather than left
//!   waiting.
//! - **Two budgets.** Sign-ups may hold at most half of the permits, so a
//!   flood of sign-ups (anyone can send them) leaves log-ins of existing
//!   users room to run. Log-ins may use every permit.
//! - **One at a time per address.** A remote address (IPv6: its /64) has
//!   at most [`HASHES_PER_ADDRESS`] hashes running or waiting for a permit;
//!   its further requests wait their turn behind them, within the same
//!   wait. A flood from one address (up to its HTTP request rate, which
//!   could ask for more hashes a second than the cores can run) then holds
//!   one permit, and requests from other addresses take the rest in turn.
//! - **A fixed pool of threads.** Hashes run on `concurrent` threads of
//!   their own, not on tokio's blocking pool. glibc gives each thread that
//!   allocates an arena of its own and keeps freed memory there; with hashes
//!   spread over the blocking pool's many threads, every one of them kept
//!   its 19 MiB, and a node's RSS grew by hundreds of MiB over a few hundred
//!   sign-ups (docs/PERFORMANCE.md has the figures).
//! - **Below the chat path.** The hashing threads run at a lower priority
//!   (niceness [`HASH_NICENESS`]): a sign-up flood keeps them busy, and at
//!   the default priority they took a core of two from sends and
//!   deliveries. Log-ins then wait for a core the chat path leaves, which
//!   is the right way round.

use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Niceness of the hashing threads: the scheduler gives a thread at 10
/// about a tenth of the share of one at the default 0 when both want a
/// core.
pub const HASH_NICENESS: i32 = 10;

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

/// Hashes one remote address may have running or waiting for a permit.
pub const HASHES_PER_ADDRESS: usize = 1;

/// A unit of hashing work for the pool.
type Job = Box<dyn FnOnce() + Send>;

/// Hashes and verifies passwords, a bounded number at a time.
#[derive(Debug)]
pub struct Passwords {
    /// One per hash running; log-ins take only this.
    permits: Arc<Semaphore>,
    /// Sign-ups take one of these before a permit, so they never hold more
    /// than half of the permits.
    sign_up_permits: Arc<Semaphore>,
    /// Longest a request waits for a permit before it is refused.
    wait: Duration,
    /// Feeds the hashing threads; they end when it is dropped.
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Each remote address's turns, while it has a request hashing or
    /// waiting.
    turns: Arc<DashMap<IpAddr, Arc<Semaphore>>>,
}

/// A remote address's turn at hashing; when the address has no other
/// request hashing or waiting, dropping it forgets the address.
struct Turn {
    turns: Arc<DashMap<IpAddr, Arc<Semaphore>>>,
    address: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.permit = None;
        // Under the map's shard lock, where a new request of this address
        // would take its clone: a count of one is the map's own.
        self.turns
            .remove_if(&self.address, |_, turn| Arc::strong_count(turn) == 1);
    }
}

/// Lowers the calling thread's priority to [`HASH_NICENESS`]; where that
/// is not possible hashing simply runs at the default priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: neither call takes a pointer. On Linux a thread id with
        // PRIO_PROCESS names that one thread, so only it is reniced.
        let tid = unsafe { libc::gettid() };
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HASH_NICENESS) };
    }
}

impl Passwords {
    /// At most `concurrent` hashes at once (at least one), sign-ups at most
    /// half of them (at least one); a request waits up to `wait` for its
    /// turn. Starts `concurrent` hashing threads.
    ///
    /// # Panics
    ///
    /// When the OS refuses to start a thread, as `std::thread::spawn` does.
    pub fn new(concurrent: usize, wait: Duration) -> Self {
        let concurrent = concurrent.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..concurrent {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only to take one job, never while
                        // hashing.
                        let job = queue.lock().recv();
                        match job {
                            // A panicking hash drops its answer channel, which
                            // the caller reports as `Failed`; the thread lives
                            // on.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(mpsc::RecvError) => return,
                        }
                    }
                })
                .expect("start a password hashing thread");
        }
        Self {
            permits: Arc::new(Semaphore::new(concurrent)),
            sign_up_permits: Arc::new(Semaphore::new((concurrent / 2).max(1))),
            wait,
            jobs: Mutex::new(jobs),
            turns: Arc::default(),
        }
    }

    /// One hash per core: hashing is pure CPU, more at once only queues
    /// them.
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Hashes `password` into an argon2id PHC string with a fresh salt,
    /// for a sign-up from `from` (a remote address, when there is one):
    /// within the sign-up budget, in the address's turn.
    ///
    /// # Errors
    ///
    /// [`PasswordError::Busy`] when no permit comes within the wait.
    pub async fn hash(
        &self,
        password: String,
        from: Option<IpAddr>,
    ) -> Result<String, PasswordError> {
        let deadline = Instant::now() + self.wait;
        let turn = self.turn(from, deadline).await?;
        let sign_up =
            tokio::time::timeout_at(deadline, Arc::clone(&self.sign_up_permits).acquire_owned())
                .await
                .map_err(|_| PasswordError::Busy)?
                // The semaphore is never closed.
                .map_err(|_| PasswordError::Busy)?;
        self.run(deadline, (turn, sign_up), move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Failed(e.to_string()))
        })
        .await?
    }

    /// Whether `password` matches the stored PHC string `stored`, for a
    /// log-in from `from` (a remote address, when there is one), in the
    /// address's turn. With no stored hash (an unknown user) it still
    /// spends one hash and answers false, so response time does not tell
    /// which usernames exist.
    ///
    /// # Errors
    ///
    /// [`PasswordError::Busy`] when no permit comes within the wait.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
        from: Option<IpAddr>,
    ) -> Result<bool, PasswordError> {
        let deadline = Instant::now() + self.wait;
        let turn = self.turn(from, deadline).await?;
        self.run(deadline, turn, move || {
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

    /// Waits until `from` has a turn at hashing, by `deadline`; a request
    /// from no address (an in-process caller) needs none.
    async fn turn(
        &self,
        from: Option<IpAddr>,
        deadline: Instant,
    ) -> Result<Option<Turn>, PasswordError> {
        let Some(address) = from else {
            return Ok(None);
        };
        let turns = Arc::clone(
            &self
                .turns
                .entry(address)
                .or_insert_with(|| Arc::new(Semaphore::new(HASHES_PER_ADDRESS))),
        );
        // Made before the wait, so a request refused as busy forgets the
        // address too when it was the last.
        let mut turn = Turn {
            turns: Arc::clone(&self.turns),
            address,
            permit: None,
        };
        turn.permit = Some(
            tokio::time::timeout_at(deadline, turns.acquire_owned())
                .await
                .map_err(|_| PasswordError::Busy)?
                // The semaphore is never closed.
                .map_err(|_| PasswordError::Busy)?,
        );
        Ok(Some(turn))
    }

    /// Addresses with a request hashing or waiting.
    #[must_use]
    pub fn addresses_in_turn(&self) -> usize {
        self.turns.len()
    }

    /// Takes a permit by `deadline`, then runs `work` on a hashing thread,
    /// holding `held` (the request's turn and budget) until it is done.
    async fn run<T: Send + 'static>(
        &self,
        deadline: Instant,
        held: impl Send + 'static,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|_| PasswordError::Busy)?;
        let (answer, answered) = oneshot::channel();
        // The permit, turn and budget go with the job: a request dropped
        // while its hash runs (the client hung up, the deadline passed)
        // must not free them for the next request while the hash still
        // holds a core.
        let job: Job = Box::new(move || {
            let out = work();
            // Released before answering, so a caller that saw the answer
            // sees them back.
            drop(permit);
            drop(held);
            let _ = answer.send(out);
        });
        self.jobs
            .lock()
            .send(job)
            .map_err(|_| PasswordError::Failed("hashing threads are gone".into()))?;
        answered
            .await
            .map_err(|_| PasswordError::Failed("the hash panicked".into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_below_the_chat_path() {
        // SAFETY: neither call takes a pointer.
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let p = Passwords::new(1, Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // SAFETY: neither call takes a pointer; the thread id names the
        // hashing thread the closure runs on.
        let niceness = p
            .run(deadline, (), || unsafe {
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
            })
            .await
            .unwrap();
        assert_eq!(niceness, HASH_NICENESS);
        // The tokio thread that asked is left as it was.
        // SAFETY: as above.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert_eq!(own, before);
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_fail() {
        let p = Passwords::new(2, Duration::from_secs(5));
        let phc = p.hash("correct horse".into(), None).await.expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(p
            .verify("correct horse".into(), Some(phc.clone()), None)
            .await
            .expect("verify"));
        assert!(!p
            .verify("wrong horse".into(), Some(phc), None)
            .await
            .expect("verify"));
        assert!(!p
            .verify("anything".into(), None, None)
            .await
            .expect("verify"));
    }

    #[tokio::test]
    async fn a_sign_up_flood_leaves_permits_for_log_ins() {
        let p = Arc::new(Passwords::new(2, Duration::from_millis(200)));
        // Sign-ups that hold their budget: one of the two permits.
        let _flooding = Arc::clone(&p.sign_up_permits)
            .acquire_owned()
            .await
            .expect("permit");
        let _hashing = Arc::clone(&p.permits)
            .acquire_owned()
            .await
            .expect("permit");
        // Another sign-up waits for the sign-up budget and is refused ...
        assert!(matches!(
            p.hash("password".into(), None).await,
            Err(PasswordError::Busy)
        ));
        // ... while a log-in takes the permit the budget left free.
        assert!(!p
            .verify("password".into(), None, None)
            .await
            .expect("verify"));
    }

    #[tokio::test]
    async fn many_sign_ups_at_once_never_hold_every_permit() {
        let p = Arc::new(Passwords::new(4, Duration::from_secs(30)));
        let sign_ups: Vec<_> = (0..8)
            .map(|i| {
                let p = Arc::clone(&p);
                tokio::spawn(async move { p.hash(format!("password {i}"), None).await })
            })
            .collect();
        // Once the flood holds the whole sign-up budget, half of the
        // permits are still free for log-ins.
        while p.sign_up_permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(p.permits.available_permits() >= 2);
        for s in sign_ups {
            assert!(s.await.expect("join").is_ok());
        }
        assert_eq!(p.permits.available_permits(), 4);
    }

    #[tokio::test]
    async fn refuses_when_no_permit_comes() {
        let p = Passwords::new(1, Duration::from_millis(10));
        let _held = Arc::clone(&p.permits)
            .acquire_owned()
            .await
            .expect("permit");
        assert!(matches!(
            p.hash("password".into(), None).await,
            Err(PasswordError::Busy)
        ));
    }

    #[tokio::test]
    async fn one_address_waits_its_turn_while_others_hash() {
        let p = Arc::new(Passwords::new(2, Duration::from_millis(300)));
        let flooding: IpAddr = [10, 0, 0, 1].into();
        // A request of the flooding address is hashing or waiting ...
        let turn = p
            .turn(Some(flooding), Instant::now() + Duration::from_secs(1))
            .await
            .expect("a turn");
        // ... so its next one waits behind it and is refused ...
        assert!(matches!(
            p.verify("password".into(), None, Some(flooding)).await,
            Err(PasswordError::Busy)
        ));
        // ... while another address, and an in-process caller, hash.
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(!p
            .verify("password".into(), None, Some(other))
            .await
            .expect("verify"));
        assert!(p.hash("password".into(), None).await.is_ok());
        assert_eq!(p.addresses_in_turn(), 1, "only the flooding address");
        drop(turn);
        assert!(!p
            .verify("password".into(), None, Some(flooding))
            .await
            .expect("verify"));
        assert_eq!(p.addresses_in_turn(), 0, "addresses are forgotten");
    }

    #[tokio::test]
    async fn a_dropped_request_keeps_its_turn_until_its_hash_ends() {
        let p = Arc::new(Passwords::new(1, Duration::from_secs(5)));
        let from: IpAddr = [10, 0, 0, 3].into();
        let deadline = Instant::now() + Duration::from_secs(5);
        let turn = p.turn(Some(from), deadline).await.expect("a turn");
        let (finish, finished) = mpsc::channel::<()>();
        let request = tokio::spawn({
            let p = Arc::clone(&p);
            async move {
                p.run(deadline, turn, move || {
                    let _ = finished.recv();
                })
                .await
            }
        });
        while p.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // The client hangs up while its hash runs.
        request.abort();
        assert!(request.await.is_err(), "cancelled");
        assert_eq!(p.addresses_in_turn(), 1, "the hash still holds the turn");
        assert_eq!(p.permits.available_permits(), 0);
        finish.send(()).unwrap();
        // The hashing thread gives both back.
        tokio::time::timeout(Duration::from_secs(5), async {
            while p.addresses_in_turn() > 0 || p.permits.available_permits() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("turn and permit given back");
    }
}
