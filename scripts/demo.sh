#!/usr/bin/env bash
# The main job end to end on a sample image the repository builds itself:
#
#  1. install the Debian packages this needs (scripts/install-deps.sh --demo);
#  2. build imagefs, the guest runner and the sample image generator;
#  3. write a two-layer OCI image, flatten it to ext4 and check it (e2fsck);
#  4. convert it into encrypted chunks and a sealed manifest;
#  5. serve it with `imagefs serve` over vhost-user-blk to a Linux guest
#     under QEMU -M microvm (Debian's kernel; KVM where the host's KVM boots
#     Linux, else TCG), which mounts it read-only and runs the image's
#     /bin/hello and reads its files; then print how many chunks the
#     guest's reads fetched on demand against the image's total;
#  6. verify every chunk, export the image and compare it byte for byte.
#
# Usage: bash scripts/demo.sh [WORK_DIR]   (as root on Debian 12; WORK_DIR
# defaults to $TMPDIR/imagefs-demo and is emptied first).  Caches
# (RocksDB's library, cargo's target directory, the guest kernel) live in
# $IMAGEFS_CACHE, default /var/cache/imagefs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --demo

export IMAGEFS_CACHE="${IMAGEFS_CACHE:-/var/cache/imagefs}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(bash scripts/target-dir.sh)}"
export CARGO_INCREMENTAL=0
mkdir -p "$IMAGEFS_CACHE"
work="${1:-${TMPDIR:-/tmp}/imagefs-demo}"
rm -rf "$work"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
PATH="$PATH:/usr/sbin:/sbin"

# RocksDB's C++ library (the shared local tier) is built once and cached,
# as for the tests (scripts/rocksdb-lib.sh); the first run on a fresh
# machine spends most of its time there.
if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
    ROCKSDB_LIB_DIR="$(bash scripts/rocksdb-lib.sh)"
    export ROCKSDB_LIB_DIR ROCKSDB_STATIC=1
fi
cargo build --release --locked -p tools -p tests --bins \
    --example sample_image --example fetch_summary
bin="$CARGO_TARGET_DIR/release"
imagefs="$bin/imagefs"

echo "== the sample image, flattened"
"$bin/examples/sample_image" "$work/oci"
"$imagefs" flatten "oci:$work/oci:sample" -o "$work/sample.img" --free-space 4M
e2fsck -fn "$work/sample.img"
debugfs -R 'ls -l /bin' "$work/sample.img" 2>/dev/null

echo "== converted"
export IMAGEFS_STORE="$work/store" IMAGEFS_KEYS="$work/keys"
unset IMAGEFS_CONFIG
"$imagefs" convert "oci:$work/oci:sample" --tag sample --free-space 4M
"$imagefs" inspect sample | head -n 13

echo "== served to a Linux guest (vhost-user-blk, QEMU -M microvm)"
socket="$work/blk.sock"
instance="$work/instance" # a fresh dedicated tier: what the guest fetched lands here
serve_pid=
stop_serve() { [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true; }
trap stop_serve EXIT
# --readahead 0: the count printed below is then the guest's own demand.
"$imagefs" serve sample --socket "$socket" --dedicated "$instance" --readahead 0 --stats \
    --stats-json "$work/serve.json" \
    >"$work/serve.log" 2>&1 &
serve_pid=$!

# The sample image has no shell of its own: the guest's busybox sh runs
# the image's /bin/hello (a script), then the guest reads the image's files.
guest_script='echo "guest: Linux $(uname -r); /dev/vda read-only=$(cat /sys/block/vda/ro), mounted on /mnt"
sh /mnt/bin/hello
cat /mnt/etc/os-release
sha256sum /mnt/usr/lib/data.bin'
# guest-run waits for the socket, boots the guest and prints its output.
if ! "$bin/guest-run" --socket "$socket" --console "$work/console.log" "$guest_script" \
    >"$work/guest.out"; then
    echo "demo: the guest failed; imagefs serve said:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi
cat "$work/guest.out"
# The frontend is gone: imagefs serve ends by itself and prints its report.
wait "$serve_pid" || { echo "demo: imagefs serve failed:" >&2; cat "$work/serve.log" >&2; exit 1; }
serve_pid=
cat "$work/serve.log"

grep -qx "hello from imagefs" "$work/guest.out" \
    || { echo "demo: the guest did not print the image's /bin/hello output" >&2; exit 1; }
want="$(debugfs -R 'cat /usr/lib/data.bin' "$work/sample.img" 2>/dev/null | sha256sum | cut -d' ' -f1)"
grep -q "^$want  /mnt/usr/lib/data.bin$" "$work/guest.out" \
    || { echo "demo: the guest read other bytes of /usr/lib/data.bin than the image holds ($want)" >&2; exit 1; }
echo "demo: the guest ran the image's /bin/hello and read /usr/lib/data.bin intact (sha256 $want)"

# How many chunks the guest's reads fetched on demand: serve's JSON report
# (read by a small tool, against the image's chunk table).  serve ran with
# no read-ahead and a fresh dedicated tier, which keeps every chunk it
# fetched, so the tool also shows the tier holding the same count.
fetched_chunks() {
    "$bin/examples/fetch_summary" --summary "$work/store" "$work/keys" sample "$instance" \
        "$work/serve.json"
}
echo "== fetched on demand"
fetched_chunks | tee "$work/fetched.txt"

echo "== verified and exported"
"$imagefs" verify sample
"$imagefs" export sample -o "$work/export.img"
cmp "$work/sample.img" "$work/export.img"
echo "demo: export is byte-identical to the flattened image; files are in $work"
