#!/usr/bin/env bash
# Local demo cluster: N shoal nodes on loopback multicast, real sockets.
# Injects load on every node through its local socket, raises a mode on
# one, and shows every node's view converging. Usage: scripts/demo.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3}
(( N >= 2 )) || { echo "need at least 2 nodes" >&2; exit 2; }
command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
cargo build --release -q -p shoal-node
BIN=target/release/shoal
DIR=$(mktemp -d /tmp/shoal-demo.XXXXXX)
PORT=$(( 20000 + RANDOM % 20000 ))
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

for i in $(seq 1 "$N"); do
  cat > "$DIR/node$i.toml" <<TOML
[node]
id = $i
cluster = 1

[multicast]
group = "239.77.0.1"
port = $PORT
interface = "127.0.0.1"

[auth]
key_id = 1
secret = "demo-cluster-secret-change-me"

[local]
socket = "$DIR/node$i.sock"

[http]
listen = "127.0.0.1:$(( PORT + i ))"

[modes.default]
min_hold_ms = 2000
claim_ttl_ms = 6000
levels = [
  { level = 1, total_up = 5000, total_down = 4000, local_up = 3500, local_down = 2500 },
  { level = 2, total_up = 10000, total_down = 8000 },
]
TOML
  SHOAL_LOG=${SHOAL_LOG:-warn} "$BIN" run -c "$DIR/node$i.toml" 2>"$DIR/node$i.log" &
  pids+=($!)
done
for i in $(seq 1 "$N"); do
  for _ in $(seq 1 100); do [ -S "$DIR/node$i.sock" ] && break; sleep 0.05; done
done
echo "== $N nodes on 239.77.0.1:$PORT (loopback), configs and logs in $DIR"

echo "== each node's filter reports its own rate for resource 42 (node i: i*500 req/s)"
for i in $(seq 1 "$N"); do "$BIN" send -c "$DIR/node$i.toml" load 42 $(( i * 500 )); done
sleep 0.2
for i in $(seq 1 "$N"); do printf 'node %s sees: ' "$i"; "$BIN" query -c "$DIR/node$i.toml" load 42; done

echo "== a spike on node 1 only (4000 req/s): its controller raises a mode for everyone"
"$BIN" send -c "$DIR/node1.toml" load 42 4000
sleep 0.2
for i in $(seq 1 "$N"); do printf 'node %s mode: ' "$i"; "$BIN" query -c "$DIR/node$i.toml" mode 42; done

echo "== a session passes a challenge on node $N; every node knows it"
"$BIN" send -c "$DIR/node$N.toml" mark 123456789 legitimate
sleep 0.1
for i in $(seq 1 "$N"); do printf 'node %s: ' "$i"; "$BIN" query -c "$DIR/node$i.toml" session 123456789; done

echo "== shoal status on node 2"
"$BIN" status -c "$DIR/node2.toml"
if [ "${SHOAL_DEMO_KEEP:-0}" = 1 ]; then
  echo "== running; Ctrl-C to stop"; wait
fi
