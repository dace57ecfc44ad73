//! Background work of the store yields the CPU to the commit path.
//!
//! A memtable flush builds a 64 MiB table in a burst (about half a second
//! of a core), and the reaper then frees the flushed memtable (about as
//! much again). On a machine whose cores the node's commit thread, its
//! runtime and its clients already share, that burst took the cores from
//! the commit path every ten seconds at moderate load, and each time every
//! send in flight waited 100–400 ms (docs/PERFORMANCE.md, "Flushes at a
//! lower priority"). Neither kind of work is urgent: a flush has until the
//! next memtable fills, and a free has no deadline at all. So both run at
//! a higher nice value than the rest of the process; a flush still gets
//! its share of a busy machine, only a smaller one.

/// The nice value of the store's background threads by default
/// ([`super::FjallOptions::background_nice`]); the process runs at 0 as a
/// rule.
pub(crate) const DEFAULT_NICE: i32 = 19;

/// Sets the nice value of the calling thread.
pub(super) fn lower_this_thread(nice: i32) {
    lower(0, nice);
}

/// Sets the nice value of every thread of this process named `name`
/// (fjall's worker pool, started when the database opens). Linux keeps 15
/// bytes of a thread's name, so `name` must be no longer.
pub(super) fn lower_threads_named(name: &str, nice: i32) {
    for tid in threads_named(name) {
        lower(tid, nice);
    }
}

/// The ids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .filter_map(|task| task.file_name().to_str().and_then(|t| t.parse().ok()))
        .collect()
}

/// On Linux a thread has a nice value of its own, set by its thread id
/// (`0`: the caller). Raising it needs no privilege; a thread already
/// above `nice` is left there. Failing to change a priority is not worth
/// failing the store for; it is logged.
#[cfg(target_os = "linux")]
fn lower(tid: libc::id_t, nice: i32) {
    if nice_of(tid).is_some_and(|current| current >= nice) {
        return;
    }
    // SAFETY: setpriority reads only its arguments.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if done != 0 {
        tracing::debug!(tid, nice, error = %std::io::Error::last_os_error(), "could not lower a store thread's priority");
    }
}

/// A thread's nice value, `None` when it cannot be read.
#[cfg(target_os = "linux")]
fn nice_of(tid: libc::id_t) -> Option<i32> {
    // SAFETY: getpriority reads only its arguments; errno is this thread's.
    // -1 is a valid nice value, so errno, cleared first, tells it from a
    // failure.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        (*libc::__errno_location() == 0).then_some(nice)
    }
}

#[cfg(not(target_os = "linux"))]
fn lower(_tid: u32, _nice: i32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_named_thread_is_lowered_and_the_caller_is_not() {
        let (ready, wait) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hanmadi-nice".into())
            .spawn(move || {
                // SAFETY: gettid has no arguments.
                let tid = unsafe { libc::gettid() };
                ready.send(tid).expect("test waits");
                let _ = stopped.recv();
            })
            .expect("spawn");
        let tid = wait.recv().expect("thread started");
        let before = nice_of(0).expect("readable");
        lower_threads_named("hanmadi-nice", before + 3);
        let tid = libc::id_t::try_from(tid).expect("positive tid");
        // Should the scan ever miss the thread, the failure says what the
        // thread was called and what the scan found instead.
        let seen = || {
            let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"));
            format!(
                "thread {tid} named {comm:?}, the scan finds {:?}",
                threads_named("hanmadi-nice")
            )
        };
        assert_eq!(nice_of(tid), Some(before + 3), "{}", seen());
        assert_eq!(nice_of(0), Some(before));
        // Never back up: a lower value would need privilege, and the
        // operator may have set the higher one.
        lower_threads_named("hanmadi-nice", before + 1);
        assert_eq!(nice_of(tid), Some(before + 3));
        drop(stop);
        thread.join().expect("joined");
    }
}
