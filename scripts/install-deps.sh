#!/usr/bin/env bash
# Installs what building, testing and running multiwan needs on Debian, as root.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "run as root: multiwan's tests and demo build network namespaces" >&2
    exit 1
fi
# systemd: systemd-analyze for the packaging test; openssl: the TLS servers of the https
# probe test; ca-certificates: the system trust store https probes verify against;
# radvd, ndisc6 (rdisc6): router advertisements in the IPv6 lab.
pkgs=(nftables iproute2 conntrack iperf3 procps kmod iputils-ping python3 ca-certificates
      openssl systemd build-essential pkg-config radvd ndisc6)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
    # Debian's cargo may be older than the rust-version in Cargo.toml; rustup's is best.
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq cargo >/dev/null
fi
# The packaging test builds the .deb: cargo-deb, from crates.io (a no-op when present).
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --locked --quiet
fi
# nextest runs the `serial_` tests one at a time (.config/nextest.toml); plain
# `cargo test` would run them alongside the others and their timings would not hold.
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked --quiet
fi
