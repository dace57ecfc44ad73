//! The KV contract suite on the FoundationDB engine.
//!
//! Runs when the crate is built with feature `foundationdb` and
//! `FDB_CLUSTER_FILE` names an existing cluster file; otherwise every test
//! says it skipped and passes. Each test works under its own key prefix (test
//! name, process id, start time), so runs can share a cluster. One more
//! test needs only the client library: an unreachable cluster and the
//! transaction timeout.

// This binary uses the KV suite of the shared helpers, and the chat
// suite's message builder for the unreachable cluster's send.
#[cfg(feature = "foundationdb")]
#[allow(dead_code)]
mod common;

/// Prints why a test did not run, on both streams so it shows with and
/// without output capture.
fn skip(reason: &str) {
    eprintln!("{reason}");
    println!("{reason}");
}

#[cfg(feature = "foundationdb")]
mod cluster {
    use std::sync::OnceLock;
    use std::time::{SystemTime, UNIX_EPOCH};

    use hanmadi_storage::fdb::FdbKv;

    pub const SKIPPED: &str = "skipped: no FoundationDB cluster";

    /// The engine on the cluster in `FDB_CLUSTER_FILE`, opened once for all
    /// tests of this binary; `None` when no cluster is configured.
    pub fn kv() -> Option<FdbKv> {
        static KV: OnceLock<Option<FdbKv>> = OnceLock::new();
        KV.get_or_init(|| {
            let path = std::env::var("FDB_CLUSTER_FILE").ok()?;
            if !std::path::Path::new(&path).is_file() {
                return None;
            }
            Some(FdbKv::open(Some(&path)).expect("open the FoundationDB cluster"))
        })
        .clone()
    }

    /// A prefix no other test, run or process uses.
    pub fn prefix(test: &str) -> Vec<u8> {
        static RUN: OnceLock<String> = OnceLock::new();
        let run = RUN.get_or_init(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}-{nanos}", std::process::id())
        });
        format!("hanmadi-test/kv/{run}/{test}/").into_bytes()
    }
}

/// One test per suite check, so each passes, fails or skips on its own.
macro_rules! kv_contract_tests {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            #[cfg(feature = "foundationdb")]
            match cluster::kv() {
                Some(kv) => {
                    common::kv_suite::$check(&kv, &cluster::prefix(stringify!($check))).await
                }
                None => skip(cluster::SKIPPED),
            }
            #[cfg(not(feature = "foundationdb"))]
            skip("skipped: no FoundationDB cluster (built without the foundationdb feature)");
        }
    )*};
}

kv_contract_tests!(
    set_get_clear,
    read_your_writes,
    range_reads,
    range_reads_page,
    atomic_ops,
    versionstamped_keys,
    versionstamped_value,
    invalid_versionstamp,
    conflict_then_retry,
    range_read_conflict,
    snapshot_reads_do_not_conflict,
    concurrent_atomic_adds,
    too_large,
);

/// FoundationDB drops a clear of a key over the size limit (no key can
/// match it), so a transaction of only such clears commits read-only and has
/// no versionstamp of its own; the engine must still report success, with a
/// stamp in commit order.
#[tokio::test]
async fn commit_of_only_dropped_mutations() {
    #[cfg(feature = "foundationdb")]
    {
        use hanmadi_storage::kv::{Kv, KvTxn, MAX_KEY_SIZE};

        let Some(kv) = cluster::kv() else {
            return skip(cluster::SKIPPED);
        };
        let prefix = cluster::prefix("commit_of_only_dropped_mutations");
        let mut txn = kv.begin().expect("begin");
        txn.set(&prefix, b"before");
        let before = txn.commit().await.expect("commit");

        let mut oversized = prefix.clone();
        oversized.resize(MAX_KEY_SIZE * 2, b'k');
        let mut txn = kv.begin().expect("begin");
        txn.clear(&oversized);
        let dropped = txn
            .commit()
            .await
            .expect("a commit whose mutations FoundationDB drops still succeeds");

        let mut txn = kv.begin().expect("begin");
        txn.clear(&prefix);
        let after = txn.commit().await.expect("commit");
        assert!(
            before < dropped && dropped < after,
            "stamp out of order: {before:?} {dropped:?} {after:?}"
        );
    }
    #[cfg(not(feature = "foundationdb"))]
    skip("skipped: no FoundationDB cluster (built without the foundationdb feature)");
}

