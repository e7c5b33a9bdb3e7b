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
# The two-cluster namespace test delays its link with a python3 relay when
# the kernel has no sch_netem.
command -v python3 >/dev/null || need+=(python3)
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
  echo "note: not root, the network-namespace test will be skipped" >&2
fi
cargo test --workspace --locked
# Every benchmark built and run once, so they cannot rot.
cargo bench --workspace --locked -- --test
