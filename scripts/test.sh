#!/usr/bin/env bash
# The full test suite: installs what it needs, then format, lint, build and every test
# (unit, golden, and the network-namespace tests on the real kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CI="${CI:-false}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Issue #8's house rules: file and function lengths, the modules' dependency order.
python3 scripts/house-rules.py
before=$(ip netns list | awk '{print $1}' | sort)
# nextest, not `cargo test`: it runs the `serial_` tests one at a time (install-deps.sh
# installs it).
cargo nextest run --workspace --locked --no-fail-fast
# Namespaces that were not there before the tests: a teardown is missing.
left=$(comm -13 <(echo "$before") <(ip netns list | awk '{print $1}' | sort))
if [ -n "$left" ]; then
    echo "tests left network namespaces behind:" >&2
    echo "$left" >&2
    exit 1
fi
