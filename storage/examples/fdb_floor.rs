//! The floor a FoundationDB client sets under a message's append: open-loop
//! transactions at a fixed rate, each with the reads of a 1:1 append and a
//! commit of its writes, and nothing of Hanmadi around them. It prints the
//! latency quantiles of the transactions and the process's CPU time per
//! transaction, which docs/PERFORMANCE.md lays beside a node's figures.
//!
//! ```text
//! scripts/with-fdb.sh cargo run --release -p hanmadi-storage \
//!     --features foundationdb --example fdb_floor -- RATE SECONDS POINT_READS RANGE_READS
//! ```
//!
//! A 1:1 append reads 5 keys (the lease, the dedup entry, two block keys,
//! the conversation head) and 2 inbox tails (reverse, limit 1), so `1000 20 5
//! 2` is its pattern at 1,000 messages/s; `1000 20 0 0` leaves only the read
//! version and the commit. Transactions touch 500 conversations' keys in
//! turn, as 1,000 connections in pairs do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use hanmadi_storage::fdb::{stop_network, FdbKv};
use hanmadi_storage::kv::{Kv, KvTxn, RangeRead};
use parking_lot::Mutex;

const CONVERSATIONS: usize = 500;

/// Orders the inbox entries this run writes.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| {
        args.get(i)
            .map(|a| a.parse::<u64>().expect("numeric argument"))
            .unwrap_or(default)
    };
    let (rate, seconds, points, ranges) = (arg(0, 1000), arg(1, 20), arg(2, 5), arg(3, 2));
    let cluster_file = std::env::var("FDB_CLUSTER_FILE").ok();
    let kv = FdbKv::open(cluster_file.as_deref()).expect("open FoundationDB");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(kv, rate, seconds, points as usize, ranges as usize));
    drop(runtime);
    stop_network();
}

async fn run(kv: FdbKv, rate: u64, seconds: u64, points: usize, ranges: usize) {
    let latencies = Arc::new(Mutex::new(Vec::with_capacity((rate * seconds) as usize)));
    let errors = Arc::new(Mutex::new(0u64));
    // One warm-up second, not counted.
    let warmup = rate;
    let total = rate * (seconds + 1);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut cpu_start = None;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        if i == warmup {
            cpu_start = Some((cpu_seconds(), Instant::now()));
        }
        let (kv, latencies, errors) = (kv.clone(), Arc::clone(&latencies), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            match one(&kv, i as usize % CONVERSATIONS, points, ranges).await {
                Ok(()) if i >= warmup => latencies.lock().push(began.elapsed()),
                Ok(()) => {}
                Err(e) => {
                    eprintln!("transaction failed: {e}");
                    *errors.lock() += 1;
                }
            }
        }));
    }
    join_all(tasks).await;
    let (cpu0, wall0) = cpu_start.expect("a measured second");
    let cpu = cpu_seconds() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *latencies.lock());
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{rate}/s, {points} point + {ranges} range reads: {} transactions, {} failed, \
         p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, {:.0} µs CPU per transaction ({:.2} cores)",
        lat.len(),
        errors.lock(),
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0),
        cpu / lat.len() as f64 * 1e6,
        cpu / wall,
    );
}

/// One append-shaped transaction on conversation `c`'s keys.
async fn one(
    kv: &FdbKv,
    c: usize,
    points: usize,
    ranges: usize,
) -> Result<(), hanmadi_storage::kv::KvError> {
    let mut txn = kv.begin()?;
    let keys: Vec<Vec<u8>> = (0..points)
        .map(|k| format!("floor/c{c:04}/k{k}").into_bytes())
        .collect();
    let tails: Vec<(Vec<u8>, Vec<u8>)> = (0..ranges)
        .map(|r| {
            let begin = format!("floor/inbox/u{c:04}{r}/").into_bytes();
            let mut end = begin.clone();
            end.push(0xff);
            (begin, end)
        })
        .collect();
    let gets = join_all(keys.iter().map(|k| txn.get(k, false)));
    let scans = join_all(
        tails
            .iter()
            .map(|(b, e)| txn.get_range(RangeRead::new(b, e).reverse(true).limit(1))),
    );
    let (gets, scans) = futures::join!(gets, scans);
    for g in gets {
        g?;
    }
    for s in scans {
        s?;
    }
    let body = [7u8; 100];
    txn.set(format!("floor/c{c:04}/k0").as_bytes(), &body);
    for (begin, _) in &tails {
        let mut key = begin.clone();
        key.extend_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        txn.set(&key, b"e");
    }
    txn.commit().await?;
    Ok(())
}

/// The process's user and system CPU time so far, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}
