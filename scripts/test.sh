#!/usr/bin/env bash
# Set up (with the test tools) and run the whole test suite: unit tests, then tests against a
# real TorchServe started from the built .mar. Extra arguments go to pytest.
#   --fast (first argument)  the unit tier only: no TorchServe, nginx or browser (under a minute)
#   -m "not faults"          everything but the served load/fault/restart tests
#   SQUEEZENET_WEIGHTS=/path/squeezenet1_1.pth  weights to use instead of downloading torchvision's
#   SALIENCY_TEST_IMAGES=/path/to/photos        extra labelled photos (kitten.jpg, dog2.jpg, ...)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ "${1:-}" == "--fast" ]]; then  # the unit tier: no TorchServe, nginx, browser or archive
  shift
  bash scripts/setup.sh --dev --no-archive
  set -- -m "not server and not deploy and not browser" "$@"
else
  bash scripts/setup.sh --dev
fi
exec "$ROOT/.venv/bin/python" -m pytest "$@"
