#!/usr/bin/env bash
# Builds the .deb from the release build the test suite already made
# (`cargo build --release` of the node binary and the native module: a
# no-op after scripts/test.sh's release builds), then `cargo deb
# --no-build --strip`. Prints the .deb's path.
#
#   packaging/deb/build.sh            -> target/debian/shoal_<version>_amd64.deb
#
# cargo-deb is pinned and installed when missing
# (packaging/deb/cargo-deb.sh). The binary is the usual dynamically
# linked one (glibc, libgcc_s): the package depends on bookworm's libc6.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The binary links the build machine's glibc: it must not be newer than
# bookworm's (2.36), the package's Depends and the images' Debian.
glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
[[ $(printf '%s\n' "$glibc" 2.36 | sort -V | tail -1) == 2.36 ]] \
  || { echo "glibc $glibc is newer than bookworm's 2.36: build on Debian bookworm" >&2; exit 1; }
bash packaging/deb/cargo-deb.sh
# Two builds: `--bin` would filter out the module (a library) too.
cargo build --release --locked --quiet -p shoal-node --bin shoal >&2
cargo build --release --locked --quiet -p shoal-expirer >&2
cargo deb -p shoal-node --no-build --strip --fast --quiet --output target/debian/ >/dev/null
ls -t target/debian/shoal_*_amd64.deb | head -1
