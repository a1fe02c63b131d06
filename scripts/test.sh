#!/usr/bin/env bash
# The project's test command: formatting, lints, then the whole test suite (unit tests,
# CLI and volume tests on the local store, real FUSE mounts (as root, with /dev/fuse
# and fusermount3), Discord store tests against the fake Discord server in
# tests/fake-discord, and that server's own tests). CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
# The tests are built before the clippy run: on a fresh clone, the first cargo command
# of the test profile *after* a clippy run has been seen to fail before building
# anything, in cargo's probe of rustc (`rustc -` parsing stray compiler output as its
# input; the cause is not known). Built first, the test profile's probe runs on a
# clean target, and its answers are in cargo's cache (target/.rustc_info.json) when
# the tests run after clippy, so no probe runs then. A failed build is tried once more
# without that cache, in case it holds a failed probe; a real build error fails both.
# A build script run as root can replace /dev/null with a regular file (a rustc probe
# given `-o /dev/null` writes a temporary file and renames it over the output); later
# output sent to /dev/null then lands in it, and cargo's own probe of rustc, which
# reads /dev/null as its input, fails on that text. This puts the device back.
fix_dev_null() {
    if [ ! -c /dev/null ] && [ "$(id -u)" = 0 ]; then
        echo "== /dev/null had become a regular file (a build script's doing); making it a device again"
        rm -f /dev/null && mknod -m 666 /dev/null c 1 3
    fi
}
fix_dev_null
echo "== cargo test --no-run"
cargo test --workspace --locked --no-run || {
    echo "== cargo test: the test build failed; trying it once more"
    fix_dev_null
    CARGO_CACHE_RUSTC_INFO=0 cargo test --workspace --locked --no-run
}
fix_dev_null
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
fix_dev_null
echo "== cargo test"
cargo test --workspace --locked
