"""Benchmark the explanation methods: saliency_tools.bench.methods.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.bench.methods import main

if __name__ == "__main__":
    raise SystemExit(main())
