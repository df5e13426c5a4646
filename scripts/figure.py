"""Figures of photos and their maps from the running service: saliency_tools.figure.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.figure import main

if __name__ == "__main__":
    raise SystemExit(main())
