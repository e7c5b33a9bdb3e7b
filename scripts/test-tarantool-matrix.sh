#!/usr/bin/env bash
# The store, verdict and expirer tests against each Tarantool version, then a
# matrix of the results (docs/store.md, "Tarantool versions").
#
#   scripts/test-tarantool-matrix.sh [--prefix DIR] [--require-all] [VERSION...]
#
# VERSION is `system` (the `tarantool` on PATH, Debian's 2.6) or a version
# built by scripts/build-tarantool.sh into PREFIX/VERSION (default prefix
# /work/tt); default: system 2.11.5 3.3.0. A version that is not built is
# reported with a `SKIPPED: tarantool X not built (...)` line, never as a
# pass; with --require-all a skipped version fails the run.
# Suites (each run with SHOAL_TARANTOOL set to that version's binary):
#   tarantool  cargo test -p shoal-tarantool (client, verdict store, unit)
#   expirer    cargo test -p shoal-expirer (expiry, native save, ABI vs module.h)
#   node       cargo test -p shoal-node --test store --test verdicts
#   rs         cargo test -p shoal-tarantool --features tarantool-rs --test rs_client
#              (the tarantool-rs crate; on 2.6 it asserts the crate is refused)
# Logs: target/tarantool-matrix/<version>-<suite>.log. Exit status 1 if any
# test failed (or a version was skipped under --require-all).
set -uo pipefail
cd "$(dirname "$0")/.."
PREFIX=/work/tt
REQUIRE_ALL=0
VERSIONS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --require-all) REQUIRE_ALL=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) VERSIONS+=("$1"); shift ;;
  esac
done
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(system 2.11.5 3.3.0)
LOGS=target/tarantool-matrix
mkdir -p "$LOGS"

SUITES=(tarantool expirer node rs)
suite_cmd() {
  case "$1" in
    tarantool) echo "cargo test -p shoal-tarantool" ;;
    expirer) echo "cargo test -p shoal-expirer" ;;
    node) echo "cargo test -p shoal-node --test store --test verdicts" ;;
    rs) echo "cargo test -p shoal-tarantool --features tarantool-rs --test rs_client" ;;
  esac
}

# Build every test binary once, outside the per-version loop.
for s in "${SUITES[@]}"; do
  # shellcheck disable=SC2046
  $(suite_cmd "$s") --no-run -q 2>"$LOGS/build-$s.log" || {
    echo "building the $s tests failed:"; tail -20 "$LOGS/build-$s.log"; exit 1; }
done

rows=()
failed=0
skipped=0
for v in "${VERSIONS[@]}"; do
  if [ "$v" = system ]; then
    bin=$(command -v tarantool || true)
    if [ -z "$bin" ]; then
      echo "SKIPPED: tarantool system not installed (tarantool/scripts/install.sh installs Debian's 2.6)"
      skipped=$((skipped + 1)); rows+=("system|-|-|-|-|-|SKIPPED"); continue
    fi
  else
    bin=$PREFIX/$v/bin/tarantool
    if [ ! -x "$bin" ]; then
      echo "SKIPPED: tarantool $v not built ($bin missing; scripts/build-tarantool.sh --mirrors DIR --prefix $PREFIX $v)"
      skipped=$((skipped + 1)); rows+=("$v|-|-|-|-|-|SKIPPED"); continue
    fi
  fi
  ver=$("$bin" --version | head -1 | awk '{print $2}')
  if [ "$v" != system ] && [ "${ver%%-*}" != "$v" ]; then
    echo "$bin reports $ver, not $v" >&2; failed=1
    rows+=("$v|-|-|-|-|-|WRONG BINARY"); continue
  fi
  echo "== $v: $bin ($ver)"
  for s in "${SUITES[@]}"; do
    log=$LOGS/$v-$s.log
    start=$(date +%s)
    # shellcheck disable=SC2046
    SHOAL_TARANTOOL=$bin $(suite_cmd "$s") --no-fail-fast -- --nocapture >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    read -r p f i < <(awk '/^test result:/ {
        for (k = 1; k <= NF; k++) {
          if ($(k+1) ~ /^passed/) p += $k; if ($(k+1) ~ /^failed/) f += $k; if ($(k+1) ~ /^ignored/) i += $k
        } } END { print p+0, f+0, i+0 }' "$log")
    sk=$(grep -c '^SKIPPED' "$log" || true)
    res=PASS
    if [ "$rc" != 0 ] || [ "$f" != 0 ] || [ "$p" = 0 ]; then res=FAIL; failed=1; fi
    rows+=("$ver|$s|$p|$f|$i|$sk|$res (${secs}s)")
    echo "   $s: $p passed, $f failed, $i ignored, $sk SKIPPED lines, $res in ${secs}s ($log)"
    if [ "$sk" != 0 ]; then grep '^SKIPPED' "$log" | sort | uniq -c | sed 's/^/      /'; fi
    if [ "$res" = FAIL ]; then grep -E '^(test .* FAILED|---- |failures:)' "$log" | head -20 | sed 's/^/      /'; fi
  done
done

echo
echo "Tarantool compatibility matrix ($(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null))"
printf '%-22s %-10s %7s %7s %8s %8s  %s\n' version suite passed failed ignored skipped result
for r in "${rows[@]}"; do
  IFS='|' read -r a b c d e f g <<<"$r"
  printf '%-22s %-10s %7s %7s %8s %8s  %s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g"
done
if [ "$failed" != 0 ]; then exit 1; fi
if [ "$REQUIRE_ALL" = 1 ] && [ "$skipped" != 0 ]; then echo "versions skipped under --require-all" >&2; exit 1; fi
exit 0
