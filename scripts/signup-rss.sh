#!/usr/bin/env bash
# Resident memory of a real `hanmadi serve` after N sign-ups over HTTP.
#
#   scripts/signup-rss.sh [N] [CONCURRENCY] [BINARY]
#
# Starts the node on a fresh data directory with its HTTP listener on a free
# port of 127.0.0.1, signs up N users (default 1000) with CONCURRENCY
# requests in flight (default 8) from as many loopback addresses (a node
# hashes one password at a time per address), then prints VmRSS and VmHWM
# of the node before and after. BINARY defaults to target/debug/hanmadi (argon2 is built
# optimized even there, see Cargo.toml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

n="${1:-1000}"
concurrency="${2:-8}"
binary="${3:-target/debug/hanmadi}"
data="$(mktemp -d)"
out="$data/stdout"
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT

"$binary" serve --data-dir "$data/node" --http 127.0.0.1:0 --tcp off --tls off --https off \
  --secret "signup-rss-secret-0123456789abcdef0123" \
  --http-rate-per-sec 100000 --http-rate-burst 100000 >"$out" 2>/dev/null &
pid=$!
addr=""
for _ in $(seq 100); do
  addr="$(awk '$1 == "listening" && $2 == "http" { print $3 }' "$out")"
  [[ -n "$addr" ]] && break
  sleep 0.1
done
[[ -n "$addr" ]] || { echo "node did not start" >&2; exit 1; }

rss() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
echo "before: VmRSS $(rss VmRSS) kB, VmHWM $(rss VmHWM) kB"
start=$SECONDS
export addr concurrency
seq "$n" | xargs -P "$concurrency" -I{} sh -c 'curl -sf -o /dev/null -X POST \
  --interface "127.0.0.$(({} % concurrency + 1))" \
  -H "content-type: application/json" \
  -d "{\"username\":\"rss{}\",\"password\":\"correct horse battery staple\"}" \
  "http://$addr/v1/users"'

echo "after $n sign-ups in $((SECONDS - start)) s: VmRSS $(rss VmRSS) kB, VmHWM $(rss VmHWM) kB"
