#!/usr/bin/env bash
# The .deb in a clean Debian: builds it (packaging/deb/build.sh), unpacks
# the cached bookworm rootfs (packaging/rootfs.sh: minbase, tarantool)
# under target/, installs the package with `chroot dpkg -i`, checks what
# it put where and with which permissions, then, in a network namespace of
# its own, starts a store instance from the installed instance files with
# the installed native module and the node as user shoal from the
# installed example config, sends it a save record, and finds it in the
# store. Then `dpkg -r` (the conffile stays) and `dpkg --purge` (config,
# state, user and groups go), with no systemd running: the maintainer
# scripts' systemctl calls are skipped there. Needs root; without it
# prints SKIPPED (a failure under SHOAL_REQUIRE_ALL=1, as in .ci/run).
# Removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/../.."
TEST=packaging/deb/test.sh
. packaging/lib.sh
((EUID == 0)) || skip "needs root (chroot, network namespace)"
need_tools debootstrap:debootstrap

start=$SECONDS
bash packaging/deb/cargo-deb.sh || skip "cargo-deb could not be installed from the registry (see above)"
deb=$(bash packaging/deb/build.sh)
[[ -f $deb ]] || fail "no .deb built"
tarball=$(bash packaging/rootfs.sh) || skip "no Debian rootfs (debootstrap from the apt mirror failed: see above)"
echo "built $deb and the rootfs in $((SECONDS - start)) s" >&2

R=$(pwd)/target/deb-test.$$
NS=shoaldeb$$
cleanup() {
  set +e
  [[ -n ${NS:-} ]] && ip netns pids "$NS" 2>/dev/null | xargs -r kill -9
  ip netns del "$NS" 2>/dev/null
  for m in "$R/proc" "$R/dev"; do umount -l "$m" 2>/dev/null; done
  rm -rf "$R"
}
trap cleanup EXIT
mkdir -p "$R"
tar -C "$R" -xf "$tarball"
chmod 0755 "$R" # / of the rootfs, whatever the tarball says
cp "$deb" "$R/tmp/shoal.deb"
chroot "$R" dpkg -i /tmp/shoal.deb >"$R.dpkg.log" 2>&1 || { cat "$R.dpkg.log" >&2; fail "dpkg -i"; }
rm -f "$R.dpkg.log"

# What it installed, and with which permissions.
perm() { chroot "$R" stat -c '%a %U:%G' "$1"; }
[[ $(perm /etc/shoal) == "750 root:shoal" ]] || fail "/etc/shoal is $(perm /etc/shoal)"
[[ $(perm /etc/shoal/shoal.toml) == "640 root:shoal" ]] || fail "shoal.toml is $(perm /etc/shoal/shoal.toml)"
[[ $(perm /etc/shoal/tarantool) == "700 root:root" ]] || fail "/etc/shoal/tarantool is $(perm /etc/shoal/tarantool)"
[[ $(perm /var/lib/shoal) == "750 shoal:shoal" ]] || fail "/var/lib/shoal is $(perm /var/lib/shoal)"
for f in /usr/bin/shoal /usr/lib/x86_64-linux-gnu/tarantool/shoal_expirer.so \
  /lib/systemd/system/shoal.service /lib/systemd/system/shoal-tarantool@.service \
  /usr/lib/sysctl.d/60-shoal.conf /usr/share/shoal/tarantool/instance.lua \
  /usr/share/shoal/tarantool/lua/shoal_store.lua /usr/share/doc/shoal/operations.md; do
  [[ -e $R$f ]] || fail "$f not installed"
done
chroot "$R" dpkg-query -W -f='${Conffiles}\n' shoal | grep -q /etc/shoal/shoal.toml || fail "shoal.toml is not a conffile"
# What systemd does for shoal.service (RuntimeDirectory=shoal, User=shoal)
# before its ExecStartPre runs `shoal check`.
install -d -m 0750 "$R/run/shoal"
chroot "$R" chown shoal:shoal /run/shoal
chroot "$R" setpriv --reuid=shoal --regid=shoal --init-groups shoal check -c /etc/shoal/shoal.toml >/dev/null \
  || fail "shoal check on the example config"

# Run it: a store instance and the node, in a namespace of their own.
ip netns add "$NS"
ip -n "$NS" link set lo up
mount -t proc proc "$R/proc"
mount --bind /dev "$R/dev"
in_ns() { nsenter --net="/run/netns/$NS" chroot "$R" "$@"; }
mkdir -p "$R/var/lib/tt"
cat >"$R/etc/shoal/tarantool/store.env" <<ENV
SHOAL_TT_LISTEN=127.0.0.1:3301
SHOAL_TT_PASSWORD=deb-test-store-pw
SHOAL_TT_REPL_PASSWORD=deb-test-repl-pw
SHOAL_TT_EXPIRER=shoal_expirer
SHOAL_TT_MEMTX_MB=64
SHOAL_TT_BACKGROUND=0
ENV
in_ns sh -c 'cd /var/lib/tt && set -a && . /etc/shoal/tarantool/store.env && exec tarantool /usr/share/shoal/tarantool/instance.lua' \
  >"$R/tmp/tt.log" 2>&1 &
