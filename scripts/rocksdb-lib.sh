#!/usr/bin/env bash
# Builds RocksDB's static library once (from the sources bundled in the
# librocksdb-sys crate named by Cargo.lock) and caches it outside the clone,
# so cargo builds link it instead of compiling RocksDB's C++ again for
# every feature combination. Prints the library directory.
#
# Use: export ROCKSDB_LIB_DIR="$(bash scripts/rocksdb-lib.sh)" ROCKSDB_STATIC=1
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${IMAGEFS_CACHE:-/var/cache/imagefs}"
version="$(awk '/^name = "librocksdb-sys"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)"
[ -n "$version" ] || { echo "rocksdb-lib.sh: librocksdb-sys is not in Cargo.lock" >&2; exit 1; }
lib_dir="$cache/rocksdb/$version"
if [ ! -f "$lib_dir/librocksdb.a" ]; then
    echo "building RocksDB $version once (a long C++ build); cached in $lib_dir" >&2
    target="$cache/rocksdb/build"
    # The variables must be unset here, or the crate would try to link the
    # library this builds.
    env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC CARGO_TARGET_DIR="$target" \
        cargo build --locked -p librocksdb-sys >&2
    built="$(ls -t "$target"/debug/build/librocksdb-sys-*/out/librocksdb.a | head -1)"
    mkdir -p "$lib_dir.tmp"
    cp "$built" "$lib_dir.tmp/librocksdb.a"
    # Without its debug info the library is 43 MB instead of 1.3 GB, and so
    # is every test binary that links it (each was 400 MB).
    strip --strip-debug "$lib_dir.tmp/librocksdb.a"
    rm -rf "$lib_dir"
    mv "$lib_dir.tmp" "$lib_dir"
    # The C++ objects take gigabytes; only the library is kept.
    rm -rf "$target"
fi
echo "$lib_dir"
