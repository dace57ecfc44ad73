//! The store's background threads run at a higher nice value than the
//! rest of the process. This is a test binary of its own: the check reads
//! every thread of the process by name, and a store opened by another
//! test at the same moment would show workers not yet lowered.

#![cfg(target_os = "linux")]

use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};

/// The nice value of each thread of this process named `name`.
fn nice_of_threads_named(name: &str) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .map(|task| {
            let tid: libc::id_t = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse().ok())
                .expect("a thread id");
            // SAFETY: getpriority reads only its arguments; errno is this
            // thread's, cleared first because -1 is a valid nice value.
            let nice = unsafe {
                *libc::__errno_location() = 0;
                let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
                assert_eq!(*libc::__errno_location(), 0, "getpriority of {tid}");
                nice
            };
            (tid.to_string(), nice)
        })
        .collect()
}

#[test]
fn an_opened_store_runs_its_workers_and_reaper_lower() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = FjallOptions::default();
    let _store = FjallBackend::open(dir.path(), options.clone()).expect("open");
    let workers = nice_of_threads_named("fjall:worker");
    assert!(!workers.is_empty(), "fjall started its workers");
    let reaper = nice_of_threads_named("hanmadi-reaper");
    assert_eq!(reaper.len(), 1, "one reaper");
    for (tid, nice) in workers.iter().chain(&reaper) {
        assert!(
            *nice >= options.background_nice,
            "thread {tid} runs at nice {nice}"
        );
    }
}
