#!/usr/bin/env bash
# Set up (with the test tools) and run the whole test suite: unit tests, then tests against a
# real TorchServe started from the built .mar. Extra arguments go to pytest.
#   --fast (first argument)  the unit tier only, on 2 processes (SALIENCY_TEST_WORKERS): no
#                            TorchServe, nginx or browser (under a minute on 2 cores)
#   -m "not faults"          everything but the served load/fault/restart tests
#   SQUEEZENET_WEIGHTS=/path/squeezenet1_1.pth  weights to use instead of downloading torchvision's
#   SALIENCY_TEST_IMAGES=/path/to/photos        extra labelled photos (kitten.jpg, dog2.jpg, ...)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ "${1:-}" == "--fast" ]]; then  # the unit tier: no TorchServe, nginx, browser or archive
  shift
  bash scripts/setup.sh --dev --no-archive
  # Two processes: the unit tests run one intra-op thread each (tests/unit/conftest.py). The
  # served tiers stay in one process: they share one TorchServe.
  set -- -m "not server and not deploy and not browser" -n "${SALIENCY_TEST_WORKERS:-2}" "$@"
else
  bash scripts/setup.sh --dev
fi
exec "$ROOT/.venv/bin/python" -m pytest "$@"
