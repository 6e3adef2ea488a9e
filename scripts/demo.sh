#!/usr/bin/env bash
# Builds multiwan and runs `multiwan demo`: a sandbox of network namespaces with three
# uplinks, narrated. Needs root; cleans up after itself, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -p multiwan
exec ./target/release/multiwan demo "$@"
