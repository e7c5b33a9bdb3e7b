#!/usr/bin/env bash
# Fuzzes the decoders of network and Tarantool input with cargo-fuzz
# (libFuzzer). Usage:
#   scripts/fuzz.sh [SECONDS] [TARGET|all]  (default: 60 datagram_roundtrip)
# Targets (fuzz/fuzz_targets/):
#   datagram_roundtrip  the cluster datagram decoder (shoal-wire)
#   token_verify        the session token verifier (shoal-core)
#   iproto_response     the IPROTO greeting and response framing/decoding
#   save_args           the native shoal_save's argument parser (expirer)
# `all` runs each for SECONDS in turn.
# Extra libFuzzer options can be passed in FUZZ_ARGS, e.g. FUZZ_ARGS=-jobs=2.
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or
# stable with RUSTC_BOOTSTRAP=1 (used automatically when nightly is absent).
# Corpora are seeded with the test vectors of docs/wire.md (datagram) and
# the files of fuzz/seeds/TARGET/; crashes land in fuzz/artifacts/TARGET/
# (corpus and artifacts are git-ignored). A crash is replayed with
#   cargo fuzz run --fuzz-dir fuzz TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-60}
TARGET=${2:-datagram_roundtrip}
TARGETS=(datagram_roundtrip token_verify iproto_response save_args)
if [ "$TARGET" = all ]; then
  for t in "${TARGETS[@]}"; do "$0" "$SECONDS_TO_RUN" "$t"; done
  exit 0
fi
case " ${TARGETS[*]} " in *" $TARGET "*) ;; *)
  echo "unknown target $TARGET (one of: ${TARGETS[*]} all)" >&2
  exit 1
esac

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

CORPUS=fuzz/corpus/$TARGET
mkdir -p "$CORPUS"
if [ -d "fuzz/seeds/$TARGET" ]; then
  cp fuzz/seeds/"$TARGET"/* "$CORPUS"/
fi
# Datagram seeds: every ```hex vector=NAME block of the spec, as binary.
if [ "$TARGET" = datagram_roundtrip ]; then
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
fi

# shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
"${FUZZ[@]}" run --fuzz-dir fuzz "$TARGET" "$CORPUS" -- \
  -max_total_time="$SECONDS_TO_RUN" -print_final_stats=1 ${FUZZ_ARGS:-}
