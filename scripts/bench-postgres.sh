#!/usr/bin/env bash
# Postgres → S2 benchmark: a throwaway PostgreSQL (wal_level=logical), s2-lite and a release
# s2-sink with a `[[sources]]` entry on one machine. pgbench commits single-row inserts of ~1 KB
# rows; the script reads every record back from S2 and reports:
#   - max: changes/s from the first commit to the last S2 arrival at full pgbench speed, the
#     commit rate pgbench reached, and CPU seconds of s2-sink, s2-lite and Postgres per change;
#   - rate R: commit → S2 latency (S2 arrival timestamp − metadata.commit_timestamp) p50 / p99 /
#     max at a fixed commit rate, and the source's lag_bytes at the end.
# Usage: bash scripts/bench-postgres.sh [seconds=10] [fixed rate=2000] [clients=8]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
SECS="${1:-10}"; RATE="${2:-2000}"; CLIENTS="${3:-8}"
LITE_BIN="$(bash scripts/install-s2-lite.sh)"
. scripts/lib/throwaway-pg.sh
PG_BIN="$(pg_bin_dir)"
cargo build -q --release -p s2sink-server --bin s2-sink
SINK="$ROOT/target/release/s2-sink"
WORK="$(mktemp -d)"
LITE_PID=""; SERVER_PID=""; PG_UP=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  [ -n "$LITE_PID" ] && kill "$LITE_PID" 2>/dev/null || true
  [ -n "$PG_UP" ] && pg_stop "$PG_BIN" "$WORK/pg"
  rm -rf "$WORK"
}
trap cleanup EXIT
PG_PORT=$(free_port); LITE_PORT=$(free_port); API_PORT=$(free_port)
# Durable commits (fsync on, as in production): the commit rate is what this disk gives.
pg_start "$PG_BIN" "$WORK/pg" "$PG_PORT" -c max_connections=50
PG_UP=1
PSQL=(psql -qtA -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE TABLE bench (id bigserial PRIMARY KEY, payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
echo "INSERT INTO bench (payload) VALUES (repeat(md5(random()::text), 31));" >"$WORK/insert.sql"   # 992 chars

"$LITE_BIN" --port "$LITE_PORT" --no-dashboard >"$WORK/lite.log" 2>&1 &
LITE_PID=$!
until curl -sf "http://127.0.0.1:$LITE_PORT/health" >/dev/null; do sleep 0.1; done
E="http://127.0.0.1:$LITE_PORT/v1"
curl -sf -X PUT -H 'content-type: application/json' "$E/basins/bench-basin-01" -d '{}' >/dev/null
for s in max fixed; do
  curl -sf -X PUT -H 'content-type: application/json' -H 's2-basin: bench-basin-01' "$E/streams/$s" -d '{}' >/dev/null
done

run_phase() { # name, pgbench rate args...
  local name="$1"; shift
  cat >"$WORK/s2-sink.toml" <<TOML
[server]
listen = "127.0.0.1:$API_PORT"
data_dir = "data-$name"
[[sinks]]
name = "bench"
basin = "bench-basin-01"
stream = "$name"
endpoint = "http://127.0.0.1:$LITE_PORT"
[[sources]]
name = "db"
kind = "postgres"
url = "postgres://postgres@127.0.0.1:$PG_PORT/postgres"
publication = "bench_pub"
slot = "bench_slot_$name"
tables = ["public.bench"]
sink = "bench"
TOML
  (cd "$WORK" && exec "$SINK" serve --config s2-sink.toml) >"$WORK/server-$name.log" 2>&1 &
  SERVER_PID=$!
  until [ "$(curl -sf "http://127.0.0.1:$API_PORT/api/sources" | jq -r '.sources[0].state' 2>/dev/null)" = streaming ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server-$name.log"; exit 1; }
    sleep 0.1
  done
  local before; before=$("${PSQL[@]}" -c "SELECT count(*) FROM bench")
  local pg_pids; pg_pids=$(pgrep -d, -u postgres -f "postgres" || true)
  local cpu0; cpu0=$(python3 scripts/proc_cpu.py "$SERVER_PID" "$LITE_PID" "$pg_pids")
  pgbench -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "$CLIENTS" -j 2 -T "$SECS" "$@" -f "$WORK/insert.sql" postgres >"$WORK/pgbench-$name.txt" 2>&1
  local n; n=$(( $("${PSQL[@]}" -c "SELECT count(*) FROM bench") - before ))
  until [ "$(curl -sf -H 's2-basin: bench-basin-01' "$E/streams/$name/records/tail" | jq '.tail.seq_num')" -ge "$n" ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server-$name.log"; exit 1; }
    sleep 0.05
  done
  local cpu1; cpu1=$(python3 scripts/proc_cpu.py "$SERVER_PID" "$LITE_PID" "$pg_pids")
  local status; status=$(curl -sf "http://127.0.0.1:$API_PORT/api/sources" | jq -c '.sources[0] | {lag_bytes, changes_stored}')
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  python3 - "$E" "$name" "$n" "$cpu0" "$cpu1" "$WORK/pgbench-$name.txt" "$status" <<'PY'
import json, sys, urllib.request, datetime, statistics
base, stream, n, cpu0, cpu1, pgb, status = sys.argv[1:]
n = int(n); cpu0 = [float(x) for x in cpu0.split()]; cpu1 = [float(x) for x in cpu1.split()]
recs, pos = [], 0
while pos < n:
    req = urllib.request.Request(f"{base}/streams/{stream}/records?seq_num={pos}&count=1000", headers={"s2-basin": "bench-basin-01"})
    batch = json.load(urllib.request.urlopen(req))["records"]
    if not batch: break
    recs += batch; pos = batch[-1]["seq_num"] + 1
def commit_ms(b):
    t = json.loads(b)["metadata"]["commit_timestamp"]
    return datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000
lat = sorted(r["timestamp"] - commit_ms(r["body"]) for r in recs)
first_commit = min(commit_ms(r["body"]) for r in recs); last_arrival = max(r["timestamp"] for r in recs)
keys = [(json.loads(r["body"])["metadata"]["commit_lsn"], json.loads(r["body"])["metadata"]["commit_idx"]) for r in recs]
tps = [l for l in open(pgb) if l.startswith("tps")]
d = [b - a for a, b in zip(cpu0, cpu1)]
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(json.dumps({
    "phase": stream, "committed": n, "in_s2": len(recs), "duplicates": len(keys) - len(set(keys)),
    "changes_per_s": round(len(recs) / ((last_arrival - first_commit) / 1000), 1),
    "pgbench": tps[0].strip() if tps else None,
    "latency_ms": {"p50": q(0.5), "p99": q(0.99), "max": lat[-1]},
    "cpu_us_per_change": {"s2_sink": round(d[0] / n * 1e6, 1), "s2_lite": round(d[1] / n * 1e6, 1), "postgres": round(d[2] / n * 1e6, 1)},
    "source": json.loads(status),
}))
PY
}
echo "== max: $CLIENTS pgbench clients, $SECS s, as fast as Postgres commits"
run_phase max
echo "== fixed rate: $RATE commits/s, $SECS s"
run_phase fixed -R "$RATE"
