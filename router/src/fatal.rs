//! Panics the node cannot serve through.
//!
//! A panic in most tasks ends that task alone: a connection closes, a
//! request fails. In the single-writer appender it would leave the node
//! serving with a guarantee broken — a commit task that panicked after its
//! batch was stored would skip that batch's live deliveries while later
//! batches go out past it, and an appender loop that panicked would refuse
//! every send from then on. A restarted node serves everything stored and
//! its clients resync from their cursors, so ending the process loses
//! nothing that carrying on would keep.

use std::cell::Cell;
use std::future::Future;

thread_local! {
    /// How many [`guarded`] futures this thread is polling.
    static POLLING: Cell<u32> = const { Cell::new(0) };
}

/// Aborts the process when dropped while its thread unwinds from a panic
/// raised in the poll of a [`guarded`] future.
///
/// Held as the first local of the task it guards, it is the first thing
/// the unwinding drops: the abort comes before the task's other values
/// (its senders' replies, the signal that releases the next batch's
/// deliveries) are dropped and seen by other threads. A task's future
/// dropped outside a poll while some other code panics (a current-thread
/// runtime dropped by a failing test drops every task on that thread)
/// does not abort. The panic's own message is printed by the panic hook
/// before unwinding reaches the guard.
pub(crate) struct AbortOnPanic(pub(crate) &'static str);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() && POLLING.with(Cell::get) > 0 {
            tracing::error!(task = self.0, "panicked; aborting the node");
            std::process::abort();
        }
    }
}

/// Runs `task`, marking this thread as polling it for the
/// [`AbortOnPanic`] guard the task holds.
pub(crate) async fn guarded<F: Future>(task: F) -> F::Output {
    let mut task = std::pin::pin!(task);
    std::future::poll_fn(|cx| {
        POLLING.with(|p| p.set(p.get() + 1));
        let out = task.as_mut().poll(cx);
        // Not reached when the poll unwinds: the guard has aborted by then.
        POLLING.with(|p| p.set(p.get() - 1));
        out
    })
    .await
}
