#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks need (Debian 12,
# bookworm, as root).  Idempotent and fast when everything is present: it only
# touches apt when a package is missing.  Quiet unless it installs something
# or something fails.
#
# Usage: scripts/install-deps.sh
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# Packages that must be installed.
required=(
    e2fsprogs debootstrap umoci skopeo busybox-static zstd attr libclang-dev
    tar gzip util-linux kmod cpio
    # C: RocksDB's build, the vmm-shim probe guest, the guest benchmark's
    # static program.
    gcc g++ libc6-dev
    # The QEMU guest tests (qemu-system-common brings qemu-storage-daemon).
    qemu-system-x86
)
# Packages installed only if the distribution has them.
optional=(fuse3)

die() { echo "install-deps: $*" >&2; exit 1; }

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# Garage, the S3 server the origin tests start (tests/src/garage.rs), is not
# in Debian: build it once with cargo into a cache outside the clone.  Slow
# (about 20 minutes on 2 cores), so only when it is missing.  Runs after the
# Debian packages, on every way out below.
install_garage() {
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
for p in "${required[@]}" "${optional[@]}"; do
    installed "$p" || missing+=("$p")
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
    for o in "${optional[@]}"; do [ "$p" = "$o" ] && optional_pkg=1; done
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
