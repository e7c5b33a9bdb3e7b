#!/usr/bin/env bash
# Builds the demo's two images offline, with whatever docker daemon
# DOCKER_HOST names:
#   shoal-node       FROM scratch: the release `shoal` (stripped) and the
#                    shared libraries it links (glibc, libgcc_s, the
#                    loader), copied from this machine by their paths
#   shoal-tarantool  Debian bookworm + Debian's Tarantool 2.6 + the
#                    instance files + the native module (+ shoal, for
#                    the demo's traffic container)
# The binaries are the release build the test suite already made
# (`cargo build --release`: a no-op then). The Debian rootfs comes from
# packaging/rootfs.sh (debootstrap from the machine's apt source, cached
# in /var/cache/shoal-rootfs) and is imported once as shoal-bookworm. The
# host must be bookworm (or older glibc) for the Tarantool image to run
# the host's `shoal`. Needs root for the rootfs.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
# The binary links the build machine's glibc: it must not be newer than
# bookworm's (2.36), the package's Depends and the images' Debian.
glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
[[ $(printf '%s\n' "$glibc" 2.36 | sort -V | tail -1) == 2.36 ]] \
  || { echo "glibc $glibc is newer than bookworm's 2.36: build on Debian bookworm" >&2; exit 1; }

# Two builds: `--bin` would filter out the module (a library) too.
cargo build --release --locked --quiet -p shoal-node --bin shoal
cargo build --release --locked --quiet -p shoal-expirer
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

if ! $DOCKER image inspect shoal-bookworm >/dev/null 2>&1; then
  tarball=$(bash packaging/rootfs.sh)
  $DOCKER import "$tarball" shoal-bookworm >/dev/null
fi

strip -o "$ctx/shoal" target/release/shoal
# The scratch image's file system: the binary and what `ldd` says it
# loads, at the same paths.
mkdir -p "$ctx/root/usr/bin"
cp "$ctx/shoal" "$ctx/root/usr/bin/shoal"
for lib in $(ldd target/release/shoal | grep -o '/[^ ]*'); do
  mkdir -p "$ctx/root$(dirname "$lib")"
  cp -L "$lib" "$ctx/root$lib"
done
cp docker/Dockerfile.node "$ctx/Dockerfile"
$DOCKER build -q -t shoal-node "$ctx" >/dev/null

rm -rf "$ctx/Dockerfile" "$ctx/root"
cp tarantool/instance.lua "$ctx/"
cp -r tarantool/lua "$ctx/lua"
cp target/release/libshoal_expirer.so "$ctx/shoal_expirer.so"
cp docker/Dockerfile.tarantool "$ctx/Dockerfile"
$DOCKER build -q -t shoal-tarantool "$ctx" >/dev/null
echo "built shoal-node and shoal-tarantool" >&2
