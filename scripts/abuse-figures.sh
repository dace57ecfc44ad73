#!/usr/bin/env bash
# The abuse figures of docs/PERFORMANCE.md: 200 well-behaved clients chat
# (hanmadi-loadtest direct) while one attack runs (hanmadi-loadtest
# attack), against a release node started on loopback with its default
# limits; first once without any attack, the baseline. Each attack gets a
# fresh node. Leaves every run's JSON and output in OUT, and a summary
# table in OUT/summary.md.
#
#   scripts/abuse-figures.sh [OUT] [ATTACK...]
#
# ATTACK is any of: sync-loop receipts self-dm signup half-open slowloris
# bad-frames (default: all). RATE sets the well-behaved clients' messages
# per second (default 1000), MEASURE their measured window (default 20s),
# ATTACK_DURATION the attack's (default 30s: warm-up, window and drain).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-target/abuse-figures}"
shift || true
attacks=("$@")
((${#attacks[@]})) || attacks=(sync-loop receipts self-dm signup half-open slowloris bad-frames)
mkdir -p "$out"
rate="${RATE:-1000}"
measure="${MEASURE:-20s}"

# HANMADI_BIN_DIR: binaries built earlier (skips the build).
bin="${HANMADI_BIN_DIR:-target/release}"
[[ -n "${HANMADI_BIN_DIR:-}" ]] || cargo build --release --bin hanmadi --bin hanmadi-loadtest
secret="abuse figures secret, not for production use"
data="$(mktemp -d)"
server_pid=""
attack_pid=""
# shellcheck source=scripts/lib/node.sh
source scripts/lib/node.sh
stop_node() {
  stop_pid "$attack_pid"
  attack_pid=""
  stop_pid "$server_pid"
  server_pid=""
}
trap 'stop_node; rm -rf "$data"' EXIT

# A node with the default limits, only its listeners on loopback.
start_node() {
  stop_node
  rm -rf "${data:?}"/*
  launch_node --tcp 127.0.0.1:0 --http 127.0.0.1:0 --tls off --https off
}

chat() {
  "$bin/hanmadi-loadtest" direct --http "$url" --secret "$secret" --server-pid "$server_pid" \
    --connections 200 --rate "$rate" --warmup 3s --duration "$measure" --quiet \
    --json "$out/$1-chat.json" >"$out/$1-chat.txt" || true
}

# The attack's options: enough connections to matter, from eight
# loopback addresses.
attack_options() {
  case "$1" in
    sync-loop) echo "--connections 1000 --per-account 10 --fill 100 --body-size 15000" ;;
    receipts) echo "--connections 200 --per-account 10" ;;
    self-dm) echo "--connections 16 --body-size 15000" ;;
    signup) echo "--connections 64" ;;
    half-open) echo "--connections 5000" ;;
    slowloris) echo "--connections 2000" ;;
    bad-frames) echo "--connections 100" ;;
    *)
      echo "unknown attack $1" >&2
      exit 2
      ;;
  esac
}

start_node
echo "== baseline: 200 clients at $rate/s"
chat baseline

for kind in "${attacks[@]}"; do
  options=$(attack_options "$kind")
  start_node
  echo "== $kind: hanmadi-loadtest attack --kind $kind $options"
  # The attack outlasts the chat's warm-up, measured window and drain.
  # shellcheck disable=SC2086
  "$bin/hanmadi-loadtest" attack --kind "$kind" $options --http "$url" --secret "$secret" \
    --server-pid "$server_pid" --duration "${ATTACK_DURATION:-30s}" --quiet --json "$out/$kind.json" \
    >"$out/$kind.txt" 2>"$out/$kind.err" &
  attack_pid=$!
  # Start chatting once the attack is set up and under way.
  until grep -q "attack under way" "$out/$kind.err"; do
    kill -0 "$attack_pid" 2>/dev/null || { cat "$out/$kind.err"; exit 1; }
    sleep 0.2
  done
  chat "$kind"
  wait "$attack_pid" || true
  attack_pid=""
done
stop_node

# One row per run: the chat's p99 against the baseline's, the node's
# memory and CPU, and how the attack was answered.
python3 - "$out" "${attacks[@]}" <<'PY' | tee "$out/summary.md"
import json, sys
out, kinds = sys.argv[1], sys.argv[2:]
def load(name):
    try:
        with open(f"{out}/{name}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
base = load("baseline-chat")
print("| run | chat p99 ms | × baseline | chat max ms | lost | server RSS peak MiB | server cores | answers to the attack |")
print("|---|---|---|---|---|---|---|---|")
def row(name, chat, attack):
    p99 = chat["p99_ms"] if chat else float("nan")
    ratio = p99 / base["p99_ms"] if base and chat and base["p99_ms"] else float("nan")
    lost = chat["lost"] + chat["duplicated"] + chat["reordered"] if chat else "?"
    server = (chat or {}).get("server") or {}
    rss = (attack or {}).get("extra", {}).get("server_rss_peak_mib") if attack else server.get("after", {}).get("rss_bytes", 0) / 1048576
    cores = server.get("cores", float("nan"))
    answers = ", ".join(f"{k} {v}" for k, v in sorted((attack or {}).get("extra", {}).get("outcomes", {}).items(), key=lambda kv: -kv[1])[:4])
    print(f"| {name} | {p99:.2f} | {ratio:.2f} | {(chat or {}).get('max_ms', float('nan')):.1f} | {lost} | {rss if rss is not None else float('nan'):.0f} | {cores:.2f} | {answers} |")
row("no attack", base, None)
for k in kinds:
    row(k, load(f"{k}-chat"), load(k))
PY
echo "JSON in $out"
