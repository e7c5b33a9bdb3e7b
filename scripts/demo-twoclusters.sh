#!/usr/bin/env bash
# Two-cluster demo (root): scripts/twoclusters.sh builds clusters A and B
# in network namespaces, a delayed link between them (20 ms each way); each
# cluster gets a verdict store (Tarantool, replicating with the other
# cluster's) and two shoal nodes. The demo posts a verdict in A and reads it
# in B, verifies its token in B, relays a protection mode from A to B
# through the elected forwarders, kills B's forwarder and shows the other
# node take over. Everything is torn down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
((EUID == 0)) || { echo "demo-twoclusters.sh: needs root (network namespaces)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
bash tarantool/scripts/install.sh
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl iproute2 >/dev/null; }
cargo build --release -q -p shoal-node
BIN=$PWD/target/release/shoal
DIR=$(mktemp -d /tmp/shoal-2c-demo.XXXXXX)
TOKEN=demo-api-token-change-me
export SHOAL_TT_PASSWORD=demo-verdict-password SHOAL_TT_REPL_PASSWORD=demo-replication-password
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for s in a b; do bash tarantool/scripts/instance.sh stop "$DIR/store-$s" >/dev/null 2>&1 || true; done
  bash scripts/twoclusters.sh down || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

echo "== two clusters in network namespaces, 20 ms each way between their stores"
bash scripts/twoclusters.sh down >/dev/null 2>&1 || true
bash scripts/twoclusters.sh up 3
cluster=1
for s in a b; do
  echo "== verdict store of cluster $s in x${s}3 (cluster id $cluster)"
  bash scripts/twoclusters.sh exec "$s" 3 bash tarantool/scripts/instance.sh start "$DIR/store-$s" \
    --listen 0.0.0.0:3301 --peers 10.213.80.1:3301,10.213.80.2:3301 \
    --schema verdict --cluster "$cluster"
  cluster=$((cluster + 1))
done

admin_of() { echo "$(bash scripts/twoclusters.sh addr "$1" "$2"):9480"; }
api_of() { echo "$(bash scripts/twoclusters.sh addr "$1" "$2"):9481"; }
cluster=1
for s in a b; do
  subnet=$((80 + cluster))
  for k in 1 2; do
    cat > "$DIR/$s$k.toml" <<TOML
[node]
id = $k
cluster = $cluster
[multicast]
group = "239.77.0.1"
port = 7700
interface = "10.213.$subnet.$k"
[auth]
key_id = 1
secret = "demo-cluster-secret-change-me"
[local]
socket = "$DIR/$s$k.sock"
[http]
admin = "$(admin_of "$s" "$k")"
api = "$(api_of "$s" "$k")"
[verdicts]
store = "10.213.$subnet.3:3301"
password = "$SHOAL_TT_PASSWORD"
api_tokens = ["$TOKEN"]
token_key_id = 1
token_secret = "demo-token-secret-change-me"
lease_ms = 2000
TOML
    SHOAL_LOG=warn bash scripts/twoclusters.sh exec "$s" "$k" "$BIN" run -c "$DIR/$s$k.toml" \
      2> "$DIR/$s$k.log" &
    pids+=($!)
  done
  cluster=$((cluster + 1))
done
for s in a b; do for k in 1 2; do
  for _ in $(seq 100); do curl -sf "http://$(admin_of "$s" "$k")/healthz" >/dev/null && break; sleep 0.1; done
done; done

api() { curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
echo "== POST a verdict to node a1 (acknowledged once durable in A's store)"
api -X POST "http://$(api_of a 1)/v1/verdicts" \
  -d '{"subject":"1311768467294899695","verdict":"bot","score":92,"ttl_s":600,"source":"demo"}' | tee "$DIR/posted.json"
tok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$DIR/posted.json")
echo "== its token, verified by node b2 (no store involved)"
api -X POST "http://$(api_of b 2)/v1/tokens/verify" -d "{\"token\":\"$tok\"}"
echo "== reading it from node b1 until replication brings it"
start=$(date +%s%N)
until api -f "http://$(api_of b 1)/v1/verdicts/1311768467294899695" > "$DIR/read.json" 2>/dev/null; do sleep 0.005; done
echo "after $(( ($(date +%s%N) - start) / 1000000 )) ms: $(cat "$DIR/read.json")"

# (grep on a captured page: with pipefail, grep -q closing the pipe early
# would fail the whole pipeline.)
is_leader() { local m; m=$(curl -s "http://$(admin_of "$1" "$2")/metrics") && grep -q '^shoal_forwarder_leader 1' <<< "$m"; }
leader() { for k in 1 2; do is_leader "$1" "$k" && echo "$k"; done; true; }
for s in a b; do
  for _ in $(seq 200); do [ -n "$(leader "$s")" ] && break; sleep 0.05; done
done
echo "== forwarders: cluster A node $(leader a), cluster B node $(leader b)"
echo "== mode 3 on resource 42 from a2's filter; B's nodes see it as a relayed claim"
"$BIN" send -c "$DIR/a2.toml" mode 42 3 --ttl-ms 60000
sleep 1
# Queries run in the node's namespace: the reply comes back to the asker.
q() { bash scripts/twoclusters.sh exec "$1" "$2" "$BIN" query -c "$DIR/$1$2.toml" mode "$3"; }
for k in 1 2; do echo -n "b$k: "; q b "$k" 42; done
bl=$(leader b)
echo "== kill -9 B's forwarder (node b$bl); the other takes over within lease_ms + lease_ms/3"
pkill -9 -f "$DIR/b$bl.toml" || true
start=$(date +%s%N)
other=$((3 - bl))
until is_leader b "$other"; do sleep 0.05; done
echo "b$other took over after $(( ($(date +%s%N) - start) / 1000000 )) ms"
"$BIN" send -c "$DIR/a1.toml" mode 43 2 --ttl-ms 60000
sleep 1
echo -n "b$other: "; q b "$other" 43
echo "== done; tearing down"
