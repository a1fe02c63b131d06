#!/usr/bin/env bash
# The project's test command: formatting, lints, then the whole test suite (unit tests,
# CLI integration tests on the local store). CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked
