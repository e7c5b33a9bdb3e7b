#!/usr/bin/env bash
# Builds the .deb from the release build the test suite already made
# (`cargo build --release` of the node binary and the native module: a
# no-op after scripts/test.sh's release builds), then `cargo deb
# --no-build`. Prints the .deb's path.
#
#   packaging/deb/build.sh            -> target/debian/shoal_<version>_amd64.deb
#
# cargo-deb is pinned (CARGO_DEB_VERSION) and installed with `cargo
# install --locked` when the one on PATH is another version (~100 s of
# CPU, once per machine). The binary is the usual dynamically linked one
# (glibc, libgcc_s): the package depends on bookworm's libc6.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO_DEB_VERSION=3.8.0
if [[ $(cargo deb --version 2>/dev/null) != "cargo-deb $CARGO_DEB_VERSION" ]]; then
  echo "installing cargo-deb $CARGO_DEB_VERSION (once, ~100 s of CPU)" >&2
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet >&2
fi
cargo build --release --locked --quiet -p shoal-node --bin shoal -p shoal-expirer >&2
cargo deb -p shoal-node --no-build --strip --fast --quiet --output target/debian/ >/dev/null
ls -t target/debian/shoal_*_amd64.deb | head -1
