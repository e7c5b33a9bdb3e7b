#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests
# need (gcc for the C client, iproute2 and python3 for the namespace tests,
# Tarantool 2.6 for the stores, debootstrap and docker for the packaging
# tests), then runs every test of the workspace, each benchmark once as a
# smoke test, and the packaging tests (packaging/deb/test.sh,
# packaging/systemd/test.sh, docker/test.sh) on the release build.
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
# live node, the status page in headless Chromium, the .deb in a
# debootstrapped rootfs (chroot, and under systemd in a container), the
# compose demo on a private dockerd.
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
# Installed in the background while the tests build (below): they are
# first needed after the benchmarks.
need_bg=()
command -v debootstrap >/dev/null || need_bg+=(debootstrap)
command -v dockerd >/dev/null || need_bg+=(docker.io)
command -v docker-compose >/dev/null || need_bg+=(docker-compose)
command -v curl >/dev/null || need_bg+=(curl)
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
bg_pids=()
report_skips() {
  local rc=$? pid
  # A background preparation still running when a test failed.
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -z ${bg_log:-} ]] || rm -rf "$bg_log"
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
# Meanwhile, in the background, what the packaging tests need besides
# the release build: docker and debootstrap (apt-get, after the update
# above), the Debian rootfs (debootstrap waits on the mirror;
# packaging/rootfs.sh caches it) and the pinned cargo-deb (cargo install,
# ~100 s of CPU once per machine). Their logs are printed if they fail;
# the tests then try again in the foreground and skip (a failure under
# SHOAL_REQUIRE_ALL=1) if that fails too. SHOAL_PACKAGING=0 leaves the
# packaging tests out (a quick local run; a failure under
# SHOAL_REQUIRE_ALL=1).
bg_log=$(mktemp -d)
if [[ ${SHOAL_PACKAGING:-1} != 0 ]] && ((EUID == 0)); then
  {
    if ((${#need_bg[@]})) && command -v apt-get >/dev/null; then
      { apt-get update -qq -o DPkg::Lock::Timeout=600 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
          "${need_bg[@]}" >/dev/null; } || echo "apt-get install ${need_bg[*]} failed" >&2
    fi
    bash packaging/rootfs.sh >/dev/null
  } 2>"$bg_log/rootfs" &
  bg_pids+=($!)
  bash packaging/deb/cargo-deb.sh 2>"$bg_log/cargo-deb" &
  bg_pids+=($!)
fi
cargo test --workspace --locked
# Every benchmark built and run once, so they cannot rot; the packages
# and images reuse its release build (only the binary and the module are
# left to build).
cargo bench --workspace --locked -- --test
if [[ ${SHOAL_PACKAGING:-1} != 0 ]]; then
  for pid in "${bg_pids[@]}"; do wait "$pid" || cat "$bg_log"/* >&2; done
  rm -rf "$bg_log"
  # The .deb in a chroot (no systemd), then under systemd as PID 1
  # (start, restart, upgrade, remove, purge), then the compose demo.
  t=$SECONDS
  bash packaging/deb/test.sh
  bash packaging/systemd/test.sh
  bash docker/test.sh
  echo "packaging tests: $((SECONDS - t)) s" >&2
else
  rm -rf "$bg_log"
  msg="SKIPPED: packaging/deb/test.sh, packaging/systemd/test.sh, docker/test.sh: SHOAL_PACKAGING=0"
  echo "$msg" >&2
  echo "$msg" >>"$SHOAL_SKIP_LOG"
fi
