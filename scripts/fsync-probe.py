#!/usr/bin/env python3
"""How long an fsync takes on a disk, alone and beside a flush.

Usage: scripts/fsync-probe.py DIR SECONDS [MIB EVERY_SECONDS]

Appends 6 KB to a journal file in DIR and fdatasyncs it every 0.5 ms, as
the embedded store's commit thread does, and prints the latency quantiles.
With MIB and EVERY_SECONDS, a second thread writes and fsyncs a file of MIB
MiB every EVERY_SECONDS, as a memtable flush does. docs/PERFORMANCE.md
("Stalls") has the figures of the reference machine. Files are removed.
"""

import os
import sys
import threading
import time


def flusher(directory, mib, every, stop):
    chunk = b"y" * (1 << 20)
    i = 0
    while time.time() < stop:
        time.sleep(every)
        path = os.path.join(directory, f"table-{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        for _ in range(mib):
            os.write(fd, chunk)
        os.fsync(fd)
        os.close(fd)
        os.unlink(path)
        i += 1


def main():
    if len(sys.argv) not in (3, 5):
        sys.exit(__doc__)
    directory, seconds = sys.argv[1], float(sys.argv[2])
    stop = time.time() + seconds
    if len(sys.argv) == 5:
        mib, every = int(sys.argv[3]), float(sys.argv[4])
        threading.Thread(target=flusher, args=(directory, mib, every, stop), daemon=True).start()
        label = f"beside {mib} MiB every {every} s"
    else:
        label = "alone"
    journal = os.path.join(directory, "journal")
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    record = b"x" * 6000
    latencies = []
    try:
        while time.time() < stop:
            os.write(fd, record)
            start = time.perf_counter()
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.0005)
    finally:
        os.close(fd)
        os.unlink(journal)
    latencies.sort()
    n = len(latencies)

    def ms(q):
        return latencies[min(n - 1, int(q * n))] * 1e3

    print(
        f"{label}: {n} fsyncs, p50 {ms(0.5):.2f} p99 {ms(0.99):.2f} "
        f"p99.9 {ms(0.999):.2f} max {latencies[-1] * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
