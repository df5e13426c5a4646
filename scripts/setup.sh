#!/usr/bin/env bash
# Set up everything the service needs; sourced by serve.sh and test.sh, safe to run again.
#   scripts/setup.sh [--dev] [--no-archive]
# - .venv at the repository root with the pinned requirements (--dev: test tools too) and our
#   packages: handler/ (the runtime, saliency_service) and tools/ (saliency_tools), editable
# - --dev: .venv-tools with requirements-tools.txt (scanners whose dependencies clash with .venv)
# - Java 17+ for TorchServe's front end
# - the weights ($SQUEEZENET_WEIGHTS, else torchvision's file, downloaded and checksummed)
# - model_store/squeezenet_saliency.mar (not with --no-archive: the unit tier needs none)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"
say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

requirements="$ROOT/requirements.txt"
dev=false archive=true
for argument in "$@"; do
  case "$argument" in
    --dev) dev=true ;;
    --no-archive) archive=false ;;
    *) die "unknown option $argument (scripts/setup.sh [--dev] [--no-archive])" ;;
  esac
done
$dev && requirements="$ROOT/requirements-dev.txt"

# Python 3.11+ with venv: the pinned numpy (2.4) and Pillow (13) publish nothing older.
command -v "$PYTHON_BIN" >/dev/null || die "python3 not found; install Python 3.11 (e.g. apt-get install python3 python3-venv)."
"$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11+ is needed (numpy 2.4 and Pillow 13 need it), found $("$PYTHON_BIN" --version 2>&1). Set PYTHON=/path/to/python3.11."

# Java 17+ (TorchServe's front end is a Java program).
java_bin="java"
[[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]] && java_bin="$JAVA_HOME/bin/java"
java_major="$("$java_bin" -version 2>&1 | sed -nE 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/p' | head -n1 || true)"
if [[ -z "$java_major" || "$java_major" -lt 17 ]]; then
  die "TorchServe needs Java 17 or newer (found: ${java_major:-none}). Install it, e.g.
    Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless
    macOS:         brew install openjdk@17
  or point JAVA_HOME at an existing JDK/JRE 17+."
fi

# Virtual environment; reinstall only when the requirement files change.
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
stamp="$VENV/.requirements-$(basename "$requirements" .txt)"
digest="$(cat "$ROOT"/requirements*.txt "$ROOT"/handler/pyproject.toml "$ROOT"/tools/pyproject.toml \
  | sha256sum | cut -c1-16)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$digest" ]]; then
  say "installing $(basename "$requirements") into .venv (the first time takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  # Our two packages, editable: the runtime (handler/, what the .mar ships) and the tooling
  # (tools/, behind scripts/*.py). Their dependencies are the pins above; setuptools is pinned there.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e "$ROOT/handler" -e "$ROOT/tools"
  echo "$digest" >"$stamp"
fi

# Scanners with their own dependency trees (checkov), apart from the serving pins.
if $dev; then
  TOOLS="$ROOT/.venv-tools"
  tools_stamp="$TOOLS/.requirements-tools"
  tools_digest="$(sha256sum "$ROOT/requirements-tools.txt" | cut -c1-16)"
  if [[ "$(cat "$tools_stamp" 2>/dev/null || true)" != "$tools_digest" ]]; then
    say "installing requirements-tools.txt into .venv-tools"
    [[ -x "$TOOLS/bin/python" ]] || "$PYTHON_BIN" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-tools.txt"
    echo "$tools_digest" >"$tools_stamp"
  fi
fi

# Weights and the model archive: rebuilt when handler/ changed or weights are named
# ($SQUEEZENET_WEIGHTS); a current archive is kept, so a later run needs no network or weights.
if $archive; then
  say "model_store/squeezenet_saliency.mar"
  "$VENV/bin/python" "$ROOT/scripts/build_mar.py" --if-stale >&2
fi
