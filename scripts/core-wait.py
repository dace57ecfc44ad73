#!/usr/bin/env python3
"""How long each thread ran, and how long it waited for a core, second by second.

Usage: scripts/core-wait.py PID[,PID...] SECONDS

For each second: the machine's idle and niced shares (/proc/stat), then,
for each process given, its threads grouped by name, with the CPU time
they used and the time they spent runnable but waiting for a core (the
scheduler's run-queue wait, /proc/PID/task/TID/schedstat), both in
milliseconds; in parentheses, the mean wait each time a thread got a core
and how many times it got one. A thread that waits about as long as it
runs is short of cores, not of work: on a machine whose cores the node
shares with its load generator, that wait is latency that every message
in the thread's hands pays. docs/PERFORMANCE.md ("The half-capacity
tail") has the figures of the reference machine.

Needs a kernel with schedstats (`/proc/PID/task/TID/schedstat`), which
Debian's has.
"""

import collections
import os
import sys
import time


def threads(pid):
    """{tid: (name, ns running, ns waiting, times run)} of one process."""
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ran, waited, slices = f.read().split()
        except (OSError, ValueError):
            continue  # the thread ended between the listing and the read
        found[tid] = (name, int(ran), int(waited), int(slices))
    return found


def machine():
    """The first line of /proc/stat: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    pids = [int(p) for p in sys.argv[1].split(",")]
    seconds = int(sys.argv[2])
    before = {pid: threads(pid) for pid in pids}
    cpu_before = machine()
    for second in range(1, seconds + 1):
        time.sleep(1)
        now = {pid: threads(pid) for pid in pids}
        cpu_now = machine()
        spent = [b - a for a, b in zip(cpu_before, cpu_now)]
        total = sum(spent) or 1
        parts = [
            f"{second:3d}s idle {100 * spent[3] / total:3.0f}% niced {100 * spent[1] / total:3.0f}%"
        ]
        for pid in pids:
            ran = collections.Counter()
            waited = collections.Counter()
            slices = collections.Counter()
            for tid, (name, r, w, n) in now[pid].items():
                if tid in before[pid]:
                    _, r0, w0, n0 = before[pid][tid]
                    ran[name] += (r - r0) / 1e6
                    waited[name] += (w - w0) / 1e6
                    slices[name] += n - n0
            busy = sorted(n for n in ran if ran[n] + waited[n] >= 5)
            parts.append(
                f"| {pid}: "
                + ", ".join(
                    f"{n} ran {ran[n]:.0f} waited {waited[n]:.0f}"
                    f" ({1000 * waited[n] / max(slices[n], 1):.0f} us x {slices[n]})"
                    for n in busy
                )
            )
        print(" ".join(parts), flush=True)
        before, cpu_before = now, cpu_now


if __name__ == "__main__":
    main()
