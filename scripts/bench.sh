#!/usr/bin/env bash
# Benchmarks (explicit, not part of the test run): criterion benches of the
# codec, the 3-node load harness, then the store harness (persist rate
# against an in-instance Lua loop, replay of 1M live records; needs
# Tarantool, installed if missing), then the verdict API harness (verdicts/s
# accepted by one node, durable in its verdict store). Figures go to
# docs/benchmarks.md.
# Usage: scripts/bench.sh [SECONDS_PER_PHASE] [RUNS]   (default 5 s, 5 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
RUNS=${2:-5}
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "== git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)  date: $(date -u +%FT%TZ)"
cargo bench --locked -p shoal-benches --bench wire
cargo bench --locked -p shoal-benches --bench backlog
cargo build --locked --release -q -p shoal-node -p shoal-benches --bin shoal --bin shoal-load --bin shoal-store --bin shoal-verdicts
target/release/shoal-load --bin target/release/shoal --seconds "$SECS" --runs "$RUNS"
bash tarantool/scripts/install.sh
target/release/shoal-store --bin target/release/shoal --records 300000 --replay 1000000 --runs "$RUNS"
target/release/shoal-verdicts --bin target/release/shoal --conns 16 --seconds "$SECS" --runs "$RUNS"
