#!/bin/sh
# The image's entry point: runs its command (CMD: torchserve --start --foreground ...) and turns
# SIGTERM/SIGINT (docker stop, Kubernetes) into `torchserve --stop --foreground`, which stops the
# JVM and its workers cleanly and waits for them. Without it, PID 1 would be torchserve's Python
# wrapper, which ignores SIGTERM, and the container would be killed at the end of the grace period.
#
# SALIENCY_CONFIG_OVERRIDES=/path/file.properties (e.g. from a Kubernetes ConfigMap): its lines are
# appended to the image's config into $TS_CONFIG_FILE (default $TMPDIR/ts-config.properties), which
# TorchServe then reads instead of --ts-config (the last occurrence of a key wins).
set -eu

if [ -n "${SALIENCY_CONFIG_OVERRIDES:-}" ]; then
    base="${SALIENCY_BASE_CONFIG:-/opt/saliency/config.properties}"
    TS_CONFIG_FILE="${TS_CONFIG_FILE:-${TMPDIR:-/tmp}/ts-config.properties}"
    { cat "$base"; echo; cat "$SALIENCY_CONFIG_OVERRIDES"; } >"$TS_CONFIG_FILE"
    export TS_CONFIG_FILE
    echo "[entrypoint] TorchServe config: $base + $SALIENCY_CONFIG_OVERRIDES -> $TS_CONFIG_FILE"
fi

[ "$#" -gt 0 ] || set -- torchserve --start --foreground --ncs

"$@" &
child=$!

stopping=0
stop() {
    stopping=1
    echo "[entrypoint] stopping TorchServe"
    torchserve --stop --foreground || kill -TERM "$child" 2>/dev/null || true
}
trap stop TERM INT

status=0
wait "$child" || status=$?
# A trapped signal ends `wait` early: wait again until the command has really exited.
while kill -0 "$child" 2>/dev/null; do
    wait "$child" || status=$?
done
# The JVM ends with 143 (SIGTERM) when asked to stop: that is a clean stop.
if [ "$stopping" = 1 ] && [ "$status" = 143 ]; then
    status=0
fi
echo "[entrypoint] exit status $status"
exit "$status"
