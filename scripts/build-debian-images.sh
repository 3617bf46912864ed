#!/usr/bin/env bash
# Build real Debian test images into one OCI image layout (cached).
#
# Usage: scripts/build-debian-images.sh [CACHE_DIR]
#
#   CACHE_DIR defaults to ${IMAGEFS_CACHE:-/var/cache/imagefs}/debian-images.
#   The layout is $CACHE_DIR/oci, with three tags:
#     base    debootstrap --variant=minbase bookworm, one layer
#     python  base + one layer with python3 installed
#     node    base + one layer with nodejs installed
#   python and node share base's layer blob (same digest).
#
# If $CACHE_DIR/oci already holds all three tags the script says so and exits
# at once.  Otherwise it builds the layout in a temporary directory inside
# $CACHE_DIR and renames it into place only when complete.  The debootstrap
# result is kept as $CACHE_DIR/bookworm-minbase-<arch>.tar.zst, and packages
# downloaded for the app layers under $CACHE_DIR/apt/, so rebuilding the
# layout does not download again.  Delete $CACHE_DIR to start from scratch.
#
# Environment:
#   IMAGEFS_CACHE      root of the cache (see above)
#   DEBIAN_MIRROR      mirror for debootstrap (default: the Debian mirror this
#                      machine's apt uses, from scripts/debian-mirror.sh)
#   SOURCE_DATE_EPOCH  timestamp clamped into files and image configs
#                      (default 1747699200 = 2025-05-20T00:00:00Z)
#
# Needs root (debootstrap, chroot, mounts).
set -euo pipefail

SUITE=bookworm
TAGS=(base python node)
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1747699200}"
CACHE_DIR="${1:-${IMAGEFS_CACHE:-/var/cache/imagefs}/debian-images}"
OCI="$CACHE_DIR/oci"
here="$(cd "$(dirname "$0")" && pwd)"

msg() { echo "build-debian-images: $*" >&2; }
die() { msg "error: $*"; exit 1; }

# Tags present in a layout's index.json (umoci writes compact JSON).
layout_tags() {
    [ -f "$1/index.json" ] || return 0
    grep -oE '"org\.opencontainers\.image\.ref\.name"[[:space:]]*:[[:space:]]*"[^"]*"' "$1/index.json" \
        | sed -E 's/.*"([^"]*)"$/\1/'
}

layout_complete() {
    local tags t
    tags="$(layout_tags "$1")"
    for t in "${TAGS[@]}"; do
        grep -qxF "$t" <<<"$tags" || return 1
    done
}

if layout_complete "$OCI"; then
    echo "build-debian-images: reusing cached images at $OCI (tags: ${TAGS[*]})"
    exit 0
fi

# ---------------------------------------------------------------------------
# Preconditions

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mounts need it)"
case "$CACHE_DIR" in
    *[[:space:]\\]*) die "CACHE_DIR must not contain whitespace or backslashes: '$CACHE_DIR'" ;;
esac
TOOLS=(debootstrap umoci tar zstd flock chroot mount umount find)
have_tools() {
    local cmd
    for cmd in "${TOOLS[@]}"; do command -v "$cmd" >/dev/null || return 1; done
}
# scripts/test.sh has installed everything already; run on its own, this
# installs only what it lacks.
if ! have_tools; then
    bash "$here/install-deps.sh" --images || die "scripts/install-deps.sh --images failed"
fi
for cmd in "${TOOLS[@]}"; do
    command -v "$cmd" >/dev/null \
        || die "'$cmd' not found; run scripts/install-deps.sh --images (debootstrap umoci zstd util-linux tar)"
done
MIRROR="$(bash "$here/debian-mirror.sh" "$SUITE")" \
    || die "no Debian mirror in this machine's apt sources; set DEBIAN_MIRROR"

start=$(date +%s)
mkdir -p "$CACHE_DIR"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd)"
OCI="$CACHE_DIR/oci"

# One build at a time per cache; whoever waited may find the work done.
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    msg "another build holds $CACHE_DIR/.lock; waiting"
    flock 9
fi
if layout_complete "$OCI"; then
    echo "build-debian-images: reusing cached images at $OCI (tags: ${TAGS[*]})"
    exit 0
fi

ARCH="$(dpkg --print-architecture)"
case "$ARCH" in
    amd64 | arm64 | ppc64le | s390x | riscv64) GOARCH="$ARCH" ;;
    i386) GOARCH=386 ;;
    armhf | armel) GOARCH=arm ;;
    *) GOARCH="$ARCH" ;;
