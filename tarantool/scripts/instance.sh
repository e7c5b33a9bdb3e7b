#!/usr/bin/env bash
# Starts and stops ONE Shoal store instance (tarantool/instance.lua) in a
# directory of its own: a master of a cluster state store, or one
# cluster's instance of the cross-cluster verdict store. pair.sh starts
# its two masters with this script; run it the same way by hand, e.g. in
# a network namespace (`ip netns exec NS instance.sh start DIR ...`).
#
#   instance.sh start DIR [OPTIONS]   start; returns once it is ready
#   instance.sh stop DIR              SIGTERM, wait (SIGKILL after 5 s)
#   instance.sh kill DIR              kill -9
#   instance.sh status DIR            print the pid; exit 1 if not running
#
# Settings come from the environment; an option overrides it:
#   --env FILE          VAR=value lines to read first (e.g. a pair's DIR/env)
#   --listen HOST:PORT  SHOAL_TT_LISTEN (required)
#   --peers A,B,...     SHOAL_TT_PEERS: host:port of every master of the
#                       replica set, this one included (default: listen)
#   --schema S          SHOAL_TT_SCHEMA: store (default) or verdict
#   --cluster N         SHOAL_TT_CLUSTER: this instance's cluster id
#                       (required for verdict)
#   --console PATH      SHOAL_TT_CONSOLE (default DIR/console.sock)
# Passwords only from the environment or --env (never on a command line):
# SHOAL_TT_PASSWORD (user shoal) and SHOAL_TT_REPL_PASSWORD (user
# replicator); every instance of a replica set needs the same two.
# Passed through as well: SHOAL_TT_XQ_RETAIN_S, SHOAL_TT_EXPIRER,
# SHOAL_TT_EXPIRER_BATCH, SHOAL_TT_EXPIRER_IDLE_MS, SHOAL_TT_MEMTX_MB,
# SHOAL_TT_CONNECT_S, LUA_CPATH (see instance.lua). SHOAL_TT_START_S:
# seconds to wait for ready (default 10). SHOAL_TARANTOOL: the tarantool
# binary to run (a path; default `tarantool` on PATH, Debian's 2.6, installed
# by install.sh when missing); instance.lua adapts its box.cfg to the version.
#
# DIR holds the data (snapshots, WAL), tarantool.log, tarantool.pid, the
# console socket and `ready` (written once the instance has its schema).
#
# First start of a replica set: start ONE instance, wait for it, then the
# others; each joins the running one and gets the schema and users from
# it. Two empty instances that cannot reach each other when they start
# each make their own replica set, and those never replicate. After that
# any order works: an instance comes up alone (after SHOAL_TT_CONNECT_S,
# default 0.5 s) and catches up when its peers answer.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '8,11s/^# \{0,1\}//p' "$0" >&2; exit 2; }
cmd=${1:-}
if [ -z "$cmd" ] || [ -z "${2:-}" ]; then usage; fi
DIR=$2
shift 2

pid_of() {
  local f="$DIR/tarantool.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

stop() {
  local sig=$1 pid
  pid=$(pid_of) || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 250); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$DIR/tarantool.pid"; return 0; }
    sleep 0.02
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$DIR/tarantool.pid"
}

start() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --env)
        [ -f "${2:?--env needs a file}" ] || { echo "no such file: $2" >&2; exit 2; }
        set -a
        # shellcheck disable=SC1090
        . "$2"
        set +a
        ;;
      --listen) export SHOAL_TT_LISTEN=${2:?--listen needs HOST:PORT} ;;
      --peers) export SHOAL_TT_PEERS=${2:?--peers needs A,B,...} ;;
      --schema) export SHOAL_TT_SCHEMA=${2:?--schema needs store or verdict} ;;
      --cluster) export SHOAL_TT_CLUSTER=${2:?--cluster needs a number} ;;
      --console) export SHOAL_TT_CONSOLE=${2:?--console needs a path} ;;
      *) echo "unknown option $1" >&2; usage ;;
    esac
    shift 2
  done
  : "${SHOAL_TT_LISTEN:?SHOAL_TT_LISTEN or --listen is required}"
  : "${SHOAL_TT_PASSWORD:?SHOAL_TT_PASSWORD is required}"
  : "${SHOAL_TT_REPL_PASSWORD:?SHOAL_TT_REPL_PASSWORD is required}"
  export SHOAL_TT_LISTEN SHOAL_TT_PASSWORD SHOAL_TT_REPL_PASSWORD
  export SHOAL_TT_PEERS=${SHOAL_TT_PEERS:-$SHOAL_TT_LISTEN}
  export SHOAL_TT_SCHEMA=${SHOAL_TT_SCHEMA:-store}
  case "$SHOAL_TT_SCHEMA" in
    store) ;;
    verdict)
      if ! [[ ${SHOAL_TT_CLUSTER:-} =~ ^[1-9][0-9]{0,9}$ ]] || ((SHOAL_TT_CLUSTER > 4294967295)); then
        echo "verdict schema: SHOAL_TT_CLUSTER or --cluster must be 1..4294967295 (got '${SHOAL_TT_CLUSTER:-}')" >&2
        exit 2
      fi
      export SHOAL_TT_CLUSTER ;;
    *) echo "SHOAL_TT_SCHEMA must be store or verdict (got '$SHOAL_TT_SCHEMA')" >&2; exit 2 ;;
  esac
  export SHOAL_TT_CONSOLE=${SHOAL_TT_CONSOLE:-$DIR/console.sock}
  if pid=$(pid_of); then
    echo "instance in $DIR already running (pid $pid)" >&2
    return 0
  fi
  local tt=${SHOAL_TARANTOOL:-tarantool}
  if [ -n "${SHOAL_TARANTOOL:-}" ]; then
    # A chosen binary is never replaced by another version behind the caller's back.
    [ -x "$tt" ] || { echo "SHOAL_TARANTOOL=$tt is not an executable file" >&2; exit 2; }
  else
    command -v tarantool >/dev/null || bash "$HERE/scripts/install.sh"
  fi
  rm -f "$DIR/ready"
  (cd "$DIR" && "$tt" "$HERE/instance.lua")
  local tries
  tries=$(awk -v s="${SHOAL_TT_START_S:-10}" 'BEGIN { print int(s * 50) + 1 }')
  for _ in $(seq 1 "$tries"); do
    [ -f "$DIR/ready" ] && return 0
    sleep 0.02
  done
  echo "instance in $DIR did not become ready; last lines of $DIR/tarantool.log:" >&2
  tail -n 20 "$DIR/tarantool.log" >&2 || true
  return 1
}

case "$cmd" in
  start)
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    start "$@"
    ;;
  stop | kill | status)
    [ -d "$DIR" ] || { [ "$cmd" = status ] && exit 1; exit 0; }
    DIR=$(cd "$DIR" && pwd)
    case "$cmd" in
      stop) stop TERM ;;
      kill) stop KILL ;;
      status) pid_of || exit 1 ;;
    esac
    ;;
  *) echo "unknown command $cmd" >&2; usage ;;
esac
