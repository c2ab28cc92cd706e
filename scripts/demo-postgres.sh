#!/usr/bin/env bash
# The README's Postgres demo: starts a throwaway PostgreSQL (wal_level=logical, a temporary data
# dir, 127.0.0.1 on a free port), a local s2-lite on 127.0.0.1:8080 and s2-sink with
# examples/postgres.toml, writes some rows, and prints the change records read back from S2.
# Needs Debian's `postgresql` package (installed when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PORT=8080
LITE_BIN="$(bash scripts/install-s2-lite.sh)"
. scripts/lib/throwaway-pg.sh
PG_BIN="$(pg_bin_dir)"
for p in "$PORT" 7376; do
  if curl -s -o /dev/null "http://127.0.0.1:$p/"; then
    echo "error: something already listens on 127.0.0.1:$p; stop it first" >&2
    exit 1
  fi
done
echo "== building s2-sink"
cargo build -q -p s2sink-server --bin s2-sink
SINK="$ROOT/target/debug/s2-sink"

WORK="$(mktemp -d)"
LITE_PID=""; SERVER_PID=""; PG_UP=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  [ -n "$LITE_PID" ] && kill "$LITE_PID" 2>/dev/null || true
  [ -n "$PG_UP" ] && pg_stop "$PG_BIN" "$WORK/pg"
  rm -rf "$WORK"
}
trap cleanup EXIT

PG_PORT="$(free_port)"
echo "== starting PostgreSQL on 127.0.0.1:$PG_PORT (throwaway, wal_level=logical)"
pg_start "$PG_BIN" "$WORK/pg" "$PG_PORT"
PG_UP=1
psql_app() { psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }
psql_app <<'SQL'
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int REFERENCES customers, total numeric(10,2), status text, placed_at timestamptz DEFAULT now());
-- Full old rows in the WAL: updates carry the old values of changed columns, deletes the whole row.
ALTER TABLE orders REPLICA IDENTITY FULL;
INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');
SQL

echo "== starting s2-lite on 127.0.0.1:$PORT (in memory)"
"$LITE_BIN" --port "$PORT" --no-dashboard >"$WORK/lite.log" 2>&1 &
LITE_PID=$!
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.1; done
E="http://127.0.0.1:$PORT/v1"
curl -sf -X PUT -H 'content-type: application/json' "$E/basins/demo-basin-01" -d '{}' >/dev/null
curl -sf -X PUT -H 'content-type: application/json' -H 's2-basin: demo-basin-01' "$E/streams/app-changes" -d '{}' >/dev/null

echo "== starting s2-sink (examples/postgres.toml)"
cp examples/postgres.toml "$WORK/"
(cd "$WORK" && APP_DB_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres" exec "$SINK" serve --config postgres.toml) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
until curl -sf http://127.0.0.1:7376/healthz >/dev/null; do
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done
for _ in $(seq 1 100); do
  state=$(curl -sf http://127.0.0.1:7376/api/sources | jq -r '.sources[0].state')
  [ "$state" = "streaming" ] && break
  sleep 0.1
done
echo "   source state: $state"

echo "== writing rows (a transaction, an update, a delete)"
psql_app <<'SQL'
BEGIN;
INSERT INTO orders (id, customer_id, total, status) VALUES (100, 1, 19.99, 'pending'), (101, 2, 5.00, 'pending');
COMMIT;
UPDATE orders SET status = 'shipped' WHERE id = 100;
DELETE FROM orders WHERE id = 101;
UPDATE customers SET name = 'Ada Lovelace' WHERE id = 1;
SQL

echo "== waiting for delivery"
want=7   # 2 backfilled customers + 2 inserts + 2 updates + 1 delete
for _ in $(seq 1 200); do
  tail=$(curl -sf -H 's2-basin: demo-basin-01' "$E/streams/app-changes/records/tail" | jq '.tail.seq_num')
  [ "$tail" -ge "$want" ] && break
  sleep 0.1
done
curl -sf http://127.0.0.1:7376/api/sources | jq -c '.sources[] | {name, state, changes_stored, lag_bytes}'

echo "== records in S2 (demo-basin-01/app-changes), read back from s2-lite"
curl -sf -H 's2-basin: demo-basin-01' "$E/streams/app-changes/records?seq_num=0&count=100" \
  | jq -c '.records[] | {seq_num, body: (.body | fromjson | {action, table: .metadata.table_name, record, changes})}'
echo "== done (each row's changes are in commit order, each exactly once)"