esac
ROOTFS_TAR="$CACHE_DIR/$SUITE-minbase-$ARCH.tar.zst"
APT_CACHE="$CACHE_DIR/apt"
CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

WORK="$(mktemp -d "$CACHE_DIR/.build.XXXXXX")"
LAYOUT="$WORK/oci"

# Unmount everything below $WORK, deepest first.
unmount_below() {
    local m
    awk -v w="$1/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r \
        | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" || msg "warning: could not unmount $m"
        done
}

# Keep the original stdout/stderr: a signal can run the exit trap while a
# command's output is redirected into a log file that cleanup then deletes.
exec 7>&1 8>&2

cleanup() {
    local rc=$?
    set +e
    exec 1>&7 2>&8
    unmount_below "$WORK"
    if awk -v w="$WORK/" 'index($5, w) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        msg "warning: mounts remain below $WORK; leaving it in place"
    else
        rm -rf --one-file-system "$WORK"
    fi
    [ "$rc" = 0 ] || msg "failed (exit $rc); the cache at $OCI was not changed"
    exit "$rc"
}
trap cleanup EXIT
set -E
trap 'msg "error: command failed (line $LINENO): $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# Set every mtime newer than SOURCE_DATE_EPOCH to SOURCE_DATE_EPOCH (without
# following symlinks or opening files), so layers do not depend on when they
# were built.  Content changes are still seen by umoci (it compares digests).
clamp_mtimes() {
    find "$1" -xdev -newermt "@$SOURCE_DATE_EPOCH" -print0 \
        | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
}

# Remove build-time state that should not be part of any layer.
scrub_rootfs() {
    local r="$1"
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin \
        "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/archives/partial/* \
        "$r"/var/log/apt/* "$r"/var/log/dpkg.log "$r"/var/log/alternatives.log \
        "$r"/var/log/bootstrap.log "$r"/var/cache/ldconfig/aux-cache \
        "$r"/etc/resolv.conf "$r"/etc/hostname
    clamp_mtimes "$r"
}

TAR_OPTS=(--numeric-owner --xattrs --xattrs-include='*' --acls)

# ---------------------------------------------------------------------------
# 1. The minbase root filesystem (cached as a tarball).

if [ -s "$ROOTFS_TAR" ]; then
    msg "using cached rootfs $ROOTFS_TAR"
else
    msg "debootstrap --variant=minbase $SUITE from $MIRROR (takes a few minutes; log: $WORK/debootstrap.log)"
    target="$WORK/debootstrap"
    if ! debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$target" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        [ -f "$target/debootstrap/debootstrap.log" ] && tail -n 30 "$target/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (is $MIRROR reachable?)"
    fi
    unmount_below "$WORK" # debootstrap can leave /proc or /sys mounted
    scrub_rootfs "$target"
    tar "${TAR_OPTS[@]}" --sort=name -C "$target" -cpf - . | zstd -q -T0 -o "$ROOTFS_TAR.tmp"
    mv -f "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf --one-file-system "$target"
    msg "saved rootfs as $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
fi

# ---------------------------------------------------------------------------
# 2. The layout: base.

msg "creating layout, tag base"
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:base"
umoci unpack --image "$LAYOUT:base" "$WORK/bundle-base"
zstd -dc "$ROOTFS_TAR" | tar "${TAR_OPTS[@]}" -xpf - -C "$WORK/bundle-base/rootfs"
umoci repack --image "$LAYOUT:base" --history.created "$CREATED" \
    --history.created_by "debootstrap --variant=minbase $SUITE" "$WORK/bundle-base"
umoci config --image "$LAYOUT:base" --no-history --created "$CREATED" \
    --os linux --architecture "$GOARCH" \
    --config.env "PATH=$IMAGE_PATH" --config.cmd /bin/bash
rm -rf --one-file-system "$WORK/bundle-base"

# ---------------------------------------------------------------------------
# 3. App images: base + one layer each.

# run_in ROOTFS CMD... : run a command in the chroot with a clean environment.
run_in() {
    local r="$1"
    shift
    chroot "$r" /usr/bin/env -i PATH="$IMAGE_PATH" HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"
}

