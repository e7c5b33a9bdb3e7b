# Sourced by the packaging and docker tests (packaging/deb/test.sh,
# packaging/systemd/test.sh, docker/test.sh): how a test skips, fails,
# installs a missing Debian tool, and runs a private dockerd.
#
# Set TEST (the script's name for messages) before sourcing.

# A test that cannot run here says so (SKIPPED, appended to
# $SHOAL_SKIP_LOG for scripts/test.sh's list) and exits 0, unless
# SHOAL_REQUIRE_ALL=1 (.ci/run): then it is a failure.
skip() {
  echo "SKIPPED: $TEST: $1" >&2
  [[ -n ${SHOAL_SKIP_LOG:-} ]] && echo "SKIPPED: $TEST: $1" >>"$SHOAL_SKIP_LOG"
  [[ ${SHOAL_REQUIRE_ALL:-} == 1 ]] && { echo "SHOAL_REQUIRE_ALL=1 forbids skipping" >&2; exit 1; }
  exit 0
}
fail() { echo "FAIL: $TEST: $*" >&2; exit 1; }

# need_tools CMD:PACKAGE...: installs the packages of missing commands
# with apt-get, or skips.
need_tools() {
  local pkgs=() t
  for t in "$@"; do command -v "${t%%:*}" >/dev/null || pkgs+=("${t#*:}"); done
  ((${#pkgs[@]})) || return 0
  { command -v apt-get >/dev/null && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null; } \
    || skip "missing ${pkgs[*]} and apt-get could not install them"
}

# until_ok SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it
# succeeds; fails with WHAT after SECONDS.
until_ok() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || { declare -F on_timeout >/dev/null && on_timeout; fail "$what"; }
    sleep 0.2
  done
}

# start_dockerd DIR NS: a docker daemon of our own, in network namespace
# NS (created here), state under DIR, socket DIR/docker.sock (exported as
# DOCKER_HOST). nsenter, not `ip netns exec` (which remounts /sys and
# hides the cgroups). Debian's client (20.10) matches the daemon.
start_dockerd() {
  DOCKERD_DIR=$1 DOCKERD_NS=$2
  DOCKER=/usr/bin/docker
  [[ -x $DOCKER ]] || DOCKER=docker
  export DOCKER DOCKER_BUILDKIT=0 DOCKER_HOST=unix://$DOCKERD_DIR/docker.sock
  mkdir -p "$DOCKERD_DIR"
  ip netns add "$DOCKERD_NS"
  ip -n "$DOCKERD_NS" link set lo up
  nsenter --net="/run/netns/$DOCKERD_NS" dockerd --data-root "$DOCKERD_DIR/root" \
    --exec-root "$DOCKERD_DIR/exec" -H "$DOCKER_HOST" --pidfile "$DOCKERD_DIR/docker.pid" \
    >"$DOCKERD_DIR/dockerd.log" 2>&1 &
  local _
  for _ in $(seq 1 300); do $DOCKER version >/dev/null 2>&1 && return 0; sleep 0.1; done
  tail -20 "$DOCKERD_DIR/dockerd.log" >&2
  fail "dockerd did not start"
}

# stop_dockerd: stops the daemon, kills what is left in its namespace,
# deletes the namespace, unmounts what outlived it, removes DIR.
stop_dockerd() {
  [[ -n ${DOCKERD_DIR:-} ]] || return 0
  local pid _
  if [[ -f $DOCKERD_DIR/docker.pid ]]; then
    pid=$(cat "$DOCKERD_DIR/docker.pid")
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  ip netns pids "$DOCKERD_NS" 2>/dev/null | xargs -r kill -9
  ip netns del "$DOCKERD_NS" 2>/dev/null
  grep -o " $DOCKERD_DIR/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$DOCKERD_DIR"
  return 0
}
