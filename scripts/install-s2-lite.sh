#!/usr/bin/env bash
# Installs s2-lite (binary `server`) into a tools directory that later runs reuse.
# Prints the path of the binary on stdout. Reuses an installed copy when its version matches.
set -euo pipefail
S2_LITE_VERSION="${S2_LITE_VERSION:-0.43.4}"
TOOLS="${S2SINK_TOOLS:-$HOME/.cache/s2-sink-tools}"
BIN="$TOOLS/bin/server"
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qx "s2-lite $S2_LITE_VERSION"; then
  echo "$BIN"
  exit 0
fi
echo "installing s2-lite $S2_LITE_VERSION into $TOOLS (takes ~5 min on 2 cores)" >&2
mkdir -p "$TOOLS"
cargo install --locked --quiet --root "$TOOLS" s2-lite --version "$S2_LITE_VERSION" >&2
"$BIN" --version >&2
echo "$BIN"
