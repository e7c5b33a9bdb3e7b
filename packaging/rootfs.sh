#!/usr/bin/env bash
# Builds (once) and caches the one Debian bookworm root filesystem every
# packaging test and the Tarantool image start from, from the machine's
# own apt source (no container registry needed):
#
#   packaging/rootfs.sh   -> $CACHE/bookworm-shoal.tar
#
# debootstrap --variant=minbase, then Debian's tarantool 2.6 and systemd
# (no recommends) installed with chroot apt-get. The same tarball is the
# clean Debian of packaging/deb/test.sh (chroot), the systemd-as-PID-1
# container of packaging/systemd/test.sh and the base of the
# shoal-tarantool image (docker/build.sh). Prints the tarball's path.
# CACHE is $SHOAL_ROOTFS_CACHE, default /var/cache/shoal-rootfs (outside
# the repository; root only). Rebuilt only when missing; delete it to
# refresh. A failure prints the tail of the log and exits non-zero.
set -euo pipefail
CACHE=${SHOAL_ROOTFS_CACHE:-/var/cache/shoal-rootfs}
# What goes into the rootfs; a change here needs a new tarball name.
PACKAGES="tarantool systemd"
OUT=$CACHE/bookworm-shoal.tar
((EUID == 0)) || { echo "rootfs.sh needs root (debootstrap, chroot)" >&2; exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [[ -s $OUT ]]; then echo "$OUT"; exit 0; fi

# The first deb URI the machine's apt uses for Debian itself.
mirror() {
  local m
  m=$( (grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
        grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}') \
      | grep -v security | head -1)
  echo "${m:-http://deb.debian.org/debian}"
}

command -v debootstrap >/dev/null \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
dir=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$dir" "$dir.log" "$OUT.tmp"' EXIT
chmod 0755 "$dir" # the rootfs's / (mktemp made it 0700)
t0=$SECONDS
echo "debootstrap bookworm from $(mirror) (once)" >&2
debootstrap --variant=minbase bookworm "$dir" "$(mirror)" >"$dir.log" 2>&1 \
  || { tail -20 "$dir.log" >&2; exit 1; }
t1=$SECONDS
cp /etc/resolv.conf "$dir/etc/resolv.conf"
echo "deb $(mirror) bookworm main" >"$dir/etc/apt/sources.list"
# No daemon may start inside the chroot (tarantool's postinst tries).
printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
chmod +x "$dir/usr/sbin/policy-rc.d"
echo "apt-get install $PACKAGES into the rootfs (once)" >&2
chroot "$dir" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES" \
  >>"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; exit 1; }
# Debian's tarantool package enables its example instance: not ours.
rm -f "$dir"/etc/systemd/system/multi-user.target.wants/tarantool*.service
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir/usr/sbin/policy-rc.d"
: >"$dir/etc/resolv.conf"
tar -C "$dir" -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "rootfs: debootstrap $((t1 - t0)) s, packages $((SECONDS - t1)) s" >&2
echo "$OUT"
