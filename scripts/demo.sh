#!/usr/bin/env bash
# The main job on a sample image the repository builds itself (no network):
# build imagefs, write a two-layer OCI image, flatten it to ext4, convert it
# into encrypted chunks and a sealed manifest, verify, export, compare.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${IMAGEFS_CACHE:-/var/cache/imagefs}/target}"
work="${1:-${TMPDIR:-/tmp}/imagefs-demo}"
rm -rf "$work"
mkdir -p "$work"

# RocksDB's C++ library (the shared local tier) is built once and cached,
# as for the tests (scripts/rocksdb-lib.sh); the first run on a fresh
# machine spends most of its time there.
if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
    ROCKSDB_LIB_DIR="$(bash scripts/rocksdb-lib.sh)"
    export ROCKSDB_LIB_DIR ROCKSDB_STATIC=1
fi
cargo build --release --locked -p tools -p tests --bins --example sample_image
bin="$CARGO_TARGET_DIR/release"
imagefs="$bin/imagefs"

"$bin/examples/sample_image" "$work/oci"
"$imagefs" flatten "oci:$work/oci:sample" -o "$work/sample.img" --free-space 4M

if command -v e2fsck >/dev/null || [ -x /usr/sbin/e2fsck ]; then
    PATH="$PATH:/usr/sbin:/sbin" e2fsck -fn "$work/sample.img"
    PATH="$PATH:/usr/sbin:/sbin" debugfs -R 'ls -l /bin' "$work/sample.img" 2>/dev/null
else
    echo "demo: e2fsprogs not installed; skipping the e2fsck check"
fi

export IMAGEFS_STORE="$work/store" IMAGEFS_KEYS="$work/keys"
"$imagefs" convert "oci:$work/oci:sample" --tag sample --free-space 4M
"$imagefs" inspect sample | head -n 13
"$imagefs" verify sample
"$imagefs" export sample -o "$work/export.img"
cmp "$work/sample.img" "$work/export.img"
echo "demo: export is byte-identical to the flattened image; files are in $work"
