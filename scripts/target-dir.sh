#!/usr/bin/env bash
# Prints this checkout's cargo target directory under $IMAGEFS_CACHE.
#
# One per checkout: cargo treats a workspace crate as up to date when its
# sources, as recorded relative to the crate, are older than the build, so
# two clones sharing a target directory would link each other's builds of
# the project's own crates. Dependencies are rebuilt once per checkout.
#
# Use: export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(bash scripts/target-dir.sh)}"
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${IMAGEFS_CACHE:-/var/cache/imagefs}"
echo "$cache/targets/$(pwd -P | sha256sum | cut -c1-16)"
