#!/usr/bin/env bash
# The project's test command (README): formatting, lints, every test of the workspace.
# Installs what the tests need first (s2-lite; Chromium for the browser test when available).
set -euo pipefail
cd "$(dirname "$0")/.."

S2_LITE_BIN="$(bash scripts/install-s2-lite.sh)"
export S2_LITE_BIN
echo "using s2-lite at $S2_LITE_BIN"

# Python's prometheus_client parses the real /metrics output in tests/tests/metrics.rs (an
# independent parser for both exposition formats); Schemathesis (its `st` command next to the
# venv's python) tests the live API against /api/openapi.json in tests/tests/openapi.rs.
# A venv under target/, reused when it holds the pinned versions.
PROMETHEUS_CLIENT_PY=0.26.0
SCHEMATHESIS_PY=4.32.5
S2SINK_PYTHON="$PWD/target/py-venv/bin/python"
if ! "$S2SINK_PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus_client') != '$PROMETHEUS_CLIENT_PY' or m.version('schemathesis') != '$SCHEMATHESIS_PY')" 2>/dev/null; then
  python3 -m venv target/py-venv
  "$S2SINK_PYTHON" -m pip install --quiet --disable-pip-version-check \
    "prometheus_client==$PROMETHEUS_CLIENT_PY" "schemathesis==$SCHEMATHESIS_PY"
fi
export S2SINK_PYTHON

# PostgreSQL (Debian's package) for the Postgres source's tests: each test starts a throwaway
# server with wal_level=logical in a temporary data dir on a free 127.0.0.1 port.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "installing PostgreSQL (Debian package postgresql)"
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== the engine embeds without the HTTP server (feature \`server\` off: no actix-web, no config)"
cargo check --locked -p s2sink-server --no-default-features --lib
if cargo tree --locked -p s2sink-server --no-default-features -e normal --prefix none | grep -Eq '^(actix-web|config|tracing-subscriber|prometheus-client|clap|utoipa|s2sink-source-postgres|tokio-postgres) '; then
  echo "s2sink-server without default features still depends on actix-web / config / tracing-subscriber / prometheus-client / clap / utoipa / the Postgres source" >&2
  exit 1
fi

echo "== build the s2-sink binary (process-level tests run it)"
cargo build --locked -p s2sink-server --bin s2-sink
export S2SINK_BIN="$PWD/target/debug/s2-sink"

echo "== doc tests"
cargo test --workspace --all-features --locked --doc

echo "== the crates package for crates.io (cargo package; the doc tests above run each crate's README example)"
cargo package --workspace --exclude s2sink-tests --no-verify --locked --quiet

echo "== browser test (web console in Chromium)"
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
npm ci --prefix tests/browser --silent --no-audit --no-fund
node --test tests/browser/console.test.mjs

echo "== load generator smoke run (fails on loss, duplicates or order violations; not on speed)"
cargo run --locked -q -p s2sink-tests --bin s2-sink-bench -- --smoke --server-bin target/debug/s2-sink

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast
else
  cargo test --workspace --all-features --locked --no-fail-fast
fi
