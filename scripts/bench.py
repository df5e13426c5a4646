"""Benchmark the service against the stock TorchServe paths: saliency_tools.bench.main.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.bench.main import main

if __name__ == "__main__":
    raise SystemExit(main())
