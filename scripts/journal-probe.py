#!/usr/bin/env python3
"""What a sync costs in a journal that is sparse against one written ahead.

Usage: scripts/journal-probe.py DIR [ROUNDS]

fjall sizes each new journal file with set_len, which leaves a hole, so
every append allocates blocks and the sync writes the inode too. This
probe appends 6 KB and syncs, ROUNDS times (default 1500), into four
64 MiB files side by side: sparse or filled with zeros beforehand, each
with fsync and with fdatasync, and prints the latency quantiles and the
CPU of each sync. docs/STORAGE.md has the figures. Files are removed.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from journal import open_journal  # noqa: E402


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    directory = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) == 3 else 1500
    kinds = [
        ("sparse, fsync", False, os.fsync),
        ("sparse, fdatasync", False, os.fdatasync),
        ("zeroed, fsync", True, os.fsync),
        ("zeroed, fdatasync", True, os.fdatasync),
    ]
    paths = [os.path.join(directory, f"probe-journal-{i}") for i in range(len(kinds))]
    fds = [
        open_journal(p, "zeroed" if zeroed else "sparse")
        for p, (_, zeroed, _) in zip(paths, kinds)
    ]
    latency = [[] for _ in kinds]
    cpu = [0.0 for _ in kinds]
    entry = b"x" * 6000
    try:
        for _ in range(rounds):
            # Interleaved, so every kind sees the same minute of the disk.
            for i, (_, _, sync) in enumerate(kinds):
                os.write(fds[i], entry)
                t0, c0 = time.perf_counter(), time.thread_time()
                sync(fds[i])
                latency[i].append(time.perf_counter() - t0)
                cpu[i] += time.thread_time() - c0
            time.sleep(0.0005)
    finally:
        for fd, path in zip(fds, paths):
            os.close(fd)
            os.unlink(path)
    for (name, _, _), v, c in zip(kinds, latency, cpu):
        v.sort()

        def q(p, v=v):
            return v[min(len(v) - 1, int(p * len(v)))] * 1000

        print(
            f"{name:18s} p50 {q(0.5):.3f}  p90 {q(0.9):.3f}  p99 {q(0.99):.3f}"
            f"  max {v[-1] * 1000:.3f} ms  CPU per sync {c / rounds * 1e6:.0f} us"
        )


if __name__ == "__main__":
    main()
