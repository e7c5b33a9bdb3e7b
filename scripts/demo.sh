#!/usr/bin/env bash
# Local demo cluster: N shoal nodes on loopback multicast, real sockets,
# saving to a real Tarantool master pair (installed from Debian if
# missing). Injects load on every node through its local socket, raises a
# mode on one, shows every node's view converging, then kills a node with
# -9 and shows it replay its context from Tarantool. Usage: demo.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3}
(( N >= 2 )) || { echo "need at least 2 nodes" >&2; exit 2; }
command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
bash tarantool/scripts/install.sh
cargo build --release -q -p shoal-node
BIN=target/release/shoal
DIR=$(mktemp -d /tmp/shoal-demo.XXXXXX)
PORT=$(( 20000 + RANDOM % 20000 ))
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash tarantool/scripts/pair.sh stop "$DIR/tt" >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

cargo build --release -q -p shoal-expirer
echo "== starting a Tarantool master pair (master-master) in $DIR/tt, the native expirer and save procedure on both"
SHOAL_TT_EXPIRER=shoal_expirer LUA_CPATH="$PWD/target/release/lib?.so;;" \
  bash tarantool/scripts/pair.sh start "$DIR/tt"
# shellcheck disable=SC1091
. "$DIR/tt/env"

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
admin = "127.0.0.1:$(( PORT + i ))"

[store]
masters = ["$SHOAL_TT_A", "$SHOAL_TT_B"]
password = "$SHOAL_TT_PASSWORD"
save_function = "shoal_expirer.shoal_save"   # the module's C procedure

[modes.default]
min_hold_ms = 2000
claim_ttl_ms = 6000
levels = [
  { level = 1, total_up = 5000, total_down = 4000, local_up = 3500, local_down = 2500 },
  { level = 2, total_up = 10000, total_down = 8000 },
]
TOML
  SHOAL_LOG=${SHOAL_LOG:-info} "$BIN" run -c "$DIR/node$i.toml" 2>"$DIR/node$i.log" &
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

echo "== node 1's filter blocks a session (send+save) and raises a mode for resource 7 (send+save)"
"$BIN" send -c "$DIR/node1.toml" --op send-save mark 987654321 suspicious --ttl-ms 600000
"$BIN" send -c "$DIR/node1.toml" --op send-save mode 7 3 --ttl-ms 600000
sleep 0.3
echo "== kill -9 node 1 and start it again: it replays the live records from Tarantool"
kill -9 "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
SHOAL_LOG=${SHOAL_LOG:-info} "$BIN" run -c "$DIR/node1.toml" 2>"$DIR/node1.log" &
pids[0]=$!
for _ in $(seq 1 200); do grep -q "shoal node serving" "$DIR/node1.log" 2>/dev/null && break; sleep 0.05; done
grep -o "replayed live records.*" "$DIR/node1.log" | sed 's/\x1b\[[0-9;]*m//g' || echo "(no replay line in $DIR/node1.log)"
printf 'node 1 after restart: '; "$BIN" query -c "$DIR/node1.toml" session 987654321
printf 'node 1 after restart: '; "$BIN" query -c "$DIR/node1.toml" mode 7

echo "== master a: log length and the expirer's counters (admin console)"
printf 'box.space.shoal_log:len(), require("shoal_expirer").stats()\n' |
  timeout 2 python3 -c 'import socket,sys,time
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(4096)
s.sendall(sys.stdin.buffer.read()); time.sleep(0.3); print(s.recv(65536).decode(), end="")' "$DIR/tt/a/console.sock" || true

echo "== shoal status on node 2"
"$BIN" status -c "$DIR/node2.toml"
if [ "${SHOAL_DEMO_KEEP:-0}" = 1 ]; then
  echo "== running; Ctrl-C to stop"; wait
fi
