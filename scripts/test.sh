#!/usr/bin/env bash
# The full test suite: installs what it needs, then format, lint, build and every test
# (unit, golden, and the network-namespace tests on the real kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CI="${CI:-false}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
left=$(ip netns list | wc -l)
if [ "$left" -gt 0 ]; then
    echo "tests left $left network namespaces behind:" >&2
    ip netns list >&2
    exit 1
fi
