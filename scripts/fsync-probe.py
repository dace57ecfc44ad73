#!/usr/bin/env python3
"""How long a journal's sync takes on a disk, alone and beside a flush.

Usage: scripts/fsync-probe.py DIR SECONDS [MIB EVERY_SECONDS [STEP_MIB]]
           [--journal append|sparse|zeroed] [--sync fdatasync|fsync]

Appends 6 KB to a journal file in DIR and syncs it every 0.5 ms, as the
embedded store's commit thread does, and prints the latency quantiles.

With MIB and EVERY_SECONDS, a second thread writes and fsyncs a file of MIB
MiB every EVERY_SECONDS, as a memtable flush does. With STEP_MIB it also
starts the writeback of each STEP_MIB written and waits for the step before
(`sync_file_range`, as RocksDB's `bytes_per_sync` does), so the file
reaches the disk in steps instead of in one burst at its fsync.

`--journal` picks the journal file: appended to (the default), or a 64 MiB
file written over from its start, either sparse (`set_len`, as fjall makes
its journals) or filled with zeros beforehand.

docs/PERFORMANCE.md ("Stalls", and "Table writeback in steps") has the
figures of the reference machine. Files are removed.
"""

import argparse
import ctypes
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from journal import open_journal  # noqa: E402
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4


def sync_file_range():
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fn = libc.sync_file_range
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


def flusher(directory, mib, every, step, stop):
    chunk = b"y" * (1 << 20)
    sfr = sync_file_range() if step else None
    i = 0
    while time.time() < stop:
        time.sleep(every)
        path = os.path.join(directory, f"table-{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        for k in range(1, mib + 1):
            os.write(fd, chunk)
            if sfr and k % step == 0:
                sfr(fd, (k - step) << 20, step << 20, SYNC_FILE_RANGE_WRITE)
                if k >= 2 * step:
                    sfr(
                        fd,
                        (k - 2 * step) << 20,
                        step << 20,
                        SYNC_FILE_RANGE_WAIT_BEFORE
                        | SYNC_FILE_RANGE_WRITE
                        | SYNC_FILE_RANGE_WAIT_AFTER,
                    )
        os.fsync(fd)
        os.close(fd)
        os.unlink(path)
        i += 1


def main():
    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("dir")
    parser.add_argument("seconds", type=float)
    parser.add_argument("flush", type=float, nargs="*")
    parser.add_argument("--journal", choices=["append", "sparse", "zeroed"], default="append")
    parser.add_argument("--sync", choices=["fdatasync", "fsync"], default="fdatasync")
    args = parser.parse_args()
    if len(args.flush) not in (0, 2, 3):
        parser.error("give MIB and EVERY_SECONDS, and optionally STEP_MIB")
    stop = time.time() + args.seconds
    label = f"{args.journal} journal, {args.sync}"
    if args.flush:
        mib, every = int(args.flush[0]), args.flush[1]
        step = int(args.flush[2]) if len(args.flush) == 3 else 0
        threading.Thread(
            target=flusher, args=(args.dir, mib, every, step, stop), daemon=True
        ).start()
        label += f", beside {mib} MiB every {every} s"
        if step:
            label += f" written back in {step} MiB steps"
    else:
        label += ", alone"
    sync = os.fdatasync if args.sync == "fdatasync" else os.fsync
    journal = os.path.join(args.dir, "journal")
    fd = open_journal(journal, args.journal)
    record = b"x" * 6000
    latencies = []
    try:
        while time.time() < stop:
            os.write(fd, record)
            start = time.perf_counter()
            sync(fd)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.0005)
    finally:
        os.close(fd)
        os.unlink(journal)
    latencies.sort()
    n = len(latencies)

    def ms(q):
        return latencies[min(n - 1, int(q * n))] * 1e3

    slow = sum(1 for x in latencies if x > 0.005)
    print(
        f"{label}: {n} syncs, p50 {ms(0.5):.2f} p99 {ms(0.99):.2f} "
        f"p99.9 {ms(0.999):.2f} p99.99 {ms(0.9999):.2f} "
        f"max {latencies[-1] * 1e3:.2f} ms, {slow} over 5 ms"
    )


if __name__ == "__main__":
    main()
