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
# Not from cargo's cache of rustc's answers (target/.rustc_info.json): on a fresh clone
# the cache after the clippy run above held a failed probe of the test build's target
# (rustc fed something other than its empty probe input; not reproduced by hand), and
# cargo test then failed before building anything. Asking rustc again costs 50 ms.
CARGO_CACHE_RUSTC_INFO=0 cargo test --workspace --locked
