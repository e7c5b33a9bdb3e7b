#!/usr/bin/env bash
# The static `shoal` binary (glibc, crt-static) for the FROM-scratch image
# and the .deb: target/x86_64-unknown-linux-gnu/release/shoal. Its own
# target triple keeps these RUSTFLAGS from invalidating the usual builds.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked --quiet --target x86_64-unknown-linux-gnu -p shoal-node --bin shoal
