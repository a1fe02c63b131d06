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
echo "== cargo test --no-run"
cargo test --workspace --locked --no-run || {
    echo "== cargo test: the test build failed; trying it once more"
    CARGO_CACHE_RUSTC_INFO=0 cargo test --workspace --locked --no-run
}
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
