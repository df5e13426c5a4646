#!/usr/bin/env bash
# Set up and start TorchServe in the background; scripts/stop.sh stops it.
#   scripts/serve.sh [NAME ...]
# Serves every archive in model_store/ (squeezenet_saliency, and any built with
# scripts/build_mar.py --arch/--model-file), or the NAMEs given, each registered twice: NAME and
# NAME_sampled (README, "Cost isolation"), with the batching and workers its archive carries.
# If the TorchServe this script started is still running, it is stopped and started again (after
# the setup has rebuilt the archive), so that edits to handler/model-config.yaml take effect.
# The token keys are written to ./key_file.json, logs to ./logs (both in the repository root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
# Idle OpenMP threads sleep instead of spinning: the worker shares the cores with TorchServe's
# Java front end, and spinning threads stalled it several-fold under load (scripts/bench.py).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

config="${TS_CONFIG:-$ROOT/config.properties}"
pid_file="${TMPDIR:-/tmp}/.model_server.pid"
if [[ -f "$pid_file" ]]; then
  pid="$(cat "$pid_file")"
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "[serve] removing a stale pid file left by a crashed TorchServe: $pid_file"
    rm -f "$pid_file"
  else
    # Only a TorchServe JVM serving this checkout's model store is ours to restart (the store is
    # on its command line); anything else under this pid is left alone.
    command_line="$(ps -ww -p "$pid" -o args= 2>/dev/null || true)"
    if [[ "$command_line" == *org.pytorch.serve.ModelServer* ]]; then
      if [[ "$command_line" != *" -s $ROOT/model_store "* ]]; then
        echo "[serve] another TorchServe (pid $pid, not started from $ROOT) is running with" \
          "this TMPDIR; stop it first, or give this one its own TMPDIR." >&2
        exit 1
      fi
      # Rerunning serve.sh applies edits (model-config.yaml, config.properties): restart.
      echo "[serve] restarting the running TorchServe (pid $pid) with the rebuilt archive"
      bash "$ROOT/scripts/stop.sh"
    fi
  fi
fi

# NAME=NAME.mar NAME_sampled=NAME.mar for each archive; on the command line they replace the
# config's load_models (registering models over HTTP stays off).
read -r -a models <<<"$(python scripts/torchserve_ctl.py models --store "$ROOT/model_store" "$@")"
[[ ${#models[@]} -gt 0 ]] || exit 1

# The JVM keeps the output it inherits: send it to a file, not to this terminal or a pipe.
mkdir -p logs
torchserve --start --ncs --ts-config "$config" --model-store "$ROOT/model_store" \
  --models "${models[@]}" >logs/console.log 2>&1 || { cat logs/console.log >&2; exit 1; }
if ! python scripts/torchserve_ctl.py wait --config "$config" --workdir "$ROOT" \
  --models "${models[@]}"; then
  echo "[serve] TorchServe did not become ready; the end of logs/ts_log.log:" >&2
  tail -n 30 logs/ts_log.log >&2 || true
  exit 1
fi
inference="$(sed -nE 's/^inference_address=//p' "$config")"
first="${models[0]%%=*}"
echo
echo "Serving ${models[*]%%=*}"
echo "at $inference (token authorization on; keys in $ROOT/key_file.json);"
echo "expensive explanations are redirected to ${first}_sampled (README, \"Cost isolation\")."
cat <<'MSG'
  Try it:  .venv/bin/python scripts/client.py path/to/photo.jpg --out out/
  or:      KEY=$(python3 -c 'import json; print(json.load(open("key_file.json"))["inference"]["key"])')
           curl -H "Authorization: Bearer $KEY" -H "Content-Type: application/octet-stream" \
MSG
echo "                --data-binary @photo.jpg $inference/predictions/$first"
echo "  Stop:    scripts/stop.sh"
