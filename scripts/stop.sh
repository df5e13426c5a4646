#!/usr/bin/env bash
# Stop the TorchServe started by scripts/serve.sh and wait until it has exited.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
pid_file="${TMPDIR:-/tmp}/.model_server.pid"
if [[ ! -f "$pid_file" ]]; then
  echo "[stop] TorchServe is not running (no $pid_file)."
  exit 0
fi
if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  echo "[stop] TorchServe had already exited; removing its stale pid file."
  rm -f "$pid_file"
  exit 0
fi
"$ROOT/.venv/bin/torchserve" --stop --foreground
