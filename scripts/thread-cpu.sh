#!/usr/bin/env bash
# CPU time of a running process over an interval, by thread name: which of
# a node's threads a message's cost goes to (docs/PERFORMANCE.md).
#
#   scripts/thread-cpu.sh PID [SECONDS] [MESSAGES_PER_SECOND]
#
# Prints, per thread name (the main thread marked), the CPU seconds used in
# the interval (default 10 s) and, given the rate the process was serving,
# the microseconds per message. Threads born or ended inside the interval
# are left out.
set -euo pipefail
pid="${1:?usage: thread-cpu.sh PID [SECONDS] [MESSAGES_PER_SECOND]}"
seconds="${2:-10}"
rate="${3:-0}"
snapshot() {
  local task tid name
  for task in /proc/"$pid"/task/*; do
    tid="${task##*/}"
    name="$(cat "$task/comm" 2>/dev/null)" || continue
    [[ "$tid" == "$pid" ]] && name="$name (main)"
    # utime and stime, in clock ticks, after the parenthesised name.
    awk -v tid="$tid" -v name="$name" '{
      sub(/^.*\) /, ""); print tid "\t" name "\t" $12 + $13
    }' "$task/stat" 2>/dev/null || true
  done
}
before="$(snapshot)"
sleep "$seconds"
after="$(snapshot)"
hz="$(getconf CLK_TCK)"
awk -F'\t' -v hz="$hz" -v secs="$seconds" -v rate="$rate" '
  NR == FNR { start[$1] = $3; next }
  ($1 in start) { used[$2] += $3 - start[$1]; total += $3 - start[$1] }
  END {
    order = "sort -rn | cut -f2-"
    for (name in used) {
      line = sprintf("%-24s %7.2f s", name, used[name] / hz)
      if (rate > 0) line = line sprintf("  %7.1f us/message", used[name] / hz * 1e6 / (rate * secs))
      print used[name] "\t" line | order
    }
    close(order)
    line = sprintf("%-24s %7.2f s", "all", total / hz)
    if (rate > 0) line = line sprintf("  %7.1f us/message", total / hz * 1e6 / (rate * secs))
    print line
  }' <(echo "$before") <(echo "$after")
