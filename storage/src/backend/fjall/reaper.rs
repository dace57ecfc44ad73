//! Frees fjall's flushed memtables on a thread of our own.
//!
//! When a sealed memtable has been flushed to a table, fjall drops its last
//! reference while holding the keyspace's version lock, and every write and
//! every read of the keyspace waits on that lock. Freeing a memtable means
//! freeing each node of its skip list: about 120 ms of CPU for 64 MiB on
//! this project's reference machine, measured as a stall of every commit and
//! every read once per memtable (docs/PERFORMANCE.md, "Stalls").
//!
//! The reaper holds its own reference to each memtable while it is active,
//! sealed or being flushed. Once fjall lets go of one (the reaper's is the
//! only reference left) nothing can reach it again, so the reaper drops it
//! here, outside every lock of fjall's. A memtable that came and went
//! between two looks is freed by fjall as before: slower, never wrong.

use std::any::Any;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::fjall::{AbstractTree, Keyspace};

/// How often the reaper looks. A memtable lives for seconds at the very
/// least (it fills megabytes), so this misses none.
const PERIOD: Duration = Duration::from_millis(20);

/// The reaper thread; it stops and is joined when this is dropped.
pub(super) struct Reaper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Starts reaping the memtables of `keyspace`, on a thread at nice
    /// value `nice` (see [`super::priority`]).
    pub(super) fn start(keyspace: Keyspace, nice: i32) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel();
        let (lowered, is_lowered) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hanmadi-reaper".into())
            .spawn(move || {
                super::priority::lower_this_thread(nice);
                let _ = lowered.send(());
                run(&keyspace, &stopped);
            })?;
        // Once the store is open, all of its background threads run lower.
        let _ = is_lowered.recv();
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the channel wakes the thread; joining it releases its
        // handle on the keyspace before the database can be opened again.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A memtable, type-erased: the reaper only counts references and drops.
type Held = Arc<dyn Any + Send + Sync>;

fn run(keyspace: &Keyspace, stopped: &mpsc::Receiver<()>) {
    let mut held: Vec<Held> = Vec::new();
    loop {
        look(&mut held, keyspace.tree.active_memtable());
        match stopped.recv_timeout(PERIOD) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One look: takes a reference to the `active` memtable if it is new, and
/// frees every held one that nobody else refers to any more.
fn look(held: &mut Vec<Held>, active: Held) {
    if !held.last().is_some_and(|last| Arc::ptr_eq(last, &active)) {
        held.push(active);
    }
    // A count of one is the reaper's own: fjall has let go, and no new
    // reference can be made to a memtable it no longer lists.
    held.retain(|memtable| Arc::strong_count(memtable) > 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memtable() -> Held {
        Arc::new(vec![0_u8; 16])
    }

    #[test]
    fn frees_a_memtable_once_only_the_reaper_holds_it() {
        let mut held = Vec::new();
        // fjall's own references, as its version list would hold them.
        let first = memtable();
        look(&mut held, Arc::clone(&first));
        look(&mut held, Arc::clone(&first));
        assert_eq!(held.len(), 1, "the same active memtable is held once");

        let second = memtable();
        look(&mut held, Arc::clone(&second));
        assert_eq!(
            held.len(),
            2,
            "a sealed memtable stays held while fjall holds it"
        );

        let freed = Arc::downgrade(&first);
        drop(first);
        assert!(freed.upgrade().is_some(), "the reaper keeps it alive");
        look(&mut held, Arc::clone(&second));
        assert!(freed.upgrade().is_none(), "the reaper freed it");
        assert_eq!(held.len(), 1);
        assert!(Arc::ptr_eq(&held[0], &second));
    }

    #[test]
    fn stops_and_releases_the_keyspace_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        for _ in 0..2 {
            // Reopening fails while any handle on the database is alive.
            let backend = crate::backend::fjall::FjallBackend::open(
                &path,
                crate::backend::fjall::FjallOptions::default(),
            )
            .expect("open");
            drop(backend);
        }
    }
}