# build_app TAG CMD PACKAGE... : tag TAG = base + a layer with PACKAGEs.
build_app() {
    local tag="$1" cmd="$2"
    shift 2
    local bundle="$WORK/bundle-$tag"
    local r="$bundle/rootfs"
    local log="$WORK/apt-$tag.log"
    msg "tag $tag: installing $* (log: $log)"
    umoci unpack --image "$LAYOUT:base" "$bundle"

    # Package lists and downloaded .debs live in the cache, bind-mounted, so
    # they are never part of the layer and a rebuild does not download again.
    mkdir -p "$APT_CACHE/lists/partial" "$APT_CACHE/archives/partial"
    mount --bind "$APT_CACHE/lists" "$r/var/lib/apt/lists"
    mount --bind "$APT_CACHE/archives" "$r/var/cache/apt/archives"
    mount -t proc proc "$r/proc"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf"

    if ! compgen -G "$APT_CACHE/lists/*_Packages*" >/dev/null; then
        run_in "$r" apt-get update >>"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; die "apt-get update in the $tag chroot failed"; }
    fi
    if ! run_in "$r" apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1; then
        # Cached lists may be stale (packages gone from the mirror): refresh once.
        msg "tag $tag: install failed, refreshing package lists and retrying"
        run_in "$r" apt-get update >>"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; die "apt-get update in the $tag chroot failed"; }
        run_in "$r" apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; die "apt-get install $* in the $tag chroot failed"; }
    fi
    local version
    version="$(run_in "$r" "$cmd" --version 2>&1)" || die "tag $tag: '$cmd --version' failed: $version"
    msg "tag $tag: $version"

    umount "$r/proc"
    umount "$r/var/cache/apt/archives"
    umount "$r/var/lib/apt/lists"
    scrub_rootfs "$r"

    umoci repack --image "$LAYOUT:$tag" --history.created "$CREATED" \
        --history.created_by "apt-get install -y --no-install-recommends $*" "$bundle"
    umoci config --image "$LAYOUT:$tag" --no-history --created "$CREATED" --config.cmd "$cmd"
    rm -rf --one-file-system "$bundle"
}

build_app python python3 python3
build_app node node nodejs

umoci gc --layout "$LAYOUT"

# ---------------------------------------------------------------------------
# 4. Check, move into place, report.

manifest_digest() { # LAYOUT TAG
    if command -v jq >/dev/null; then
        jq -r --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$1/index.json"
    else
        grep -oE '\{[^{}]*\{[^{}]*"org\.opencontainers\.image\.ref\.name":"'"$2"'"[^{}]*\}[^{}]*\}' "$1/index.json" \
            | grep -oE '"digest":"sha256:[0-9a-f]{64}"' | cut -d'"' -f4
    fi
}

blob() { echo "$1/blobs/${2%%:*}/${2#*:}"; } # LAYOUT DIGEST

# Prints "DIGEST SIZE" per layer, in order.
layers_of() { # LAYOUT TAG
    local m
    m="$(blob "$1" "$(manifest_digest "$1" "$2")")"
    if command -v jq >/dev/null; then
        jq -r '.layers[] | "\(.digest) \(.size)"' "$m"
    else
        sed -E 's/.*"layers":\[//' "$m" | grep -oE '"digest":"sha256:[0-9a-f]{64}","size":[0-9]+' \
            | sed -E 's/"digest":"([^"]*)","size":([0-9]+)/\1 \2/'
    fi
}

layout_complete "$LAYOUT" || die "built layout lacks a tag (have: $(layout_tags "$LAYOUT" | xargs))"
mapfile -t base_layers < <(layers_of "$LAYOUT" base)
[ "${#base_layers[@]}" = 1 ] || die "base has ${#base_layers[@]} layers, expected 1"
for t in python node; do
    mapfile -t l < <(layers_of "$LAYOUT" "$t")
    [ "${#l[@]}" = 2 ] || die "$t has ${#l[@]} layers, expected 2"
    [ "${l[0]}" = "${base_layers[0]}" ] || die "$t's first layer ${l[0]} is not base's layer ${base_layers[0]}"
done

if [ -e "$OCI" ]; then
    mv "$OCI" "$WORK/oci.old" # an incomplete older layout
fi
mv "$LAYOUT" "$OCI"

echo "build-debian-images: built $OCI in $(($(date +%s) - start))s"
for t in "${TAGS[@]}"; do
    echo "  $t: manifest $(manifest_digest "$OCI" "$t")"
    while read -r d s; do
        echo "    layer $d $s bytes ($(numfmt --to=iec --suffix=B "$s"))"
    done < <(layers_of "$OCI" "$t")
done
