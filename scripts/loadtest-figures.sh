#!/usr/bin/env bash
# The end-to-end figures of docs/PERFORMANCE.md: starts a release node on
# loopback with a throwaway data directory, runs hanmadi-loadtest against
# it, and leaves each run's JSON (and HTML report) in OUT.
#
#   scripts/loadtest-figures.sh [OUT] [FIGURE...]
#
# FIGURE is any of: idle direct-max direct-cpu group latency soak
# (default: all but soak, which takes ten minutes: SOAK_RATE and
# SOAK_DURATION set its rate and length, SOAK_CACHE_MB the node's
# --store-cache-mb; it also writes soak-memory.csv, the node's RSS and its
# store's cache and memtables every 10 s). HANMADI_NODE_ARGS: more flags
# for every node (e.g. "--commit-linger-us 0"), split on spaces;
# HANMADI_LOADTEST_ARGS the same for every run of the tool (e.g. "--workers
# 1", which leaves the node more of a two-core machine). OUT/host-costs.txt
# gets what the host charges for a wake-up, a socket call and an fsync
# (`host_costs` of hanmadi-benches).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-target/loadtest-figures}"
shift || true
figures=("$@")
((${#figures[@]})) || figures=(idle direct-max direct-cpu group latency)
mkdir -p "$out"

# HANMADI_BIN_DIR: binaries built earlier (skips the build).
bin="${HANMADI_BIN_DIR:-target/release}"
[[ -n "${HANMADI_BIN_DIR:-}" ]] || cargo build --release --bin hanmadi --bin hanmadi-loadtest --example host_costs
secret="loadtest figures secret, not for production use"
data="$(mktemp -d)"
server_pid=""
# shellcheck source=scripts/lib/node.sh
source scripts/lib/node.sh
stop_node() {
  stop_pid "$server_pid"
  server_pid=""
}
trap 'stop_node; rm -rf "$data"' EXIT

# What this host charges for a wake-up, a socket call and an fsync on the
# store's disk, kept beside the figures it explains.
if [[ -x "$bin/examples/host_costs" ]]; then
  "$bin/examples/host_costs" "$data" | tee "$out/host-costs.txt"
fi

# One node per figure, on fresh ports, so each starts from the same state.
start_node() {
  stop_node
  rm -rf "$data"/*
  "$bin/hanmadi" gen-cert --out-dir "$data" --hostname localhost >/dev/null
  # shellcheck disable=SC2086 # HANMADI_NODE_ARGS is split on purpose
  launch_node --tcp 127.0.0.1:0 --http 127.0.0.1:0 --tls 127.0.0.1:0 --https 127.0.0.1:0 \
    --cert "$data/cert.pem" --key "$data/key.pem" \
    --max-conns-per-ip 30000 --max-connections 30000 \
    --http-rate-per-sec 1000000 --http-rate-burst 1000000 ${HANMADI_NODE_ARGS:-} "$@"
}

# Every 10 s until killed: seconds, RSS (KiB), the store's cache and
# memtable bytes (from the node's /metrics).
sample_memory() {
  echo "seconds,rss_kib,store_cache_bytes,store_write_buffer_bytes" >"$1"
  local t0 now rss metrics
  t0=$(date +%s)
  while kill -0 "$server_pid" 2>/dev/null; do
    now=$(($(date +%s) - t0))
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || echo "")
    metrics=$(curl -sf "$url/metrics" || true)
    echo "$now,$rss,$(metric_value "$metrics" hanmadi_store_cache_bytes),$(metric_value "$metrics" hanmadi_store_write_buffer_bytes)" >>"$1"
    sleep 10
  done
}

metric_value() {
  awk -v name="$2" '$1 == name {print $2}' <<<"$1"
}

lt() {
  local name="$1"
  shift
  echo "== $name: hanmadi-loadtest $*"
  # shellcheck disable=SC2086 # HANMADI_LOADTEST_ARGS is split on purpose
  "$bin/hanmadi-loadtest" "$@" --http "$url" --secret "$secret" --server-pid "$server_pid" \
    --ca "$data/cert.pem" --tls-name localhost --quiet --json "$out/$name.json" ${HANMADI_LOADTEST_ARGS:-} || true
}

for figure in "${figures[@]}"; do
  case "$figure" in
    idle)
      for t in tcp tls ws wss; do
        start_node
        lt "idle-$t" idle --transport "$t" --connections 10000 --duration 5s --connect-concurrency 100
      done
      ;;
    direct-max)
      for t in tcp tls; do
        start_node
        lt "direct-max-$t" direct --transport "$t" --connections 1000 --rate 2000 --find-max \
          --p99-ms 10 --step-duration 5s --step-factor 1.25 --warmup 3s
      done
      ;;
    direct-cpu)
      start_node
      lt direct-cpu-4000 direct --connections 1000 --rate 4000 --duration 20s --warmup 3s
      ;;
    group)
      start_node
      lt group-100 group --groups 100 --members 100 --rate 500 --find-max --p99-ms 100 \
        --step-duration 5s --step-factor 1.25 --warmup 3s
      ;;
    latency)
      for rate in 1000 10000 40000; do
        start_node
        lt "latency-$rate" direct --connections 1000 --rate "$rate" --duration 15s --warmup 3s
      done
      ;;
    soak)
      start_node ${SOAK_CACHE_MB:+--store-cache-mb "$SOAK_CACHE_MB"}
      sample_memory "$out/soak-memory.csv" &
      sampler=$!
      lt soak direct --connections 1000 --rate "${SOAK_RATE:-4000}" \
        --duration "${SOAK_DURATION:-10m}" --warmup 5s \
        --report "$out/soak-report"
      kill "$sampler" 2>/dev/null || true
      ;;
    *)
      echo "unknown figure $figure" >&2
      exit 2
      ;;
  esac
done
stop_node
echo "JSON in $out"
