#!/usr/bin/env bash
# Record a block access trace with `imagefs serve --record-trace` while a
# real Linux guest under QEMU (-M microvm, TCG, vhost-user-blk) boots from
# the image and runs a command, for vmm-shim to replay (the guest is booted
# by the tests crate's guest-run).
#
#   vmm-shim/scripts/record-trace-serve.sh IMAGEFS_BIN IMAGE OUT_TRACE ['guest shell command']
#
# IMAGE is a tag or sha256:DIGEST; the tiers come from the environment as for
# any imagefs command (IMAGEFS_STORE, IMAGEFS_KEYS or IMAGEFS_CONFIG). The
# guest is Debian's stock kernel with the project's initramfs
# (scripts/guest-kernel.sh): it mounts /dev/vda read-only on /mnt and runs
# the command (default: the Debian python image's entrypoint check,
# `python3 -c "import json, sqlite3"` chrooted into /mnt). OUT_TRACE gets
# the daemon's JSON lines (manifest::trace), which vmm-shim reads.
set -euo pipefail
imagefs=${1:?imagefs binary}
image=${2:?image tag or digest}
out=${3:?output trace}
cmd=${4:-'chroot /mnt /usr/bin/python3 -c "import json, sqlite3; print(\"python ok\")"'}
# The guest and its QEMU command line come from the tests crate's guest-run.
source "$(dirname "$0")/guest-run.sh"
tmp=$(mktemp -d)
serve_pid=
cleanup() {
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
"$imagefs" serve "$image" --socket "$tmp/blk.sock" --record-trace "$out" --stats \
    >"$tmp/serve.out" 2>"$tmp/serve.err" &
serve_pid=$!
guest_ok=1
"$guest_run" --socket "$tmp/blk.sock" --cpus 1 --timeout 300 --console "$tmp/console.log" \
    "$cmd" >"$tmp/guest.out" || guest_ok=0
# The frontend is gone: the daemon ends by itself and finishes the trace.
for _ in $(seq 300); do
    kill -0 "$serve_pid" 2>/dev/null || break
    sleep 0.1
done
# A guest that never connected leaves the daemon waiting.
[ "$guest_ok" = 1 ] || kill "$serve_pid" 2>/dev/null || true
wait "$serve_pid" || { echo "record-trace-serve: imagefs serve failed:" >&2; cat "$tmp/serve.err" >&2; exit 1; }
serve_pid=
if [ "$guest_ok" = 0 ]; then
    echo "record-trace-serve: the guest did not finish its command; console tail:" >&2
    tail -20 "$tmp/console.log" >&2
    exit 1
fi
echo "record-trace-serve: $(($(wc -l <"$out") - 1)) reads -> $out"
head -5 "$tmp/guest.out"
cat "$tmp/serve.out" "$tmp/serve.err"
