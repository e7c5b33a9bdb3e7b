#!/usr/bin/env bash
# Builds the demo's two images offline, with whatever docker daemon
# DOCKER_HOST names:
#   shoal-node       FROM scratch + the static binary
#   shoal-tarantool  Debian bookworm + Debian's Tarantool 2.6 + the
#                    instance files + the native module (+ shoal, for
#                    the demo's traffic container)
# The Debian rootfs comes from packaging/rootfs.sh (debootstrap from the
# machine's apt source, cached in /var/cache/shoal-rootfs) and is
# imported once as shoal-bookworm-tarantool. Needs root for the rootfs.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=x86_64-unknown-linux-gnu
DOCKER=${DOCKER:-docker}

bash packaging/build-static.sh
cargo build --release --locked --quiet --target "$TRIPLE" -p shoal-expirer
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

if ! $DOCKER image inspect shoal-bookworm-tarantool >/dev/null 2>&1; then
  tarball=$(bash packaging/rootfs.sh tarantool)
  $DOCKER import "$tarball" shoal-bookworm-tarantool >/dev/null
fi

cp "target/$TRIPLE/release/shoal" "$ctx/shoal"
cp docker/Dockerfile.node "$ctx/Dockerfile"
$DOCKER build -q -t shoal-node "$ctx" >/dev/null

rm -f "$ctx/Dockerfile"
cp tarantool/instance.lua "$ctx/"
cp -r tarantool/lua "$ctx/lua"
cp "target/$TRIPLE/release/libshoal_expirer.so" "$ctx/shoal_expirer.so"
cp docker/Dockerfile.tarantool "$ctx/Dockerfile"
$DOCKER build -q -t shoal-tarantool "$ctx" >/dev/null
echo "built shoal-node and shoal-tarantool" >&2
