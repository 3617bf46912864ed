#!/usr/bin/env bash
# Install the Debian packages a command needs (Debian 12, bookworm, as root).
# Idempotent and fast when everything is present: it only touches apt when a
# package is missing.  Quiet unless it installs something or something fails.
#
# Usage: scripts/install-deps.sh [--demo | --images | --all]
#
#   --demo    what scripts/demo.sh builds and runs: the C/C++ toolchain and
#             libclang (RocksDB's build and bindgen), e2fsprogs (e2fsck,
#             debugfs), QEMU, and what scripts/guest-kernel.sh needs to make
#             the guest's kernel and initramfs (busybox-static, cpio, kmod,
#             xz-utils, zstd, gzip).
#   --images  what scripts/build-debian-images.sh needs (debootstrap, umoci).
#   --all     (the default) everything the tests and benchmarks use: both of
#             the above, skopeo, docker-registry, openssl, apache2-utils (htpasswd), attr,
#             fonts-dejavu-core, softhsm2, docker-credential-pass (with pass
#             and gnupg), fuse3, and Garage (built with cargo
#             into ${IMAGEFS_CACHE:-/var/cache/imagefs}/tools: not in Debian).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# scripts/demo.sh: build (RocksDB's C++ and bindgen, the linker), check the
# image, boot the guest (scripts/guest-kernel.sh unpacks the kernel package
# and its xz-compressed modules, builds the initramfs with cpio and gzip).
demo=(
    gcc g++ libc6-dev libclang-dev
    e2fsprogs
    qemu-system-x86
    busybox-static cpio kmod xz-utils zstd gzip tar util-linux
)
# scripts/build-debian-images.sh.
images=(debootstrap umoci zstd tar util-linux)
# The rest of the tests and benchmarks (qemu-system-x86 also brings
# qemu-storage-daemon, the vhost benchmark's reference backend;
# fonts-dejavu-core is the TrueType font `vmm-shim coldstart --plots` draws
# its text with, read by plotters' pure-Rust ab_glyph: no fontconfig;
# softhsm2 is the PKCS#11 token the key provider tests initialise;
# golang-docker-credential-helpers' docker-credential-pass, with pass and
# gnupg, is the credential helper the registry CLI tests log in through).
tests_only=(skopeo attr fonts-dejavu-core docker-registry openssl apache2-utils softhsm2
    golang-docker-credential-helpers pass gnupg)

profile=all
case "${1:-}" in
    "" | --all) profile=all ;;
    --demo) profile=demo ;;
    --images) profile=images ;;
    *) echo "usage: scripts/install-deps.sh [--demo | --images | --all]" >&2; exit 2 ;;
esac

# Packages that must be installed, and those installed only if the
# distribution has them.
optional=()
case "$profile" in
    demo) required=("${demo[@]}") ;;
    images) required=("${images[@]}") ;;
    all)
        required=("${demo[@]}" "${images[@]}" "${tests_only[@]}")
        optional=(fuse3)
        ;;
esac

die() { echo "install-deps: $*" >&2; exit 1; }

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# Garage, the S3 server the origin tests start (tests/src/garage.rs), is not
# in Debian: build it once with cargo into a cache outside the clone.  Slow
# (about 20 minutes on 2 cores), so only when it is missing.  Runs after the
# Debian packages, on every way out below.
install_garage() {
    [ "$profile" = all ] || return 0
    local version=2.5.0
    local tools="${IMAGEFS_CACHE:-/var/cache/imagefs}/tools"
    [ -n "${IMAGEFS_GARAGE:-}" ] && return 0
    [ -x "$tools/bin/garage" ] && return 0
    command -v cargo >/dev/null || die "cargo not found; it is needed to build garage"
    mkdir -p "$tools" || die "cannot create $tools"
    local glog="$tools/garage-install.log"
    echo "install-deps: building garage $version into $tools (slow; log: $glog)" >&2
    if ! cargo install garage --version "$version" --locked --root "$tools" >"$glog" 2>&1; then
        tail -n 30 "$glog" >&2
        die "cargo install garage failed (log: $glog)"
    fi
    echo "install-deps: installed garage into $tools/bin"
}

missing=()
for p in "${required[@]}" ${optional[@]+"${optional[@]}"}; do
    installed "$p" || { [[ " ${missing[*]-} " == *" $p "* ]] || missing+=("$p"); }
done
[ "${#missing[@]}" -eq 0 ] && { install_garage; exit 0; }

[ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
command -v apt-get >/dev/null || die "apt-get not found (this script is for Debian); install by hand: ${missing[*]}"

log=$(mktemp -t install-deps.XXXXXX)
trap 'rm -f "$log"' EXIT

# A missing package means the package lists may be stale (or absent on a
# fresh machine): refresh them once.  A failure here is not fatal by itself —
# an unrelated, unreachable third-party source makes apt-get update fail while
# the Debian lists are fine — the install below decides.
if ! apt-get update >"$log" 2>&1; then
    echo "install-deps: warning: 'apt-get update' reported errors (continuing):" >&2
    grep -E '^(E|W):' "$log" >&2 || tail -n 20 "$log" >&2
fi

# Drop optional packages the distribution does not have.
to_install=()
for p in "${missing[@]}"; do
    optional_pkg=0
    for o in ${optional[@]+"${optional[@]}"}; do [ "$p" = "$o" ] && optional_pkg=1; done
    if [ "$optional_pkg" = 1 ]; then
        candidate=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
            echo "install-deps: optional package $p is not available; skipping" >&2
            continue
        fi
    fi
    to_install+=("$p")
done
[ "${#to_install[@]}" -eq 0 ] && { install_garage; exit 0; }

if ! apt-get install -y --no-install-recommends "${to_install[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    die "apt-get install failed for: ${to_install[*]}"
fi

# Check that apt really did install everything.
for p in "${to_install[@]}"; do
    installed "$p" || { cat "$log" >&2; die "package $p is still not installed"; }
done
echo "install-deps: installed ${to_install[*]}"
install_garage
