#!/usr/bin/env bash
# Hanmadi on FoundationDB, measured (docs/PERFORMANCE.md): one node, then
# three, over a throwaway one-process FoundationDB cluster on this machine,
# driven by hanmadi-loadtest through sockets. Prints, per run, the load
# tool's summary, the nodes' CPU per acknowledged message and FoundationDB
# transactions committed and conflicted per acknowledged message.
#
#   scripts/cluster-figures.sh [OUT]        # JSON reports in OUT
#   FIGURES=one scripts/cluster-figures.sh   # one node only
#   FIGURES=cross scripts/cluster-figures.sh # three nodes at 1,000/s only
#   FIGURES=saturate scripts/cluster-figures.sh # one and three nodes, 20,000/s offered
#   FIGURES=group scripts/cluster-figures.sh # 50-member groups, one node and three
#
# HANMADI_NODE_ARGS adds options to every node (e.g. --max-send-wait-ms 0),
# HANMADI_LOADTEST_ARGS to every run of the tool (e.g. --workers 1).
#
# Needs target/fdb/release/hanmadi (scripts/build-fdb.sh) and
# target/release/hanmadi-loadtest (cargo build --release).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/fdb-env.sh
source scripts/fdb-env.sh
fdb_locate "$repo" || { echo "no FoundationDB in ../shared/fdb" >&2; exit 1; }
export LD_LIBRARY_PATH="$FDB_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out="${1:-target/cluster-figures}"
mkdir -p "$out"
hanmadi="${HANMADI_FDB_BIN:-target/fdb/release/hanmadi}"
loadtest="${HANMADI_LOADTEST_BIN:-target/release/hanmadi-loadtest}"
secret="cluster figures secret, not for production use"
work="$(mktemp -d)"
pids=()
stop_nodes() {
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
  pids=()
  return 0
}
trap 'stop_nodes; fdb_stop_cluster; rm -rf "$work"' EXIT
# What this host charges for a wake-up, a socket call and an fsync, kept
# beside the figures it explains (built by `cargo build --release
# --example host_costs`).
if [[ -x target/release/examples/host_costs ]]; then
  target/release/examples/host_costs "$work" | tee "$out/host-costs.txt"
fi
fdb_start_cluster

