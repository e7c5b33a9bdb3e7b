#!/usr/bin/env bash
# Starts and stops a local pair of Shoal store masters (asynchronous
# master-master) in a directory of their own, each through instance.sh.
# SHOAL_TT_SCHEMA=verdict makes it a verdict-store pair: a is the instance
# of cluster 1, b that of cluster 2 (SHOAL_TT_CLUSTER_A, SHOAL_TT_CLUSTER_B
# override), replicating each other as the clusters' instances do.
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
# SHOAL_TT_B, SHOAL_TT_PASSWORD, SHOAL_TT_REPL_PASSWORD) and the schema
# (SHOAL_TT_SCHEMA; for verdict SHOAL_TT_CLUSTER_A, SHOAL_TT_CLUSTER_B),
# fixed when the directory is first used; tests and the demo source it.
# SHOAL_TT_EXPIRER, SHOAL_TT_EXPIRER_BATCH, SHOAL_TT_EXPIRER_IDLE_MS,
# SHOAL_TT_MEMTX_MB, SHOAL_TT_XQ_RETAIN_S and LUA_CPATH are passed
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
  schema=${SHOAL_TT_SCHEMA:-store}
  case "$schema" in store | verdict) ;; *)
    echo "SHOAL_TT_SCHEMA must be store or verdict (got '$schema')" >&2; exit 2 ;;
  esac
  {
    echo "SHOAL_TT_A=127.0.0.1:$pa"
    echo "SHOAL_TT_B=127.0.0.1:$pb"
    echo "SHOAL_TT_PASSWORD=$(secret)"
    echo "SHOAL_TT_REPL_PASSWORD=$(secret)"
    echo "SHOAL_TT_SCHEMA=$schema"
    if [ "$schema" = verdict ]; then
      echo "SHOAL_TT_CLUSTER_A=${SHOAL_TT_CLUSTER_A:-1}"
      echo "SHOAL_TT_CLUSTER_B=${SHOAL_TT_CLUSTER_B:-2}"
    fi
  } > "$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"
fi
# The directory's own settings win over the caller's environment (a
# directory made before the schema setting existed is a store pair).
unset SHOAL_TT_SCHEMA SHOAL_TT_CLUSTER_A SHOAL_TT_CLUSTER_B SHOAL_TT_CLUSTER
# shellcheck disable=SC1091
. "$DIR/env"
SHOAL_TT_SCHEMA=${SHOAL_TT_SCHEMA:-store}

addr_of() { if [ "$1" = a ]; then echo "$SHOAL_TT_A"; else echo "$SHOAL_TT_B"; fi; }

cluster_of() { if [ "$1" = a ]; then echo "$SHOAL_TT_CLUSTER_A"; else echo "$SHOAL_TT_CLUSTER_B"; fi; }

start_one() {
  local name=$1
  local args=(--listen "$(addr_of "$name")" --peers "$SHOAL_TT_A,$SHOAL_TT_B"
    --schema "$SHOAL_TT_SCHEMA" --console "$DIR/$name/console.sock")
  if [ "$SHOAL_TT_SCHEMA" = verdict ]; then args+=(--cluster "$(cluster_of "$name")"); fi
  SHOAL_TT_PASSWORD=$SHOAL_TT_PASSWORD SHOAL_TT_REPL_PASSWORD=$SHOAL_TT_REPL_PASSWORD \
    bash "$HERE/scripts/instance.sh" start "$DIR/$name" "${args[@]}"
}

stop_one() {
  if [ "${2:-TERM}" = KILL ]; then
    bash "$HERE/scripts/instance.sh" kill "$DIR/$1"
  else
    bash "$HERE/scripts/instance.sh" stop "$DIR/$1"
  fi
}

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
