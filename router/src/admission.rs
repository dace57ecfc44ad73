//! Admission by waiting time: the appender refuses sends that would wait
//! too long, before its queue is full.
//!
//! A queue bounded by count bounds memory, not waiting: on a node whose
//! commits have slowed (a FoundationDB cluster shared by several nodes,
//! conversations whose transactions conflict and retry) thousands of
//! queued sends can mean many seconds, and senders time out on sends that
//! are later stored. Like CoDel, the appender watches how long its sends
//! take from admission to answer, and the signal is the *fastest* of them
//! over a window: when not one send in [`WINDOW`] was answered within
//! `max_wait`, the wait is standing, not a burst passing through. While it
//! stands, a new send is refused with `BUSY` once `floor` sends are in
//! flight; the sends already admitted keep the node committing at its
//! maximum, and as their answers come back faster the refusals stop. A
//! node whose commits have stopped altogether answers nothing, so no
//! window closes: there, `floor` sends in flight and no answer for
//! `max_wait` refuse as well.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The span over which the fastest answer is taken.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);

/// Decides whether a send may join the appender's queue.
#[derive(Debug)]
pub(crate) struct Admission {
    max_wait: Duration,
    floor: usize,
    in_flight: AtomicUsize,
    overloaded: AtomicBool,
    /// When the last batch was answered, or sends began to be in flight
    /// after none were, in microseconds after `born`.
    progress_us: AtomicU64,
    born: Instant,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    fastest: Duration,
}

impl Admission {
    /// Refuses sends while answers take longer than `max_wait` (zero
    /// never refuses) and at least `floor` sends (at least one) are in
    /// flight.
    pub(crate) fn new(max_wait: Duration, floor: usize) -> Arc<Self> {
        Arc::new(Self {
            max_wait,
            // With nothing in flight nothing would be answered, and a
            // standing wait would never be seen to end.
            floor: floor.max(1),
            in_flight: AtomicUsize::new(0),
            overloaded: AtomicBool::new(false),
            progress_us: AtomicU64::new(0),
            born: Instant::now(),
            window: Mutex::new(Window {
                start: Instant::now(),
                fastest: Duration::MAX,
            }),
        })
    }

    /// Whether a new send is let in now.
    pub(crate) fn admits(&self) -> bool {
        if self.max_wait.is_zero() || self.in_flight.load(Ordering::Relaxed) < self.floor {
            return true;
        }
        if self.overloaded.load(Ordering::Relaxed) {
            return false;
        }
        let answered = Duration::from_micros(self.progress_us.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(answered) <= self.max_wait
    }

    /// Counts a send in flight until the ticket is dropped.
    pub(crate) fn ticket(self: &Arc<Self>) -> Ticket {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            // Idle until now: a burst is not a stall.
            self.progress();
        }
        Ticket {
            admission: Arc::clone(self),
            at: Instant::now(),
        }
    }

    fn progress(&self) {
        let now_us = u64::try_from(self.born.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.progress_us.store(now_us, Ordering::Relaxed);
    }

    /// Notes that a batch whose youngest send was admitted at `youngest`
    /// is being answered.
    fn answered(&self, youngest: Instant) {
        if self.max_wait.is_zero() {
            return;
        }
        let took = youngest.elapsed();
        self.progress();
        let mut window = self.window.lock();
        window.fastest = window.fastest.min(took);
        if window.start.elapsed() >= WINDOW {
            self.overloaded
                .store(window.fastest > self.max_wait, Ordering::Relaxed);
            window.start = Instant::now();
            window.fastest = Duration::MAX;
        }
    }
}

/// A send in flight, from admission to its answer.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    at: Instant,
}

impl Ticket {
    /// Reports how long this send took; called for the youngest send of
    /// each answered batch (batches keep their sends in arrival order).
    pub(crate) fn answered(&self) {
        self.admission.answered(self.at);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past(admission: &Arc<Admission>, ago: Duration) -> Ticket {
        let mut t = admission.ticket();
        t.at = Instant::now().checked_sub(ago).expect("clock");
        t
    }

    fn close_window(admission: &Admission) {
        let mut w = admission.window.lock();
        w.start = Instant::now().checked_sub(WINDOW).expect("clock");
    }

    #[test]
    fn a_window_without_a_fast_answer_refuses_past_the_floor() {
        let a = Admission::new(Duration::from_millis(500), 2);
        let slow = past(&a, Duration::from_secs(2));
        close_window(&a);
        slow.answered();
        // One in flight: under the floor, still admitted.
        assert!(a.admits());
        let _second = a.ticket();
        assert!(!a.admits(), "two in flight and every answer slow");
        drop(slow);
        assert!(a.admits(), "back under the floor");
    }

    #[test]
    fn one_fast_answer_in_the_window_keeps_admitting() {
        let a = Admission::new(Duration::from_millis(500), 1);
        let _held = a.ticket();
        past(&a, Duration::from_secs(2)).answered();
        a.ticket().answered();
        close_window(&a);
        past(&a, Duration::from_secs(2)).answered();
        assert!(a.admits());
        // The next window has only slow answers.
        close_window(&a);
        past(&a, Duration::from_secs(2)).answered();
        assert!(!a.admits());
        // And then fast ones again.
        close_window(&a);
        a.ticket().answered();
        assert!(a.admits());
    }

    /// An admission created `age` ago that has answered nothing since.
    fn aged(max_wait: Duration, floor: usize, age: Duration) -> Arc<Admission> {
        let mut a = Arc::try_unwrap(Admission::new(max_wait, floor)).expect("sole owner");
        a.born = Instant::now().checked_sub(age).expect("clock");
        Arc::new(a)
    }

    #[test]
    fn no_answer_at_all_for_longer_than_max_wait_refuses_past_the_floor() {
        let a = aged(Duration::from_millis(50), 2, Duration::from_secs(1));
        let first = a.ticket();
        let second = a.ticket();
        assert!(a.admits(), "sends began just now: a burst, not a stall");
        a.progress_us.store(0, Ordering::Relaxed);
        assert!(!a.admits(), "a second without an answer, two in flight");
        drop(second);
        assert!(a.admits(), "under the floor");
        first.answered();
        let _again = a.ticket();
        assert!(a.admits(), "answered just now");
    }

    #[test]
    fn a_floor_of_zero_admits_one_so_the_wait_can_end() {
        let a = Admission::new(Duration::from_millis(500), 0);
        close_window(&a);
        past(&a, Duration::from_secs(2)).answered();
        assert!(a.admits(), "nothing in flight");
    }

    #[test]
    fn zero_never_refuses() {
        let a = Admission::new(Duration::ZERO, 0);
        close_window(&a);
        past(&a, Duration::from_secs(60)).answered();
        assert!(a.admits());
    }
}
