#!/usr/bin/env bash
# Fuzzes the wire decoder with cargo-fuzz (libFuzzer). Usage:
#   scripts/fuzz.sh [SECONDS] [TARGET]      (default: 60 datagram_roundtrip)
# Extra libFuzzer options can be passed in FUZZ_ARGS, e.g. FUZZ_ARGS=-jobs=2.
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or
# stable with RUSTC_BOOTSTRAP=1 (used automatically when nightly is absent).
# The corpus is seeded with the test vectors of docs/wire.md; crashes land
# in fuzz/artifacts/TARGET/ (both directories are git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-60}
TARGET=${2:-datagram_roundtrip}

command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
cargo fuzz --version >/dev/null 2>&1 || {
  echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
  exit 1
}

# libFuzzer needs -Zsanitizer flags: nightly, or stable pretending to be.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ=(cargo +nightly fuzz)
else
  echo "no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi

# Seed corpus: every ```hex vector=NAME block of the spec, as binary.
CORPUS=fuzz/corpus/$TARGET
mkdir -p "$CORPUS"
awk '
  /^```hex vector=/ { split($0, a, "vector="); name = a[2]; next }
  /^```/            { name = ""; next }
  name != ""        { print > ("'"$CORPUS"'/vector-" name ".hex") }
' docs/wire.md
for f in "$CORPUS"/vector-*.hex; do
  [ -e "$f" ] || continue
  printf '%b' "$(tr -d ' \n' < "$f" | sed 's/../\\x&/g')" > "${f%.hex}"
  rm -f "$f"
done

# shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
"${FUZZ[@]}" run --fuzz-dir fuzz "$TARGET" "$CORPUS" -- \
  -max_total_time="$SECONDS_TO_RUN" -print_final_stats=1 ${FUZZ_ARGS:-}
