#!/usr/bin/env bash
# The project's test command: formatting, lints, then the whole test suite (unit tests,
# CLI and volume tests on the local store, real FUSE mounts (as root, with /dev/fuse
# and fusermount3), Discord store tests against the fake Discord server in
# tests/fake-discord, and that server's own tests). CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# The tests are built first, and the build is tried a second time if it fails: on a
# fresh clone, the first cargo command of the test profile after the clippy run above
# has been seen to fail before building anything, in cargo's probe of rustc (`rustc -`
# compiling stray compiler output as its input), and the same command run again passed.
# A real build error fails both tries.
cargo test --workspace --locked --no-run || {
    echo "== cargo test: the test build failed; trying it once more"
    CARGO_CACHE_RUSTC_INFO=0 cargo test --workspace --locked --no-run
}
# (Without cargo's cache of rustc's answers, which may hold the failed probe.)
CARGO_CACHE_RUSTC_INFO=0 cargo test --workspace --locked
