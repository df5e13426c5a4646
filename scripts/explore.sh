#!/usr/bin/env bash
# Serve the explorer page (explorer/) on http://127.0.0.1:8090 with nginx, in front of the
# TorchServe that scripts/serve.sh started; the inference key is added by nginx, never sent to
# the browser. Run it again to restart (it re-reads key_file.json); stop: scripts/explore.sh --stop
#   scripts/explore.sh [--host 127.0.0.1] [--port 8090] [--foreground] [--stop] [--help]
# nginx: on PATH or $NGINX_BIN (Debian/Ubuntu: apt install nginx; macOS: brew install nginx).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$ROOT/.venv/bin/python"  # where scripts/setup.sh (run by serve.sh) installed saliency_tools
[[ -x "$python" ]] || { echo "[explore] no $python: run scripts/serve.sh (or scripts/setup.sh) first" >&2; exit 1; }
exec "$python" "$ROOT/scripts/explore.py" "$@"
