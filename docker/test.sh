#!/usr/bin/env bash
# The compose demo under test: starts a private dockerd in a network
# namespace of its own (nsenter, not `ip netns exec`: MACHINE.md), builds
# the images offline (docker/build.sh), brings docker/compose.yml up and
# checks, with deadlines:
#   1. sync: the load the traffic container gives c1-n1 is seen by c1-n2,
#      and c2's nodes see their own traffic;
#   2. replay: a session mark saved through c1-n1, then `docker kill` of
#      c1-n1 and a start: it knows the mark again (from its store only);
#   3. a verdict posted to c1-n1's API is read through c2-n1's, and c2-n1
#      accepts its token;
#   4. a block posted to c1-n1's API is held by c1-n2 and both nodes of
#      c2, marked as from cluster 1.
# Then removes everything it made (containers, networks, volumes, images,
# the daemon, its data and its namespace; packaging/lib.sh); only the
# Debian rootfs tarball stays cached (packaging/rootfs.sh). Needs root; without it prints
# SKIPPED (a failure under SHOAL_REQUIRE_ALL=1, as in .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=docker/test.sh
. packaging/lib.sh
((EUID == 0)) || skip "needs root (dockerd, network namespace)"
need_tools dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap curl:curl

start=$SECONDS
bash packaging/rootfs.sh >/dev/null || skip "no Debian rootfs (debootstrap from the apt mirror failed: see above)"
D=$(pwd)/target/docker-test.$$
P=shoaldemo$$
dc() { docker-compose -p "$P" -f docker/compose.yml "$@"; }
cleanup() {
  set +e
  if [[ -S $D/docker.sock ]]; then
    dc down -v -t 1 >/dev/null 2>&1
    $DOCKER rmi -f shoal-node shoal-tarantool shoal-bookworm >/dev/null 2>&1
  fi
  stop_dockerd
}
trap cleanup EXIT
start_dockerd "$D" "shoaldock$$"
NS=$DOCKERD_NS

bash docker/build.sh
echo "daemon up and images built in $((SECONDS - start)) s" >&2
dc up -d >"$D/up.log" 2>&1 || { cat "$D/up.log" >&2; fail "compose up"; }

# Runs `shoal` inside a node container (FROM scratch: exec the binary).
shoal_in() { local c=$1 cmd=$2; shift 2; $DOCKER exec "${P}_${c}_1" /usr/bin/shoal "$cmd" -c /etc/shoal/shoal.toml "$@"; }
q() { shoal_in "$1" query "${@:2}" 2>/dev/null || true; }
metric() { shoal_in "$1" status --metrics 2>/dev/null | awk -v m="$2" '$1 == m { print $2 }'; }
on_timeout() { dc ps >&2; dc logs --tail 15 >&2; }
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

# 1. Sync inside each cluster.
seen_by() { q "$1" load 42 | grep -Eq "total=[1-9][0-9]* .*nodes=[1-9]"; }
until_ok 60 "c1-n2 never saw c1-n1's load" seen_by c1-n2
until_ok 30 "c2-n2 never saw c2-n1's load" seen_by c2-n2
echo "sync: $(q c1-n2 load 42)" >&2

# 2. Replay after kill: a mark only the store remembers once c1-n1 dies.
saved_before=$(metric c1-n1 shoal_store_saved_total)
shoal_in c1-n1 send --op send-save mark 9000001 suspicious >/dev/null
saved_more() { [[ $(metric c1-n1 shoal_store_saved_total) -gt ${saved_before:-0} ]] && q c1-n1 session 9000001 | grep -q "mark=2 "; }
until_ok 20 "the mark was not saved" saved_more
$DOCKER kill "${P}_c1-n1_1" >/dev/null
$DOCKER start "${P}_c1-n1_1" >/dev/null
replayed() { q c1-n1 session 9000001 | grep -q "mark=2 "; }
until_ok 30 "c1-n1 did not replay the mark after kill" replayed
echo "replay: $(q c1-n1 session 9000001), shoal_replay_records $(metric c1-n1 shoal_replay_records)" >&2

# 3. A verdict crosses clusters: posted in c1, read and verified in c2.
subject=$((RANDOM * 32768 + RANDOM))
api() { in_ns curl -sS -m 5 -H 'Authorization: Bearer demo-api-token-0123456789' "$@"; }
post=$(api -X POST -H 'Content-Type: application/json' \
  -d "{\"subject\":\"$subject\",\"verdict\":\"bot\",\"score\":90,\"ttl_s\":600,\"source\":\"compose-test\"}" \
  http://172.28.1.11:9478/v1/verdicts) || fail "POST to c1-n1"
token=$(printf '%s' "$post" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
[[ -n $token ]] || fail "no token in the answer: $post"
crossed() { api "http://172.28.2.11:9478/v1/verdicts/$subject" | grep -q '"verdict": *"bot"'; }
until_ok 20 "the verdict never reached c2" crossed
api -X POST -H 'Content-Type: application/json' -d "{\"token\":\"$token\"}" \
  http://172.28.2.11:9478/v1/tokens/verify | grep -q '"valid": *true' || fail "c2 refuses c1's token"
echo "verdict: $(api "http://172.28.2.11:9478/v1/verdicts/$subject")" >&2

# 4. A block crosses clusters: posted in c1, held by both nodes of c2
# (the demo has no [enforce]: nodes hold and relay it, no kernel drop).
api -X POST -H 'Content-Type: application/json' \
  -d '{"prefix":"198.51.100.0/24","ttl_s":600,"reason":"demo"}' \
  http://172.28.1.11:9478/v1/blocks | grep -q '"prefix"' || fail "POST /v1/blocks to c1-n1"
holds_block() { api "http://$1:9478/v1/blocks" | grep -q '"prefix": *"198.51.100.0/24"'; }
until_ok 20 "c1-n2 does not hold the block" holds_block 172.28.1.12
until_ok 20 "c2-n1 does not hold c1's block" holds_block 172.28.2.11
until_ok 20 "c2-n2 does not hold c1's block" holds_block 172.28.2.12
api http://172.28.2.12:9478/v1/blocks | grep -q '"origin_cluster": *1' || fail "c2-n2's block is not marked as from cluster 1"
echo "block: $(api http://172.28.2.12:9478/v1/blocks)" >&2
echo "compose demo test passed in $((SECONDS - start)) s" >&2
