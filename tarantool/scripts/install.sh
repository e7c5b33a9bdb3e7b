#!/usr/bin/env bash
# Installs Tarantool (Debian's 2.6) and its C module headers when missing.
# Idempotent: does nothing when `tarantool` and module.h are present.
set -euo pipefail
if command -v tarantool >/dev/null 2>&1 && [ -f /usr/include/tarantool/module.h ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "tarantool is missing and this is not root: run 'apt-get install -y tarantool tarantool-dev'" >&2
  exit 1
fi
echo "installing tarantool and tarantool-dev from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq tarantool tarantool-dev >/dev/null
# Debian's package starts an example instance on install; the project
# starts its own, in temp dirs, and wants none running on the default port.
systemctl disable --now tarantool@example >/dev/null 2>&1 || true
tarantool --version | head -1 >&2
