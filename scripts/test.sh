#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests
# need (gcc for the C client, iproute2 and python3 for the namespace tests,
# Tarantool 2.6 for the stores), then runs every test of the workspace and each
# benchmark once as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v ip >/dev/null || need+=(iproute2)
# The store failover test blackholes a master's port with nft in a
# namespace of its own.
command -v nft >/dev/null || need+=(nftables)
# The two-cluster namespace test delays its link with a python3 relay when
# the kernel has no sch_netem.
command -v python3 >/dev/null || need+=(python3)
# The enforcement namespace test damages the kernel's sets by hand with nft.
command -v nft >/dev/null || need+=(nftables)
# Packaging (packaging/, docker/): unit checks, the alert rules against a
# live node, the .deb in a debootstrapped rootfs, the compose demo on a
# private dockerd, the status page in headless Chromium.
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
# The .deb and docker tests (debootstrap, release builds, a private
# dockerd) run only with SHOAL_PACKAGING=1 (the long run; .ci/run leaves them out): they take
# minutes from a cold cache and need the Debian mirror.
if [[ ${SHOAL_PACKAGING:-} == 1 ]]; then
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  command -v curl >/dev/null || need+=(curl)
fi
if ((${#need[@]})); then
  if ((EUID == 0)) && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, or run as root on Debian)" >&2
  fi
fi
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
bash tarantool/scripts/install.sh

if ((EUID != 0)); then
  if [[ ${SHOAL_REQUIRE_ALL:-} == 1 ]]; then
    echo "SHOAL_REQUIRE_ALL=1 but not root: the network-namespace tests will fail" >&2
  else
    echo "note: not root, the network-namespace tests will be SKIPPED" >&2
  fi
fi
# A test that cannot run here (node/tests/common/mod.rs) prints
# "SKIPPED: ..." and appends it to this file; the list is printed at the end,
# pass or fail. Under SHOAL_REQUIRE_ALL=1 (.ci/run) such a test fails instead.
SHOAL_SKIP_LOG=$(mktemp)
export SHOAL_SKIP_LOG
report_skips() {
  local rc=$?
  if [[ -s $SHOAL_SKIP_LOG ]]; then
    echo "== $(wc -l <"$SHOAL_SKIP_LOG") test(s) SKIPPED, not run:" >&2
    cat "$SHOAL_SKIP_LOG" >&2
    if [[ ${SHOAL_REQUIRE_ALL:-} == 1 ]] && ((rc == 0)); then
      echo "SHOAL_REQUIRE_ALL=1: a skipped test is a failure" >&2
      rc=1
    fi
  fi
  rm -f "$SHOAL_SKIP_LOG"
  exit "$rc"
}
trap report_skips EXIT
# The Debian rootfs the .deb and docker tests need is built meanwhile (it
# waits on the network, the tests on the CPU); rootfs.sh caches it.
rootfs_pid=
if [[ ${SHOAL_PACKAGING:-} == 1 ]] && ((EUID == 0)) && command -v debootstrap >/dev/null; then
  bash packaging/rootfs.sh tarantool >/dev/null 2>"${TMPDIR:-/tmp}/shoal-rootfs.log" &
  rootfs_pid=$!
fi
cargo test --workspace --locked
# The packages and images (root; otherwise SKIPPED like the tests above):
# the .deb installed into a clean Debian rootfs, then the two-cluster
# compose demo. The Debian rootfs is built once and cached
# (packaging/rootfs.sh, /var/cache/shoal-rootfs): a failure shows again there.
if [[ ${SHOAL_PACKAGING:-} == 1 ]]; then
  [[ -z $rootfs_pid ]] || wait "$rootfs_pid" || cat "${TMPDIR:-/tmp}/shoal-rootfs.log" >&2
  bash packaging/deb/test.sh
  bash docker/test.sh
else
  # Switched off on purpose, so not a failure under SHOAL_REQUIRE_ALL=1.
  echo "SKIPPED: packaging/deb/test.sh and docker/test.sh: SHOAL_PACKAGING is not 1" >&2
fi
# Every benchmark built and run once, so they cannot rot.
cargo bench --workspace --locked -- --test
