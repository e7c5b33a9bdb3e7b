#!/usr/bin/env bash
# Builds (once) and caches the Debian bookworm root filesystems the
# packaging tests and the docker images start from, from the machine's
# own apt source (no container registry needed):
#
#   packaging/rootfs.sh base       -> $CACHE/bookworm-minbase.tar
#   packaging/rootfs.sh tarantool  -> $CACHE/bookworm-tarantool.tar
#                                     (minbase + Debian's tarantool 2.6)
#
# Prints the tarball's path. CACHE is $SHOAL_ROOTFS_CACHE, default
# /var/cache/shoal-rootfs (outside the repository; root only). A tarball
# is rebuilt only when missing; delete it to refresh.
set -euo pipefail
kind=${1:?usage: rootfs.sh base|tarantool}
CACHE=${SHOAL_ROOTFS_CACHE:-/var/cache/shoal-rootfs}
((EUID == 0)) || { echo "rootfs.sh needs root (debootstrap, chroot)" >&2; exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# The first deb URI the machine's apt uses for Debian itself.
mirror() {
  local m
  m=$( (grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
        grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}') \
      | grep -v security | head -1)
  echo "${m:-http://deb.debian.org/debian}"
}

base() {
  local out=$CACHE/bookworm-minbase.tar
  if [[ ! -s $out ]]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    local dir
    dir=$(mktemp -d "$CACHE/build.XXXXXX")
    chmod 0755 "$dir" # the rootfs's / (mktemp made it 0700)
    echo "debootstrap bookworm from $(mirror) (once, ~30 s)" >&2
    debootstrap --variant=minbase bookworm "$dir" "$(mirror)" >"$dir.log" 2>&1 \
      || { tail -20 "$dir.log" >&2; rm -rf "$dir" "$dir.log"; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    rm -rf "$dir" "$dir.log"
  fi
  echo "$out"
}

tarantool() {
  local out=$CACHE/bookworm-tarantool.tar
  if [[ ! -s $out ]]; then
    local b dir
    b=$(base)
    dir=$(mktemp -d "$CACHE/build.XXXXXX")
    tar -C "$dir" -xf "$b"
    chmod 0755 "$dir"
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    echo "deb $(mirror) bookworm main" >"$dir/etc/apt/sources.list"
    # No daemon may start inside the chroot (tarantool's postinst tries).
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod +x "$dir/usr/sbin/policy-rc.d"
    echo "apt-get install tarantool into the rootfs (once)" >&2
    chroot "$dir" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tarantool' \
      >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; rm -rf "$dir" "$dir.log"; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir/usr/sbin/policy-rc.d"
    : >"$dir/etc/resolv.conf"
    tar -C "$dir" -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    rm -rf "$dir" "$dir.log"
  fi
  echo "$out"
}

case "$kind" in
  base) base ;;
  tarantool) tarantool ;;
  *) echo "usage: rootfs.sh base|tarantool" >&2; exit 2 ;;
esac
