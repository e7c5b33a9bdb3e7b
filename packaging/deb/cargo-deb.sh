#!/usr/bin/env bash
# Makes `cargo deb` the pinned cargo-deb: installs it with `cargo install
# --locked --version` (into $CARGO_HOME/bin, ~100 s of CPU, once per
# machine) when the one cargo finds is missing or another version.
# scripts/test.sh runs it in the background while the tests build.
set -euo pipefail
CARGO_DEB_VERSION=3.8.0
if [[ $(cargo deb --version 2>/dev/null) != "cargo-deb $CARGO_DEB_VERSION" ]]; then
  echo "installing cargo-deb $CARGO_DEB_VERSION (once, ~100 s of CPU)" >&2
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet --force >&2
fi
