#!/usr/bin/env bash
# Builds the .deb: the static node binary (the one the docker image uses
# too), the native Tarantool module, then `cargo deb --no-build`. Prints
# the .deb's path. Installs cargo-deb (cargo install, ~100 s) if missing.
#
#   packaging/deb/build.sh            -> target/debian/shoal_<version>_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/../.."
TRIPLE=x86_64-unknown-linux-gnu
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (once, ~100 s)" >&2
  cargo install cargo-deb --locked --quiet >&2
fi
bash packaging/build-static.sh >&2
# The module must be a shared object linked against the C library
# Tarantool uses: no crt-static here.
cargo build --release --locked --quiet --target "$TRIPLE" -p shoal-expirer >&2
cargo deb -p shoal-node --no-build --fast --target "$TRIPLE" --quiet \
  --output target/debian/ >&2
ls -t target/debian/shoal_*_amd64.deb | head -1
