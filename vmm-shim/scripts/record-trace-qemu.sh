#!/usr/bin/env bash
# Record a block access trace from a real Linux guest under QEMU (TCG),
# for vmm-shim to replay, when `imagefs serve --record-trace` is not at hand.
#
#   vmm-shim/scripts/record-trace-qemu.sh RAW_IMAGE OUT_TRACE ['guest shell command']
#
# The guest is Debian's stock kernel with the project's initramfs
# (scripts/guest-kernel.sh; under TCG the clock-calibration options from
# tests/src/guest.rs): it mounts /dev/vda read-only on /mnt and runs the
# command (default: the Debian python image's entrypoint check,
# `python3 -c "import json, sqlite3"` chrooted into /mnt). /dev/vda is QEMU's
# own virtio-blk over RAW_IMAGE; QEMU's trace event virtio_blk_handle_read
# gives every read the guest's driver submitted, in order. OUT_TRACE gets
# `OFFSET LEN` lines (bytes), the text format vmm-shim reads.
set -euo pipefail
raw=${1:?raw image}
out=${2:?output trace}
cmd=${3:-'chroot /mnt /usr/bin/python3 -c "import json, sqlite3; print(\"python ok\")"'}
here=$(cd "$(dirname "$0")/../.." && pwd)
eval "$(bash "$here/scripts/guest-kernel.sh")"   # KERNEL=… INITRD=…
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
b64=$(printf '%s\n' "$cmd" | base64 -w0)
timeout 300 qemu-system-x86_64 -M microvm,accel=tcg -m 512 -smp 1 -nographic -no-reboot \
    -global virtio-mmio.force-legacy=false \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -cpu max -append "console=ttyS0 quiet panic=-1 tsc_early_khz=2000000 lpj=4000000 no_timer_check imagefs.cmd=$b64" \
    -drive "id=d0,file=$raw,format=raw,if=none,readonly=on,cache=none,aio=threads" \
    -device virtio-blk-device,drive=d0 \
    -trace "virtio_blk_handle_read,file=$tmp/qemu.trace" >"$tmp/console.log" 2>&1 || true
if ! grep -q "IMAGEFS-GUEST: END rc=0" "$tmp/console.log"; then
    echo "record-trace-qemu: the guest did not finish its command; console tail:" >&2
    tail -20 "$tmp/console.log" >&2
    exit 1
fi
{
    echo "# guest reads recorded by QEMU (virtio_blk_handle_read) from a Linux guest running:"
    echo "#   $cmd"
    echo "# image: $(basename "$raw")  kernel: $(basename "$(dirname "$KERNEL")")"
    echo "# offset len (bytes)"
    # "virtio_blk_handle_read vdev 0x.. req 0x.. sector N nsectors M"
    sed -n 's/.*virtio_blk_handle_read .* sector \([0-9]*\) nsectors \([0-9]*\).*/\1 \2/p' "$tmp/qemu.trace" |
        awk '{ print $1 * 512, $2 * 512 }'
} >"$out"
echo "record-trace-qemu: $(grep -vc '^#' "$out") reads, $(awk '!/^#/ {s += $2} END {print s}' "$out") bytes -> $out"
grep "IMAGEFS-GUEST" "$tmp/console.log" | head -5
