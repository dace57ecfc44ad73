//! A panic in the single-writer appender ends the node instead of leaving
//! it serving with a batch's live deliveries skipped: the child process
//! (this test binary, re-run with `--ignored --exact panicking_child`)
//! stores a message, its delivery sink panics, and the process must die of
//! SIGABRT with the message durable. A panic anywhere else does not: a
//! failing check in a program that runs a router ends as that panic.

#[allow(dead_code)]
mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;

use common::{child, child_command, child_dir, inbox, open_store, text, users, Engine};
use hanmadi_router::{Delivery, DeliverySink, LocalPresence, Router, RouterConfig, Target};

const BODY: &str = "delivered by a sink that panics";
/// Where the parent tells the child its data directory.
const DIR_VAR: &str = "HANMADI_ROUTER_PANIC_DIR";

/// Where the parent tells the child of the second test its data directory.
const FAILING_DIR_VAR: &str = "HANMADI_ROUTER_FAILING_DIR";
/// What that child's failing check says.
const FAILED_CHECK: &str = "a failing check beside a running router";

/// A sink with a bug: it panics on the first delivery.
struct PanickingSink;

impl DeliverySink for PanickingSink {
    fn deliver(&self, _: &Delivery<'_>) {
        panic!("a bug in the delivery sink");
    }

    fn notify(&self, _: u64) {}
}

/// A sink that delivers nowhere.
struct NoSink;

impl DeliverySink for NoSink {
    fn deliver(&self, _: &Delivery<'_>) {}

    fn notify(&self, _: u64) {}
}

/// A router over the store in `dir`, with users 1 and 2, delivering to
/// `sink`.
async fn start_router(
    dir: &std::path::Path,
    sink: Arc<dyn DeliverySink>,
) -> (Router<Engine>, tokio::task::JoinHandle<()>) {
    let store = open_store(dir);
    users(&store, &[1, 2]).await;
    Router::start(
        store,
        Arc::new(LocalPresence::new()),
        sink,
        RouterConfig::default(),
    )
}

/// Runs the child test `name` to its end, on a fresh data directory
/// (returned, so the parent can read it after): its exit status, standard
/// output and standard error.
fn run_child(name: &str, var: &str) -> (tempfile::TempDir, ExitStatus, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = child_command(name, var, dir.path())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (dir, out.status, stdout, stderr)
}

#[test]
#[ignore = "run by a_panic_after_the_commit_aborts_with_the_message_stored as a child process"]
fn panicking_child() {
    let Some((dir, rt)) = child(DIR_VAR) else {
        return;
    };
    rt.block_on(async move {
        let (router, _task) = start_router(&dir, Arc::new(PanickingSink)).await;
        // The answer never comes: the commit task aborts the process
        // between the commit and the deliveries.
        let outcome = router.send(1, text("m1", Target::User(2), BODY)).await;
        println!("ANSWERED {outcome:?}");
    });
}

#[test]
fn a_panic_after_the_commit_aborts_with_the_message_stored() {
    // SIGABRT's number on Linux.
    const SIGABRT: i32 = 6;
    let (dir, status, stdout, stderr) = run_child("panicking_child", DIR_VAR);
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the child aborts ({status:?}); stdout: {stdout}; stderr: {stderr}"
    );
    assert!(!stdout.contains("ANSWERED"), "no answer: {stdout}");
    assert!(stderr.contains("a bug in the delivery sink"), "{stderr}");

    // Restarted, the store has the message: ending the process lost
    // nothing the commit had stored.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let entries = rt.block_on(async {
        let store = open_store(dir.path());
        inbox(&store, 2, None).await
    });
    assert_eq!(
        entries.len(),
        1,
        "the message was committed before the panic"
    );
    assert_eq!(entries[0].1.body, BODY);
}

#[test]
#[ignore = "run by a_panic_outside_the_appender_stays_a_panic as a child process"]
fn failing_child() {
    let Some(dir) = child_dir(FAILING_DIR_VAR) else {
        return;
    };
    // A current-thread runtime, as `#[tokio::test]` builds: unwinding out
    // of `block_on` drops it, and with it the appender's tasks, on the
    // panicking thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (router, _task) = start_router(&dir, Arc::new(NoSink)).await;
        router
            .send(1, text("m1", Target::User(2), BODY))
            .await
            .expect("sent");
        panic!("{FAILED_CHECK}");
    });
}

#[test]
fn a_panic_outside_the_appender_stays_a_panic() {
    let (_dir, status, stdout, stderr) = run_child("failing_child", FAILING_DIR_VAR);
    // The test harness's exit status for a failed test; an abort would be
    // a signal instead.
    assert_eq!(
        status.code(),
        Some(101),
        "the child fails its test ({status:?}); stdout: {stdout}; stderr: {stderr}"
    );
    assert!(stderr.contains(FAILED_CHECK), "{stderr}");
    assert!(!stderr.contains("aborting the node"), "{stderr}");
}
