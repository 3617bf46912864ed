#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, build the real
# Debian test images (cached), then run every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (tests loop-mount images and install packages)" >&2
    exit 1
fi

bash scripts/install-deps.sh

# Caches live outside the clone; they only save time, never decide results.
export IMAGEFS_CACHE="${IMAGEFS_CACHE:-/var/cache/imagefs}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(bash scripts/target-dir.sh)}"
# Incremental state only helps edit-compile loops and takes gigabytes.
export CARGO_INCREMENTAL=0
mkdir -p "$IMAGEFS_CACHE"

# (It finds the tools install-deps.sh put there: no second install-deps run.)
bash scripts/build-debian-images.sh

# RocksDB's C++ library is built once and linked by every cargo build
# (its crate would otherwise compile it again for each feature set).
ROCKSDB_LIB_DIR="$(bash scripts/rocksdb-lib.sh)"
export ROCKSDB_LIB_DIR ROCKSDB_STATIC=1

df -h "$IMAGEFS_CACHE" /tmp
cargo build --workspace --all-targets --locked
cargo test --workspace --locked

# The fuzz smoke: every cargo-fuzz target for a short while (a longer run of
# one target: scripts/fuzz.sh TARGET SECONDS). fuzz.sh installs cargo-fuzz.
targets=$(bash scripts/fuzz.sh --list)
[ -n "$targets" ] || { echo "scripts/test.sh: no fuzz targets listed" >&2; exit 1; }
for t in $targets; do
    bash scripts/fuzz.sh "$t" "${IMAGEFS_FUZZ_SMOKE_SECS:-20}"
done
