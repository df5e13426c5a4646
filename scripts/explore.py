"""Serve the explorer page with nginx (run scripts/explore.sh): saliency_tools.explore.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.explore import main

if __name__ == "__main__":
    raise SystemExit(main())
