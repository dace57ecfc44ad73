#!/usr/bin/env bash
# Builds `hanmadi` with the `foundationdb` feature (`--store fdb`), release
# profile, into target/fdb/release/hanmadi.
#
#   scripts/build-fdb.sh
#
# It links FoundationDB's client library from ../shared/fdb when that
# build sits beside the repository (then run the binary with
# LD_LIBRARY_PATH=../shared/fdb/lib), and otherwise the one the system's
# FoundationDB client package installed (libfdb_c.so in the linker's
# path). Bindgen needs libclang; it installs libclang-dev when missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/fdb-env.sh
source "$repo/scripts/fdb-env.sh"

fdb_ensure_libclang
if fdb_locate "$repo"; then
  fdb_link_env "$repo"
else
  export CARGO_TARGET_DIR="${FDB_CARGO_TARGET_DIR:-$repo/target/fdb}"
fi
cd "$repo"
cargo build --release --bin hanmadi --features hanmadi-gateway/foundationdb
echo "built $CARGO_TARGET_DIR/release/hanmadi"
