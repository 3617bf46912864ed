#!/usr/bin/env bash
# Run one cargo-fuzz target for a while, with the issue's limits (RSS 2 GB,
# 10 s per input), then print libFuzzer's final statistics.
#
# Usage: scripts/fuzz.sh TARGET SECONDS      (scripts/fuzz.sh --list: the targets)
#
# Seeds are committed in fuzz/seeds/TARGET; what the fuzzer learns goes to a
# corpus outside the clone ($IMAGEFS_CACHE/fuzz/corpus/TARGET: a cache, it
# only saves time). A crash stops the run with a non-zero status and leaves
# its input in fuzz/artifacts/TARGET/: turn it into a regression test in the
# crate that owns the code.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${IMAGEFS_CACHE:-/var/cache/imagefs}"
tools="$cache/tools"
export PATH="$tools/bin:$PATH"

# cargo-fuzz (crates.io) drives libFuzzer on the nightly toolchain.
if ! command -v cargo-fuzz >/dev/null; then
    mkdir -p "$tools"
    echo "fuzz.sh: installing cargo-fuzz into $tools" >&2
    cargo install cargo-fuzz --locked --root "$tools" >"$tools/cargo-fuzz-install.log" 2>&1 ||
        { tail -n 30 "$tools/cargo-fuzz-install.log" >&2; exit 1; }
fi
rustup run nightly rustc --version >/dev/null 2>&1 ||
    { echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }

fuzz_target_dir="$cache/target-fuzz"
if [ "${1:-}" = --list ]; then
    exec cargo +nightly fuzz list --fuzz-dir fuzz
fi
[ $# -eq 2 ] || { echo "usage: scripts/fuzz.sh TARGET SECONDS | --list" >&2; exit 2; }
target=$1 seconds=$2

corpus="$cache/fuzz/corpus/$target"
seeds="fuzz/seeds/$target"
artifacts="fuzz/artifacts/$target"
mkdir -p "$corpus" "$seeds" "$artifacts"

cargo +nightly fuzz build --fuzz-dir fuzz --target-dir "$fuzz_target_dir" "$target"
# -rss_limit_mb and -timeout are the issue's bounds: an input that takes
# more memory or time is a finding, like a crash.
cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$fuzz_target_dir" "$target" \
    "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$artifacts/" -print_final_stats=1
