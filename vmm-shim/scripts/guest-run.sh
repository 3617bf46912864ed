# Sourced by the record-trace scripts: sets guest_run to the tests crate's
# guest-run binary, which owns the guest and its QEMU command line
# (tests::qemu::Microvm). GUEST_RUN names a built one; otherwise it is built
# here (release) from the repository this script lives in.
guest_run=${GUEST_RUN:-}
if [ -z "$guest_run" ]; then
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    (cd "$repo" && cargo build --release --locked --quiet -p tests --bin guest-run >&2)
    guest_run="${CARGO_TARGET_DIR:-$repo/target}/release/guest-run"
fi
