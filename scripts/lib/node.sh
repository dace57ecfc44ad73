# Shared by the figure scripts (sourced): stopping a background process,
# and starting a release node on loopback.

# stop_pid PID: ends a background process of this shell, if PID is set.
stop_pid() {
  [[ -n "$1" ]] || return 0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# launch_node ARG...: starts `$bin/hanmadi serve` on the data directory
# $data with the secret $secret and ARGs, and waits for the line that
# gives its HTTP address, not for a fixed time. Sets server_pid and url.
launch_node() {
  : >"$data/listening"
  "$bin/hanmadi" serve --data-dir "$data" --secret "$secret" --hostname 127.0.0.1 "$@" \
    >"$data/listening" 2>"$data/log" &
  server_pid=$!
  local http=""
  for _ in $(seq 100); do
    http=$(sed -n 's/^listening http //p' "$data/listening")
    [[ -n "$http" ]] && break
    sleep 0.1
  done
  [[ -n "$http" ]] || { cat "$data/log"; exit 1; }
  url="http://$http"
}