# Starts N nodes on fresh ports; sets `url` to the first one's HTTP API.
start_nodes() {
  stop_nodes
  local n="$1" i http
  local https=()
  for ((i = 0; i < n; i++)); do
    # shellcheck disable=SC2086 # HANMADI_NODE_ARGS is split into options
    "$hanmadi" serve --store fdb --fdb-cluster-file "$FDB_CLUSTER_FILE" \
      --data-dir "$work/node$i" --secret "$secret" --hostname 127.0.0.1 \
      --tcp 127.0.0.1:0 --http 127.0.0.1:0 --tls off --https off \
      --cluster-link 127.0.0.1:0 --max-conns-per-ip 30000 --max-connections 30000 \
      --http-rate-per-sec 1000000 --http-rate-burst 1000000 ${HANMADI_NODE_ARGS:-} \
      >"$work/listening$i" 2>"$work/log$i" &
    pids+=($!)
  done
  for ((i = 0; i < n; i++)); do
    http=""
    for _ in $(seq 100); do
      http=$(sed -n 's/^listening http //p' "$work/listening$i")
      [[ -n "$http" ]] && break
      sleep 0.1
    done
    [[ -n "$http" ]] || { cat "$work/log$i"; exit 1; }
    https+=("$http")
  done
  url="http://${https[0]}"
  # Until the first node's discovery lists all of them, and each node has
  # its links to the others open (the figures are of a formed cluster).
  for _ in $(seq 100); do
    [[ "$(curl -s "$url/v1/discovery" | grep -o '"node_id"' | wc -l)" -ge "$n" ]] && break
    sleep 0.1
  done
  for http in "${https[@]}"; do
    for _ in $(seq 100); do
      [[ "$(curl -s "http://$http/metrics" | awk '$1 == "hanmadi_cluster_links" {print $2}')" == "$((n - 1))" ]] && break
      sleep 0.1
    done
  done
}

# CPU ticks the nodes used so far.
node_ticks() {
  local pid total=0
  for pid in "${pids[@]}"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# FoundationDB's counters: transactions committed, conflicted and started
# (read versions handed out), and reads.
fdb_counts() {
  "$FDB_DIR/bin/fdbcli" -C "$FDB_CLUSTER_FILE" --exec 'status json' 2>/dev/null |
    python3 -c 'import json, sys
w = json.load(sys.stdin)["cluster"]["workload"]
t = w["transactions"]
print(t["committed"]["counter"], t["conflicted"]["counter"], t["started"]["counter"],
      w["operations"]["reads"]["counter"])'
}

# `reach`: how the tool finds the nodes. `--discovery` spreads connections
# over every node in turn, so with three nodes the two ends of each pair
# sit on different nodes; `--http` alone keeps them all on one node.
reach=(--discovery)

run() {
  local name="$1"
  shift
  echo "== $name (${#pids[@]} node(s), ${reach[*]}): hanmadi-loadtest $*"
  local t0 c0 x0 s0 r0 t1 c1 x1 s1 r1
  t0=$(node_ticks)
  read -r c0 x0 s0 r0 < <(fdb_counts)
  # shellcheck disable=SC2086 # HANMADI_LOADTEST_ARGS is split into options
  "$loadtest" "$@" "${reach[@]}" "$url" --secret "$secret" --quiet --json "$out/$name.json" \
    ${HANMADI_LOADTEST_ARGS:-} || true
  t1=$(node_ticks)
  read -r c1 x1 s1 r1 < <(fdb_counts)
  python3 - "$out/$name.json" "$((t1 - t0))" "$(getconf CLK_TCK)" "$((c1 - c0))" "$((x1 - x0))" \
    "$((s1 - s0))" "$((r1 - r0))" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
ticks, hz, commits, conflicts, started, reads = (int(a) for a in sys.argv[2:8])
acked = max(report["acked"], 1)
print(f"  acked {report['acked']} ({report['acked_per_s']:.0f}/s), delivered/s {report['delivered_per_s']:.0f}, "
      f"lost {report['lost']} dup {report['duplicated']} reordered {report['reordered']}")
print(f"  send->deliver p50 {report['p50_ms']:.2f} ms  p99 {report['p99_ms']:.2f} ms; "
      f"send->ack p50 {report['ack_p50_ms']:.2f} ms  p99 {report['ack_p99_ms']:.2f} ms")
print(f"  errors {report['errors']}")
print(f"  nodes' CPU {ticks / hz / acked * 1e6:.0f} us per acked message; "
      f"FoundationDB commits {commits / acked:.2f} and conflicts {conflicts / acked:.3f} per acked message")
print(f"  FoundationDB per acked message: {started / acked:.2f} transactions started "
      f"(read versions), {reads / acked:.2f} reads (over the whole run, warm-up included)")
PY
}

# FIGURES=one: only the one-node runs (1,000/s, then saturated).
if [[ "${FIGURES:-all}" == one ]]; then
  start_nodes 1
  run "fdb-1-node-1000" direct --connections 1000 --rate 1000 --duration 20s --warmup 3s
  start_nodes 1
  run "fdb-1-node-saturate" direct --connections 1000 --rate 20000 --duration 15s --warmup 3s
  exit 0
fi
# FIGURES=saturate: one node, then three, offered more than they take;
# the drain waits for sends answered after the tool's timeout.
if [[ "${FIGURES:-all}" == saturate ]]; then
  for n in 1 3; do
    start_nodes "$n"
    run "fdb-$n-node-saturate" direct --connections 1000 --rate 20000 --duration 15s --warmup 3s --drain 90s
  done
  exit 0
fi
# FIGURES=group: 20 groups of 50 members at 100 messages/s (5,000
# deliveries/s), on one node and then spread over three.
if [[ "${FIGURES:-all}" == group ]]; then
  for n in 1 3; do
    start_nodes "$n"
    run "fdb-$n-node-group" group --groups 20 --members 50 --connections 1000 --rate 100 \
      --duration 20s --warmup 3s
  done
  exit 0
fi
# FIGURES=cross: only the three-node runs at 1,000/s (cross- and same-node).
if [[ "${FIGURES:-all}" == cross ]]; then
  start_nodes 3
  run "fdb-3-node-1000" direct --connections 1000 --rate 1000 --duration 20s --warmup 3s
  reach=(--http)
  start_nodes 3
  run "fdb-3-node-1000-same-node" direct --connections 1000 --rate 1000 --duration 20s --warmup 3s
  exit 0
fi
for n in 1 3; do
  start_nodes "$n"
  run "fdb-$n-node-1000" direct --connections 1000 --rate 1000 --duration 20s --warmup 3s
  start_nodes "$n"
  run "fdb-$n-node-saturate" direct --connections 1000 --rate 20000 --duration 15s --warmup 3s
done
# Same-node latency with three nodes up: every connection on one node.
reach=(--http)
start_nodes 3
run "fdb-3-node-1000-same-node" direct --connections 1000 --rate 1000 --duration 20s --warmup 3s
echo "JSON in $out"
