#!/usr/bin/env bash
# Starts and stops a local pair of Shoal state-store masters (asynchronous
# master-master) in a directory of their own.
#
#   pair.sh start DIR [PORT_A PORT_B]   start both (a first, then b joins)
#   pair.sh start DIR a|b               start one again (after stop/kill)
#   pair.sh stop DIR [a|b]              stop both, or one (SIGTERM)
#   pair.sh kill DIR a|b                kill -9 one
#   pair.sh env DIR                     print the pair's settings
#
# Each master's admin console listens on DIR/a/console.sock and
# DIR/b/console.sock (Lua in, YAML out; testkit::Pair::console).
# DIR/env holds the ports and the generated passwords (SHOAL_TT_A,
# SHOAL_TT_B, SHOAL_TT_PASSWORD, SHOAL_TT_REPL_PASSWORD); tests and the
# demo source it. SHOAL_TT_EXPIRER, SHOAL_TT_EXPIRER_BATCH,
# SHOAL_TT_EXPIRER_IDLE_MS, SHOAL_TT_MEMTX_MB and LUA_CPATH are passed
# through to the instances (e.g. SHOAL_TT_EXPIRER=shoal_expirer LUA_CPATH='target/release/lib?.so;;').
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:?usage: pair.sh start|stop|kill|env DIR ...}
DIR=${2:?usage: pair.sh $cmd DIR ...}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

if [ ! -f "$DIR/env" ]; then
  pa=${3:-$(free_port)}
  pb=${4:-$(free_port)}
  while [ "$pb" = "$pa" ]; do pb=$(free_port); done
  secret() { od -An -N12 -tx1 /dev/urandom | tr -d ' \n'; }
  cat > "$DIR/env" <<EOT
SHOAL_TT_A=127.0.0.1:$pa
SHOAL_TT_B=127.0.0.1:$pb
SHOAL_TT_PASSWORD=$(secret)
SHOAL_TT_REPL_PASSWORD=$(secret)
EOT
fi
# shellcheck disable=SC1091
. "$DIR/env"

addr_of() { if [ "$1" = a ]; then echo "$SHOAL_TT_A"; else echo "$SHOAL_TT_B"; fi; }

pid_of() {
  local f="$DIR/$1/tarantool.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

start_one() {
  local name=$1 d="$DIR/$1"
  if pid_of "$name" >/dev/null; then
    echo "master $name already running (pid $(pid_of "$name"))" >&2
    return 0
  fi
  mkdir -p "$d"
  rm -f "$d/ready"
  (cd "$d" && SHOAL_TT_LISTEN=$(addr_of "$name") \
    SHOAL_TT_PEERS="$SHOAL_TT_A,$SHOAL_TT_B" \
    SHOAL_TT_PASSWORD=$SHOAL_TT_PASSWORD \
    SHOAL_TT_REPL_PASSWORD=$SHOAL_TT_REPL_PASSWORD \
    SHOAL_TT_CONSOLE="$d/console.sock" \
    tarantool "$HERE/instance.lua")
  for _ in $(seq 1 300); do
    [ -f "$d/ready" ] && return 0
    sleep 0.02
  done
  echo "master $name did not become ready; last lines of $d/tarantool.log:" >&2
  tail -n 20 "$d/tarantool.log" >&2 || true
  return 1
}

stop_one() {
  local name=$1 sig=${2:-TERM} pid
  pid=$(pid_of "$name") || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 250); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$DIR/$name/tarantool.pid"; return 0; }
    sleep 0.02
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$DIR/$name/tarantool.pid"
}

command -v tarantool >/dev/null || bash "$HERE/scripts/install.sh"

case "$cmd" in
  start)
    if [ -n "${3:-}" ] && [ -z "${4:-}" ]; then
      start_one "$3"
    else
      start_one a
      start_one b
    fi
    ;;
  stop)
    if [ -n "${3:-}" ]; then stop_one "$3"; else stop_one b & stop_one a; wait; fi
    ;;
  kill) stop_one "${3:?kill needs a or b}" KILL ;;
  env) cat "$DIR/env" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
