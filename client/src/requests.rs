//! Requests in flight: `req_id` allocation, one waiter per request, and the
//! connection's end, which fails every waiter at once.
//!
//! Shared by the [`crate::Client`] handles, which register waiters, and the
//! connection task, which completes them. One lock guards both the waiters
//! and the closed flag, so a request can never register after the task has
//! failed the waiters and then wait for an answer nobody will route.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hanmadi_proto::server_frame;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::ClientError;

/// What a waiter receives: the answer's kind (an `Error` included), or why
/// the connection ended first.
pub(crate) type Reply = Result<server_frame::Kind, ClientError>;

/// The requests of one connection.
#[derive(Debug)]
pub(crate) struct Requests {
    /// The next `req_id`; starts at 1 because 0 means "no answer matched".
    next_req_id: AtomicU64,
    /// Waiters and the closed flag, under one lock (see the module docs).
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// One entry per request awaiting its answer.
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
    /// `Some` once the connection has ended, holding why (`None`: cleanly).
    closed: Option<Option<ClientError>>,
}

impl Requests {
    pub(crate) fn new() -> Self {
        Self {
            next_req_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        }
    }

    /// A fresh, non-zero `req_id`.
    pub(crate) fn next_req_id(&self) -> u64 {
        loop {
            let id = self.next_req_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Registers a waiter for `req_id`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] once the connection has ended.
    pub(crate) fn register(&self, req_id: u64) -> Result<oneshot::Receiver<Reply>, ClientError> {
        let mut state = self.state.lock();
        if let Some(cause) = &state.closed {
            return Err(ClientError::closed(cause.clone()));
        }
        let (sender, receiver) = oneshot::channel();
        state.waiters.insert(req_id, sender);
        Ok(receiver)
    }

    /// Drops the waiter of a request that stopped waiting (timed out or was
    /// cancelled), so its late answer is ignored and the map stays small.
    pub(crate) fn forget(&self, req_id: u64) {
        self.state.lock().waiters.remove(&req_id);
    }

    /// Takes the waiter for an answer, if the request still waits.
    pub(crate) fn take(&self, req_id: u64) -> Option<oneshot::Sender<Reply>> {
        self.state.lock().waiters.remove(&req_id)
    }

    /// Marks the connection ended and fails every waiter with
    /// [`ClientError::Closed`]. The first call wins; later ones (the task's
    /// drop guard) change nothing.
    pub(crate) fn close(&self, cause: Option<ClientError>) {
        let waiters = {
            let mut state = self.state.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(cause.clone());
            std::mem::take(&mut state.waiters)
        };
        let error = ClientError::closed(cause);
        for (_, waiter) in waiters {
            // A waiter that gave up meanwhile has dropped its receiver.
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// The error for a request on a connection that has ended.
    pub(crate) fn closed_error(&self) -> ClientError {
        ClientError::closed(self.close_cause())
    }

    /// Why the connection ended; `None` while open or after a clean close.
    pub(crate) fn close_cause(&self) -> Option<ClientError> {
        self.state.lock().closed.clone().flatten()
    }
}

/// Forgets a request's waiter when the request stops waiting for any reason.
pub(crate) struct Forget<'a> {
    pub(crate) requests: &'a Requests,
    pub(crate) req_id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.requests.forget(self.req_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_fails_waiters_and_refuses_new_ones() {
        let requests = Requests::new();
        let first = requests.next_req_id();
        let mut waiter = requests
            .register(first)
            .expect("open connection accepts waiters");
        requests.close(Some(ClientError::Protocol(String::from("bye"))));
        let reply = waiter.try_recv().expect("waiter was answered");
        assert!(matches!(reply, Err(ClientError::Closed { cause: Some(_) })));
        assert!(matches!(
            requests.register(requests.next_req_id()),
            Err(ClientError::Closed { .. })
        ));
        // The first close is the one that counts.
        requests.close(None);
        assert!(matches!(
            requests.close_cause(),
            Some(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn req_ids_are_never_zero() {
        let requests = Requests::new();
        requests.next_req_id.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(requests.next_req_id(), u64::MAX);
        assert_eq!(requests.next_req_id(), 1);
    }

    #[test]
    fn forget_drops_the_waiter() {
        let requests = Requests::new();
        let id = requests.next_req_id();
        let _waiter = requests.register(id).expect("open");
        {
            let _forget = Forget {
                requests: &requests,
                req_id: id,
            };
        }
        assert!(requests.take(id).is_none());
    }
}
