//! The contract of [`Backend`] as checks every on-disk backend runs. A
//! backend's `tests` module invokes [`conformance_tests!`] with a function
//! opening the backend in a directory, which makes one `#[test]` per check,
//! named after it. Checks of one engine's own behaviour stay in that
//! engine's module.
//!
//! Every check opens its backends in a fresh temporary directory.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{Backend, Snapshot, Write};
use crate::kv::KeyValue;

/// Where [`crash_child`] finds its database; unset outside the child.
const CRASH_DIR_VAR: &str = "HANMADI_CRASH_DIR";

pub(crate) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub(crate) fn set(k: &str, v: &str) -> Write {
    Write::Set(b(k), b(v))
}

pub(crate) fn get<B: Backend>(backend: &B, k: &str) -> Option<Bytes> {
    backend.snapshot().get(k.as_bytes()).unwrap()
}

fn keys(pairs: &[KeyValue]) -> Vec<&[u8]> {
    pairs.iter().map(|kv| kv.key.as_ref()).collect()
}

/// Sets, overwrites and clears single keys; clearing a missing key and an
/// empty batch are no-ops.
pub(crate) fn set_get_clear<B: Backend>(open: impl Fn(&Path) -> B) {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    assert_eq!(get(&backend, "a"), None);
    backend
        .apply(&[set("a", "1"), set("b", "2")], false)
        .unwrap();
    assert_eq!(get(&backend, "a"), Some(b("1")));
    assert_eq!(get(&backend, "b"), Some(b("2")));
    backend
        .apply(&[set("a", "3"), Write::Clear(b("b"))], true)
        .unwrap();
    assert_eq!(get(&backend, "a"), Some(b("3")));
    assert_eq!(get(&backend, "b"), None);
    // Clearing a missing key is fine; an empty batch is a no-op.
    backend.apply(&[Write::Clear(b("zz"))], false).unwrap();
    backend.apply(&[], true).unwrap();
    assert_eq!(get(&backend, "a"), Some(b("3")));
}

/// The last of several writes to one key in a batch wins.
pub(crate) fn writes_apply_in_order_within_a_batch<B: Backend>(open: impl Fn(&Path) -> B) {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    backend
        .apply(&[set("k", "1"), set("k", "2")], false)
        .unwrap();
    assert_eq!(get(&backend, "k"), Some(b("2")));
    backend
        .apply(&[set("k", "3"), Write::Clear(b("k"))], false)
        .unwrap();
    assert_eq!(get(&backend, "k"), None);
    backend
        .apply(&[Write::Clear(b("k")), set("k", "4")], false)
        .unwrap();
    assert_eq!(get(&backend, "k"), Some(b("4")));
}

/// `ClearRange` removes `[begin, end)`, in batch order with the other
/// writes; an empty or inverted range removes nothing.
pub(crate) fn clear_range<B: Backend>(open: impl Fn(&Path) -> B) {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    let fill: Vec<Write> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| set(k, k))
        .collect();
    backend.apply(&fill, false).unwrap();
    backend
        .apply(&[Write::ClearRange(b("b"), b("d"))], false)
        .unwrap();
    let all = backend.snapshot().range(b"", b"\xff", 0, false).unwrap();
    assert_eq!(keys(&all), [&b"a"[..], b"d", b"e"]);

    // Inside one batch: a key set before the clear goes, one set after
    // stays; an empty or inverted range clears nothing.
    let batch = [
        set("b1", "x"),
        Write::ClearRange(b("a"), b("e")),
        set("c1", "y"),
        Write::ClearRange(b("e"), b("e")),
        Write::ClearRange(b("z"), b("a")),
    ];
    backend.apply(&batch, true).unwrap();
    let all = backend.snapshot().range(b"", b"\xff", 0, false).unwrap();
    assert_eq!(keys(&all), [&b"c1"[..], b"e"]);
    assert_eq!(all[0].value, b("y"));
}

/// Range reads in both directions, with and without a limit, and over empty
/// and inverted ranges.
pub(crate) fn range_forward_reverse_limit<B: Backend>(open: impl Fn(&Path) -> B) {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    let fill: Vec<Write> = (0..10)
        .map(|i| set(&format!("k{i}"), &i.to_string()))
        .collect();
    backend.apply(&fill, false).unwrap();
    let snap = backend.snapshot();
    let k = |i: u8| vec![b'k', b'0' + i];

    let forward = snap.range(b"k2", b"k7", 0, false).unwrap();
    assert_eq!(keys(&forward), (2..7).map(k).collect::<Vec<_>>());
    assert_eq!(forward[0].value, b("2"));
    let reverse = snap.range(b"k2", b"k7", 0, true).unwrap();
    assert_eq!(keys(&reverse), (2..7).rev().map(k).collect::<Vec<_>>());
    let first = snap.range(b"k2", b"k7", 3, false).unwrap();
    assert_eq!(keys(&first), (2..5).map(k).collect::<Vec<_>>());
    let last = snap.range(b"k2", b"k7", 3, true).unwrap();
    assert_eq!(keys(&last), [k(6), k(5), k(4)]);
    assert_eq!(snap.range(b"k2", b"k7", 100, false).unwrap().len(), 5);
    assert!(snap.range(b"k7", b"k2", 0, false).unwrap().is_empty());
    assert!(snap.range(b"k3", b"k3", 0, true).unwrap().is_empty());
    assert_eq!(snap.range(b"", b"\xff", 0, false).unwrap().len(), 10);
}

