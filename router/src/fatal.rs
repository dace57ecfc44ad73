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

/// Aborts the process when dropped while its thread unwinds from a panic.
///
/// The panic's own message is printed by the panic hook before unwinding
/// reaches the guard.
pub(crate) struct AbortOnPanic(pub(crate) &'static str);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(task = self.0, "panicked; aborting the node");
            std::process::abort();
        }
    }
}