for _ in $(seq 1 500); do [[ -f $R/var/lib/tt/ready ]] && break; sleep 0.02; done
[[ -f $R/var/lib/tt/ready ]] || { tail -20 "$R/tmp/tt.log" >&2; fail "store instance from the package not ready"; }

# The example config plus the store, as an operator would edit it.
printf 'deb-test-store-pw' >"$R/etc/shoal/tarantool.password"
chroot "$R" chown root:shoal /etc/shoal/tarantool.password
chmod 0640 "$R/etc/shoal/tarantool.password"
sed -i 's/^# \[store\]/[store]/; s/^# masters = .*/masters = ["127.0.0.1:3301"]/;
  s|^# password_file = .*|password_file = "/etc/shoal/tarantool.password"|;
  s/^# save_function = .*/save_function = "shoal_expirer.shoal_save"/' "$R/etc/shoal/shoal.toml"
in_ns setpriv --reuid=shoal --regid=shoal --init-groups --inh-caps=-all \
  env SHOAL_LOG=info shoal run -c /etc/shoal/shoal.toml >"$R/tmp/shoal.log" 2>&1 &
for _ in $(seq 1 500); do grep -qs "shoal node serving" "$R/tmp/shoal.log" && break; sleep 0.02; done
grep -q "shoal node serving" "$R/tmp/shoal.log" || { cat "$R/tmp/shoal.log" >&2; fail "node did not start"; }
[[ $(perm /run/shoal/shoal.sock) == "660 shoal:shoal-client" ]] || fail "socket is $(perm /run/shoal/shoal.sock)"

# A save record goes through the node into the store from the package.
in_ns shoal send -c /etc/shoal/shoal.toml --op send-save mark 4242 legitimate >/dev/null
in_ns shoal query -c /etc/shoal/shoal.toml session 4242 | grep -q "mark=1 " || fail "the node does not know the mark it was sent"
saved=0
for _ in $(seq 1 250); do
  n=$(in_ns shoal status -c /etc/shoal/shoal.toml --metrics | awk '$1 == "shoal_store_saved_total" { print $2 }')
  [[ ${n:-0} != 0 ]] && { saved=$n; break; }
  sleep 0.02
done
[[ $saved != 0 ]] || { in_ns shoal status -c /etc/shoal/shoal.toml --metrics | grep store >&2; fail "nothing saved to the store"; }
echo "deb test: installed, node up as shoal, $saved record(s) saved through the native module, $((SECONDS - start)) s" >&2

# Remove, then purge, in the chroot (no systemd: prerm/postrm skip systemctl).
ip netns pids "$NS" | xargs -r kill
for _ in $(seq 1 100); do [[ -z $(ip netns pids "$NS") ]] && break; sleep 0.05; done
umount -l "$R/proc"
chroot "$R" dpkg -r shoal >"$R/tmp/dpkg.log" 2>&1 || { cat "$R/tmp/dpkg.log" >&2; fail "dpkg -r"; }
[[ ! -e $R/usr/bin/shoal ]] || fail "dpkg -r left /usr/bin/shoal"
grep -q 'masters = \["127.0.0.1:3301"\]' "$R/etc/shoal/shoal.toml" || fail "dpkg -r did not keep the edited conffile"
[[ $(chroot "$R" dpkg-query -W -f='${db:Status-Abbrev}' shoal) == "rc " ]] || fail "not in state rc after dpkg -r"
chroot "$R" getent passwd shoal >/dev/null || fail "dpkg -r removed the user"
chroot "$R" dpkg --purge shoal >"$R/tmp/dpkg.log" 2>&1 || { cat "$R/tmp/dpkg.log" >&2; fail "dpkg --purge"; }
for f in /etc/shoal /var/lib/shoal; do [[ ! -e $R$f ]] || fail "purge left $f"; done
for db in passwd group; do
  ! chroot "$R" getent "$db" shoal >/dev/null || fail "purge left the $db entry shoal"
done
! chroot "$R" getent group shoal-client >/dev/null || fail "purge left the group shoal-client"
echo "deb test: dpkg -r kept the edited conffile, purge removed config, state, user and groups ($((SECONDS - start)) s)" >&2
