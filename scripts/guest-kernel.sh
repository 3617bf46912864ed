#!/usr/bin/env bash
# Fetch Debian's kernel and build a small initramfs for the QEMU guest tests
# (cached: a second run with the same kernel package does nothing).
#
#   scripts/guest-kernel.sh        prints two lines: KERNEL=<vmlinuz>, INITRD=<cpio.gz>
#
# The kernel is the image package that `linux-image-amd64` depends on,
# fetched with `apt-get download` (no install).  The initramfs holds
# busybox (from busybox-static), the modules virtio_mmio, virtio_blk and ext4
# need (resolved with `modprobe --show-depends` against the extracted
# modules tree, decompressed so that busybox insmod loads them), and an
# /init that:
#   1. loads those modules and waits for /dev/vda;
#   2. mounts /dev/vda on /mnt read-only, or read-write with `imagefs.rw=1`
#      on the kernel command line;
#   3. runs the shell script given base64-encoded as `imagefs.cmd=…`
#      between the lines `IMAGEFS-GUEST: BEGIN` and `IMAGEFS-GUEST: END rc=N`;
#   4. unmounts, syncs and reboots (QEMU's -no-reboot turns that into an exit).
set -euo pipefail

CACHE="${IMAGEFS_CACHE:-/var/cache/imagefs}/guest"
mkdir -p "$CACHE"
die() { echo "guest-kernel: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb depmod modprobe cpio gzip xz; do
    command -v "$tool" >/dev/null || [ -x "/sbin/$tool" ] || [ -x "/usr/sbin/$tool" ] \
        || die "$tool not found (run scripts/install-deps.sh)"
done
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox not found (package busybox-static)"
# busybox-static's binary is static; a dynamic busybox would not run in the initramfs.
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install busybox-static"
fi

# The package comes from this machine's apt sources (no mirror named here).
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
pkg=$(kernel_pkg)
if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    # A fresh machine may have no package lists yet.
    echo "guest-kernel: linux-image-amd64 is unknown to apt; running apt-get update" >&2
    apt-get update >/dev/null 2>&1 || echo "guest-kernel: warning: apt-get update reported errors" >&2
    pkg=$(kernel_pkg)
fi
[ -n "$pkg" ] || die "cannot resolve the kernel package linux-image-amd64 depends on (apt-get update?)"
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
work="$CACHE/$pkg-$version"
kernel="$work/vmlinuz"
initrd="$work/initramfs.cpio.gz"

if [ ! -s "$kernel" ] || [ ! -s "$initrd" ]; then
    tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download "$pkg=$version" >"$tmp/download.log" 2>&1) \
        || { cat "$tmp/download.log" >&2; die "apt-get download $pkg=$version failed"; }
    deb=$(ls "$tmp"/*.deb)
    dpkg-deb -x "$deb" "$tmp/root"
    kver=$(ls "$tmp/root/lib/modules" | head -n1)
    [ -n "$kver" ] || die "no modules in $deb"
    depmod -b "$tmp/root" "$kver"

    ir="$tmp/initramfs"
    mkdir -p "$ir"/{bin,dev,proc,sys,mnt,lib/modules}
    cp "$busybox" "$ir/bin/busybox"
    : >"$ir/modules.order"
    # insmod lines in load order; builtin ones print "builtin NAME".
    # (one module per call: modprobe takes further words as parameters)
    for mod in virtio_mmio virtio_blk ext4; do
        modprobe -d "$tmp/root" -S "$kver" --show-depends "$mod" || die "modprobe: no $mod in $deb"
    done | awk '$1 == "insmod" {print $2}' | while read -r ko; do
            name=$(basename "$ko")
            case "$name" in
                *.ko.xz) out="${name%.xz}"; xz -dc "$ko" >"$ir/lib/modules/$out" ;;
                *.ko.zst) out="${name%.zst}"; zstd -qdc "$ko" >"$ir/lib/modules/$out" ;;
                *.ko.gz) out="${name%.gz}"; gzip -dc "$ko" >"$ir/lib/modules/$out" ;;
                *) out="$name"; cp "$ko" "$ir/lib/modules/$out" ;;
            esac
            grep -qx "$out" "$ir/modules.order" || echo "$out" >>"$ir/modules.order"
        done
    cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" 2>/dev/null || echo "IMAGEFS-GUEST: insmod $m failed"
done
mode=ro
cmd=
for a in $(cat /proc/cmdline); do
    case "$a" in
        imagefs.rw=1) mode=rw ;;
        imagefs.cmd=*) cmd="${a#imagefs.cmd=}" ;;
    esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t ext4 -o "$mode" /dev/vda /mnt; then
    echo "IMAGEFS-GUEST: mounted /dev/vda $mode"
else
    echo "IMAGEFS-GUEST: mount of /dev/vda failed"
fi
echo "$cmd" | base64 -d >/cmd.sh
echo "IMAGEFS-GUEST: BEGIN"
sh /cmd.sh
echo "IMAGEFS-GUEST: END rc=$?"
umount /mnt 2>/dev/null
sync
reboot -f
EOF
    chmod 755 "$ir/init"
    (cd "$ir" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) >"$tmp/initramfs.cpio.gz"

    mkdir -p "$work"
    cp "$tmp/root/boot/vmlinuz-$kver" "$work/vmlinuz.tmp"
    mv "$work/vmlinuz.tmp" "$kernel"
    cp "$ir/modules.order" "$work/modules.order"
    mv "$tmp/initramfs.cpio.gz" "$initrd"
fi

echo "KERNEL=$kernel"
echo "INITRD=$initrd"
