#!/usr/bin/env bash
# Record a block access trace from a real Linux guest under QEMU (TCG),
# for vmm-shim to replay, when `imagefs serve --record-trace` is not at hand.
#
#   vmm-shim/scripts/record-trace-qemu.sh RAW_IMAGE OUT_TRACE ['guest shell command']
#
# The guest is Debian's stock kernel with the project's initramfs
# (scripts/guest-kernel.sh), booted by the tests crate's guest-run: it mounts /dev/vda read-only on /mnt and runs the
# command (default: the Debian python image's entrypoint check,
# `python3 -c "import json, sqlite3"` chrooted into /mnt). /dev/vda is QEMU's
# own virtio-blk over RAW_IMAGE; QEMU's trace event virtio_blk_handle_read
# gives every read the guest's driver submitted, in order. OUT_TRACE gets
# `OFFSET LEN` lines (bytes), the text format vmm-shim reads.
set -euo pipefail
raw=${1:?raw image}
out=${2:?output trace}
cmd=${3:-'chroot /mnt /usr/bin/python3 -c "import json, sqlite3; print(\"python ok\")"'}
# The guest and its QEMU command line come from the tests crate's guest-run.
source "$(dirname "$0")/guest-run.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! "$guest_run" --raw "$raw" --cpus 1 --timeout 300 --console "$tmp/console.log" \
    --qemu-trace "virtio_blk_handle_read,file=$tmp/qemu.trace" "$cmd" >"$tmp/guest.out"; then
    echo "record-trace-qemu: the guest did not finish its command; console tail:" >&2
    tail -20 "$tmp/console.log" >&2
    exit 1
fi
{
    echo "# guest reads recorded by QEMU (virtio_blk_handle_read) from a Linux guest running:"
    echo "#   $cmd"
    echo "# image: $(basename "$raw")"
    echo "# offset len (bytes)"
    # "virtio_blk_handle_read vdev 0x.. req 0x.. sector N nsectors M"
    sed -n 's/.*virtio_blk_handle_read .* sector \([0-9]*\) nsectors \([0-9]*\).*/\1 \2/p' "$tmp/qemu.trace" |
        awk '{ print $1 * 512, $2 * 512 }'
} >"$out"
echo "record-trace-qemu: $(grep -vc '^#' "$out") reads, $(awk '!/^#/ {s += $2} END {print s}' "$out") bytes -> $out"
head -5 "$tmp/guest.out"
