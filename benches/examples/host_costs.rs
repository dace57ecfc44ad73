//! What this host charges for the operations a message is made of: a
//! system call, a small loopback socket write and read, a thread's
//! wake-up (busy and after an idle spell), and an append with its fsync.
//! They differ widely from host to host, and at moderate load they are most
//! of a message's CPU (docs/PERFORMANCE.md, "What a host charges for a
//! wake-up").
//!
//! `cargo run --release -p hanmadi-benches --example host_costs -- [DIR]`
//! (the fsync probe writes a scratch file in `DIR`, by default the
//! temporary directory; point it at the disk the store will use).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hanmadi_benches::{live_threads_cpu, thread_cpu};

/// Microseconds of a CPU time reading (0 where there is none).
fn us(cpu: Option<Duration>) -> f64 {
    cpu.map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// CPU time of every live thread of this process, in microseconds.
fn process_cpu_us() -> f64 {
    us(live_threads_cpu())
}

/// CPU time of the calling thread, in microseconds.
fn thread_cpu_us() -> f64 {
    us(thread_cpu())
}

/// Runs `op` `n` times on this thread alone; answers wall and CPU
/// microseconds per run.
fn per_op(n: u32, mut op: impl FnMut(u32)) -> (f64, f64) {
    let cpu = thread_cpu_us();
    let start = Instant::now();
    for i in 0..n {
        op(i);
    }
    let wall = start.elapsed().as_secs_f64() * 1e6;
    (wall / f64::from(n), (thread_cpu_us() - cpu) / f64::from(n))
}

fn report(what: &str, (wall, cpu): (f64, f64)) {
    println!("{what:<52} {wall:>8.2} us wall {cpu:>8.2} us CPU");
}

/// A thread that answers each value at once: every round trip is two
/// wake-ups, one each way.
fn echo_thread() -> (mpsc::Sender<u32>, mpsc::Receiver<u32>, JoinHandle<()>) {
    let (to_echo, from_main) = mpsc::channel::<u32>();
    let (to_main, from_echo) = mpsc::channel::<u32>();
    let echo = std::thread::spawn(move || {
        for v in from_main {
            if to_main.send(v).is_err() {
                break;
            }
        }
    });
    (to_echo, from_echo, echo)
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);

    report(
        "a system call (getppid)",
        per_op(200_000, |_| {
            std::hint::black_box(std::os::unix::process::parent_id());
        }),
    );

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut tx = TcpStream::connect(listener.local_addr()?)?;
    let (mut rx, _) = listener.accept()?;
    tx.set_nodelay(true)?;
    let body = [7u8; 100];
    let mut got = [0u8; 100];
    let mut io_error = None;
    let socket = per_op(50_000, |_| {
        if let Err(e) = tx.write_all(&body).and_then(|()| rx.read_exact(&mut got)) {
            io_error.get_or_insert(e);
        }
    });
    if let Some(e) = io_error {
        return Err(e);
    }
    report("100 bytes over loopback TCP, written and read", socket);

    // Each round trip wakes the echo thread and then this one: per wake-up
    // is half of it, on both threads' CPU (the echo thread lives until
    // both rounds are measured).
    let (to_echo, from_echo, echo) = echo_thread();
    let rounds = 20_000;
    let cpu = process_cpu_us();
    let start = Instant::now();
    for i in 0..rounds {
        if to_echo.send(i).is_ok() {
            let _ = from_echo.recv();
        }
    }
    let rounds = f64::from(rounds);
    report(
        "a wake-up, threads taking turns",
        (
            start.elapsed().as_secs_f64() * 1e6 / rounds / 2.0,
            (process_cpu_us() - cpu) / rounds / 2.0,
        ),
    );

    // The same after 200 us of idle, as between sends at a few thousand a
    // second. Only the round trip is timed; the sleep's own wake-up makes
    // three per round on the CPU clock.
    let rounds = 5_000;
    let cpu = process_cpu_us();
    let mut waited = Duration::ZERO;
    for i in 0..rounds {
        std::thread::sleep(Duration::from_micros(200));
        let start = Instant::now();
        if to_echo.send(i).is_ok() {
            let _ = from_echo.recv();
        }
        waited += start.elapsed();
    }
    let rounds = f64::from(rounds);
    report(
        "a wake-up after 200 us idle",
        (
            waited.as_secs_f64() * 1e6 / rounds / 2.0,
            (process_cpu_us() - cpu) / rounds / 3.0,
        ),
    );
    drop(to_echo);
    let _ = echo.join();

    let path = dir.join(format!("hanmadi-host-costs-{}", std::process::id()));
    let mut file = std::fs::File::create(&path)?;
    let record = [1u8; 400];
    let mut sync_error = None;
    let synced = per_op(500, |_| {
        if let Err(e) = file.write_all(&record).and_then(|()| file.sync_all()) {
            sync_error.get_or_insert(e);
        }
    });
    let _ = std::fs::remove_file(&path);
    if let Some(e) = sync_error {
        return Err(e);
    }
    report("a 400-byte append and its fsync", synced);
    Ok(())
}
