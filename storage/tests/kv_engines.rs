//! The KV contract suite on the simulated engine (no faults: the contract
//! checks expect healthy commits) and on the embedded engine over both
//! backends.

#[allow(dead_code)]
mod common;

use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::backend::redb::{RedbBackend, RedbOptions};
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::sim::{SimKv, SimOptions};

fn fjall() -> (tempfile::TempDir, EmbeddedKv<FjallBackend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FjallBackend::open(dir.path(), FjallOptions::default()).expect("open fjall");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    (dir, kv)
}

fn redb() -> (tempfile::TempDir, EmbeddedKv<RedbBackend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = RedbBackend::open(dir.path(), RedbOptions::default()).expect("open redb");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    (dir, kv)
}

macro_rules! kv_contract_tests {
    ($($check:ident),* $(,)?) => {
        mod sim {$(
            #[tokio::test]
            async fn $check() {
                let kv = super::SimKv::new(super::SimOptions::healthy());
                super::common::kv_suite::$check(&kv, b"t/").await;
            }
        )*}
        mod embedded_fjall {$(
            #[tokio::test]
            async fn $check() {
                let (_dir, kv) = super::fjall();
                super::common::kv_suite::$check(&kv, b"t/").await;
            }
        )*}
        mod embedded_redb {$(
            #[tokio::test]
            async fn $check() {
                let (_dir, kv) = super::redb();
                super::common::kv_suite::$check(&kv, b"t/").await;
            }
        )*}
    };
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
