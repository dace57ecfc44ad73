#!/usr/bin/env bash
# Runs a command against a throwaway FoundationDB cluster, with the client
# library from ../shared/fdb linked in, then stops the cluster.
#
#   scripts/with-fdb.sh                      # all storage tests with the FoundationDB engine
#   scripts/with-fdb.sh cargo test -p hanmadi-storage --features foundationdb --test kv_fdb
#   scripts/with-fdb.sh bash                 # a shell with FDB_CLUSTER_FILE set
#
# Feature builds go to target/fdb (or $FDB_CARGO_TARGET_DIR), away from the
# default build.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/fdb-env.sh
source "$repo/scripts/fdb-env.sh"

fdb_locate "$repo" || {
  echo "with-fdb: no FoundationDB client and server in $FDB_DIR" >&2
  exit 1
}
fdb_ensure_libclang
fdb_link_env "$repo"
fdb_start_cluster
trap fdb_stop_cluster EXIT

cd "$repo"
if [[ $# -eq 0 ]]; then
  set -- cargo test -p hanmadi-storage --features foundationdb
fi
"$@"