/// A snapshot sees no batch applied after it was taken, by key or by range.
pub(crate) fn snapshot_isolation<B: Backend>(open: impl Fn(&Path) -> B) {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path());
    backend
        .apply(&[set("a", "1"), set("b", "1")], false)
        .unwrap();
    let before = backend.snapshot();
    backend
        .apply(&[set("a", "2"), Write::Clear(b("b")), set("c", "2")], true)
        .unwrap();
    assert_eq!(before.get(b"a").unwrap(), Some(b("1")));
    assert_eq!(before.get(b"b").unwrap(), Some(b("1")));
    assert_eq!(before.get(b"c").unwrap(), None);
    assert_eq!(
        keys(&before.range(b"a", b"z", 0, false).unwrap()),
        [&b"a"[..], b"b"]
    );
    let after = backend.snapshot();
    assert_eq!(after.get(b"a").unwrap(), Some(b("2")));
    assert_eq!(
        keys(&after.range(b"a", b"z", 0, true).unwrap()),
        [&b"c"[..], b"a"]
    );
}

/// A reader racing a writer never sees part of a batch.
pub(crate) fn snapshots_see_whole_batches<B: Backend>(open: impl Fn(&Path) -> B) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(open(dir.path()));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (backend, done) = (Arc::clone(&backend), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut checked = 0;
            while !done.load(Ordering::Acquire) || checked == 0 {
                let pairs = backend.snapshot().range(b"", b"\xff", 0, false).unwrap();
                if let Some(first) = pairs.first() {
                    assert_eq!(pairs.len(), 100, "a batch was seen in part");
                    assert!(pairs.iter().all(|kv| kv.value == first.value));
                }
                checked += 1;
            }
        })
    };
    for round in 0..200u32 {
        let batch: Vec<Write> = (0..100u32)
            .map(|i| {
                Write::Set(
                    Bytes::from(format!("k{i:03}")),
                    Bytes::from(round.to_string()),
                )
            })
            .collect();
        backend.apply(&batch, false).unwrap();
    }
    done.store(true, Ordering::Release);
    reader.join().unwrap();
}

/// Synced batches are there after a clean close and reopen, in a directory
/// the backend had to create.
pub(crate) fn synced_batch_survives_reopen<B: Backend>(open: impl Fn(&Path) -> B) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("db");
    {
        let backend = open(&path);
        backend
            .apply(&[set("a", "1"), set("b", "2")], true)
            .unwrap();
        backend
            .apply(&[Write::ClearRange(b("b"), b("c"))], true)
            .unwrap();
    }
    let backend = open(&path);
    assert_eq!(get(&backend, "a"), Some(b("1")));
    assert_eq!(get(&backend, "b"), None);
}

/// The body of the ignored `crash_child` test that
/// [`synced_batch_survives_a_crash`] runs in a child process: commits, then
/// aborts without closing anything. Does nothing when not run as the child.
pub(crate) fn crash_child<B: Backend>(open: impl Fn(&Path) -> B) {
    let Some(path) = std::env::var_os(CRASH_DIR_VAR) else {
        return;
    };
    let backend = open(Path::new(&path));
    backend
        .apply(&[set("a", "1"), set("b", "2")], true)
        .unwrap();
    backend.apply(&[Write::Clear(b("b"))], true).unwrap();
    std::process::abort();
}

/// Synced batches survive the process aborting. Re-runs this test binary
/// with `--exact child_test --ignored`, where `child_test` is the full name
/// of the backend's test that calls [`crash_child`] (such as
/// `backend::fjall::tests::crash_child`). A name that matches no test makes
/// the child exit cleanly, which fails the check.
pub(crate) fn synced_batch_survives_a_crash<B: Backend>(
    open: impl Fn(&Path) -> B,
    child_test: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child_test, "--ignored"])
        .env(CRASH_DIR_VAR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");
    let backend = open(dir.path());
    assert_eq!(get(&backend, "a"), Some(b("1")));
    assert_eq!(get(&backend, "b"), None);
}

/// Defines, in the invoking test module, one `#[test]` per check above,
/// each named after its check and opening the backend with `$open` (an
/// `Fn(&Path) -> B`). It also defines the ignored `crash_child` test that
/// `synced_batch_survives_a_crash` re-runs as its child, found by this
/// module's path as the test harness names it (without the crate).
macro_rules! conformance_tests {
    ($open:expr) => {
        #[test]
        fn set_get_clear() {
            $crate::backend::conformance::set_get_clear($open);
        }

        #[test]
        fn writes_apply_in_order_within_a_batch() {
            $crate::backend::conformance::writes_apply_in_order_within_a_batch($open);
        }

        #[test]
        fn clear_range() {
            $crate::backend::conformance::clear_range($open);
        }

        #[test]
        fn range_forward_reverse_limit() {
            $crate::backend::conformance::range_forward_reverse_limit($open);
        }

        #[test]
        fn snapshot_isolation() {
            $crate::backend::conformance::snapshot_isolation($open);
        }

        #[test]
        fn snapshots_see_whole_batches() {
            $crate::backend::conformance::snapshots_see_whole_batches($open);
        }

        #[test]
        fn synced_batch_survives_reopen() {
            $crate::backend::conformance::synced_batch_survives_reopen($open);
        }

        /// Runs in a child process started by `synced_batch_survives_a_crash`.
        #[test]
        #[ignore = "the child process of synced_batch_survives_a_crash"]
        fn crash_child() {
            $crate::backend::conformance::crash_child($open);
        }

        #[test]
        fn synced_batch_survives_a_crash() {
            // `module_path!()` starts with the crate's name; test names do not.
            let (_crate, module) = module_path!()
                .split_once("::")
                .expect("a test module lies inside the crate");
            let child = format!("{module}::crash_child");
            $crate::backend::conformance::synced_batch_survives_a_crash($open, &child);
        }
    };
}
pub(crate) use conformance_tests;
