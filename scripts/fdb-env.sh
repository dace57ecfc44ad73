# Shell functions for building and testing against the FoundationDB client
# and throwaway cluster in ../shared/fdb (beside the repository). Sourced by
# scripts/with-fdb.sh and .ci/run; not meant to be run.
#
#   fdb_locate REPO        sets FDB_DIR; fails if there is no FoundationDB there
#   fdb_ensure_libclang    installs libclang-dev (bindgen needs it) if missing
#   fdb_link_env REPO      exports FDB_CLIENT_LIB_PATH, LD_LIBRARY_PATH and a
#                          CARGO_TARGET_DIR of its own for feature builds
#   fdb_start_cluster      starts a cluster; exports FDB_CLUSTER_FILE, FDB_WORK_DIR
#   fdb_stop_cluster       stops the cluster fdb_start_cluster started

fdb_locate() {
  local repo="$1"
  FDB_DIR="$(dirname "$repo")/shared/fdb"
  [[ -x "$FDB_DIR/start-cluster.sh" && -f "$FDB_DIR/lib/libfdb_c.so" ]]
}

fdb_ensure_libclang() {
  if command -v dpkg-query >/dev/null 2>&1; then
    dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'ok installed' && return 0
  elif [[ -n "${LIBCLANG_PATH:-}" ]] || ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
    return 0
  fi
  echo "fdb-env: installing libclang-dev (bindgen in foundationdb-sys loads libclang)" >&2
  local sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq libclang-dev >/dev/null
}

fdb_link_env() {
  local repo="$1"
  export FDB_CLIENT_LIB_PATH="$FDB_DIR/lib"
  export LD_LIBRARY_PATH="$FDB_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # A target dir of its own: enabling the feature in the default one would
  # rebuild storage and everything above it on every switch.
  export CARGO_TARGET_DIR="${FDB_CARGO_TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}/fdb}"
  # foundationdb-sys reads FDB_CLIENT_LIB_PATH in its build script without
  # asking cargo to rerun it when the variable changes, so a build made with
  # another (or no) path would keep failing to link: start it over.
  local stamp="$CARGO_TARGET_DIR/.fdb-client-lib-path"
  if [[ -d "$CARGO_TARGET_DIR" && "$(cat "$stamp" 2>/dev/null)" != "$FDB_CLIENT_LIB_PATH" ]]; then
    (cd "$repo" && cargo clean -q -p foundationdb-sys) || return 1
  fi
  mkdir -p "$CARGO_TARGET_DIR" && printf '%s\n' "$FDB_CLIENT_LIB_PATH" >"$stamp"
}

fdb_start_cluster() {
  local out key value
  out="$("$FDB_DIR/start-cluster.sh")" || return 1
  while IFS='=' read -r key value; do
    case "$key" in
      FDB_CLUSTER_FILE | FDB_WORK_DIR | FDB_SERVER_PID) export "$key=$value" ;;
    esac
  done <<<"$out"
  [[ -n "${FDB_CLUSTER_FILE:-}" && -f "$FDB_CLUSTER_FILE" && -n "${FDB_WORK_DIR:-}" ]] || {
    echo "fdb-env: start-cluster.sh did not report a cluster file" >&2
    return 1
  }
}

fdb_stop_cluster() {
  if [[ -n "${FDB_WORK_DIR:-}" && -d "$FDB_WORK_DIR" ]]; then
    "$FDB_DIR/start-cluster.sh" stop "$FDB_WORK_DIR" || true
  fi
  unset FDB_WORK_DIR FDB_SERVER_PID
}
