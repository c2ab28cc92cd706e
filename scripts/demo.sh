#!/usr/bin/env bash
# The README's "run" command: starts a local s2-lite (installed if missing) on 127.0.0.1:8080,
# the s2-sink server with examples/s2-sink.toml (no endpoint configured → local s2-lite),
# sends the sample change messages, and prints what S2 holds. Ctrl-C-safe; cleans up after.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PORT=8080
LITE_BIN="$(bash scripts/install-s2-lite.sh)"
if curl -s -o /dev/null "http://127.0.0.1:$PORT/health"; then
  echo "error: something already listens on 127.0.0.1:$PORT; stop it first" >&2
  exit 1
fi
echo "== building s2-sink"
cargo build -q -p s2sink-server --bin s2-sink
SINK="$ROOT/target/debug/s2-sink"

WORK="$(mktemp -d)"
LITE_PID=""; SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  [ -n "$LITE_PID" ] && kill "$LITE_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== starting s2-lite on 127.0.0.1:$PORT (in memory)"
"$LITE_BIN" --port "$PORT" --no-dashboard >"$WORK/lite.log" 2>&1 &
LITE_PID=$!
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.1; done
E="http://127.0.0.1:$PORT/v1"
curl -sf -X PUT -H 'content-type: application/json' "$E/basins/demo-basin-01" -d '{}' >/dev/null
curl -sf -X PUT -H 'content-type: application/json' -H 's2-basin: demo-basin-01' "$E/streams/orders" -d '{}' >/dev/null

echo "== starting s2-sink (examples/s2-sink.toml)"
cp -r examples/s2-sink.toml examples/functions "$WORK/"
(cd "$WORK" && exec "$SINK" serve --config s2-sink.toml) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
until curl -sf http://127.0.0.1:7376/healthz >/dev/null; do
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done

echo "== sending examples/changes.ndjson"
"$SINK" send --sink orders examples/changes.ndjson

echo "== waiting for delivery"
for _ in $(seq 1 100); do
  pending=$(curl -sf http://127.0.0.1:7376/api/sinks/orders | jq '.counts.pending')
  [ "$pending" = "0" ] && break
  sleep 0.1
done
"$SINK" sinks | jq '.sinks[] | {name, basin, stream, counts}'

echo "== records in S2 (demo-basin-01/orders), read back from s2-lite"
curl -sf -H 's2-basin: demo-basin-01' "$E/streams/orders/records?seq_num=0&count=100" \
  | jq -c '.records[] | {seq_num, id: (.headers | map(select(.[0]=="s2sink-id"))[0][1]), body: (.body | fromjson | {action, record})}'
echo "== done (the filter dropped the audit_log change; each customer's changes are in order)"