/// The shutdown path a binary takes: open, commit, `stop_network`, exit. Runs
/// in a child process, since the network cannot restart once stopped.
#[tokio::test]
async fn network_stops_cleanly() {
    #[cfg(feature = "foundationdb")]
    {
        let Some(path) = cluster::kv().and(std::env::var_os("FDB_CLUSTER_FILE")) else {
            return skip(cluster::SKIPPED);
        };
        let exe = std::env::current_exe().expect("path of this test binary");
        let output = std::process::Command::new(exe)
            .args(["--exact", "stop_network_child", "--ignored", "--nocapture"])
            .env("HANMADI_FDB_STOP_CHILD", &path)
            .output()
            .expect("run the child test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the child exited with {}\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("network stopped"),
            "the child did not get to stop the network:\n{stdout}"
        );
    }
    #[cfg(not(feature = "foundationdb"))]
    skip("skipped: no FoundationDB cluster (built without the foundationdb feature)");
}

/// The child of `network_stops_cleanly`; does nothing unless that test
/// started it.
#[tokio::test]
#[ignore = "the child process of network_stops_cleanly"]
async fn stop_network_child() {
    #[cfg(feature = "foundationdb")]
    {
        use hanmadi_storage::fdb::{stop_network, FdbKv};
        use hanmadi_storage::kv::{Kv, KvTxn};

        let Some(path) = std::env::var_os("HANMADI_FDB_STOP_CHILD") else {
            return;
        };
        let path = path.to_str().expect("UTF-8 cluster file path");
        let kv = FdbKv::open(Some(path)).expect("open the cluster");
        let key = cluster::prefix("stop_network_child");
        let mut txn = kv.begin().expect("begin");
        txn.set(&key, b"x");
        txn.commit().await.expect("commit");
        let mut txn = kv.begin().expect("begin");
        txn.clear(&key);
        txn.commit().await.expect("commit");

        stop_network();
        stop_network();
        assert!(
            FdbKv::open(Some(path)).is_err(),
            "the network cannot restart once stopped"
        );
        println!("network stopped");
    }
}

/// With a transaction timeout, an unreachable cluster fails reads and
/// commits within it instead of holding them forever; a commit that timed
/// out may have landed, so it reports an unknown result. Needs only the
/// client library: the cluster file names an address nothing listens on.
#[tokio::test]
async fn an_unreachable_cluster_fails_within_the_transaction_timeout() {
    #[cfg(feature = "foundationdb")]
    {
        use std::time::{Duration, Instant};

        use hanmadi_storage::fdb::FdbKv;
        use hanmadi_storage::kv::{Kv, KvError, KvTxn};

        const TIMEOUT: Duration = Duration::from_millis(200);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fdb.cluster");
        // A port from a listener just closed: refused, and nobody's.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        std::fs::write(&path, format!("unreachable:test@127.0.0.1:{port}\n"))
            .expect("write the cluster file");
        let kv = FdbKv::open(path.to_str()).expect("opening does not contact the cluster");
        kv.set_transaction_timeout(TIMEOUT).expect("timeout option");

        let started = Instant::now();
        let read = kv.begin().expect("begin").get(b"k", false).await;
        assert!(matches!(read, Err(KvError::TimedOut)), "{read:?}");
        let mut txn = kv.begin().expect("begin");
        txn.set(b"k", b"v");
        let commit = txn.commit().await;
        assert!(
            matches!(commit, Err(KvError::CommitUnknownResult)),
            "{commit:?}"
        );
        // A send through the chat keyspace fails as one to try again later
        // (a client sees UNAVAILABLE), not as a broken store.
        let store =
            hanmadi_storage::ChatStore::new(kv, hanmadi_storage::StoreConfig::for_cluster());
        let sent = store
            .append(
                vec![common::chat_suite::text(
                    hanmadi_proto::ConversationId::direct(1, 2),
                    1,
                    "m1",
                    "hello",
                )],
                &common::chat_suite::TestIds::default(),
                &|_| false,
            )
            .await;
        match &sent[..] {
            [Err(e)] => assert!(e.is_retryable(), "{e:?}"),
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < TIMEOUT * 20,
            "took {:?}",
            started.elapsed()
        );
    }
    #[cfg(not(feature = "foundationdb"))]
    skip("skipped: built without the foundationdb feature");
}
