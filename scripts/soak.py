"""Soak the served model with every method and bad input: saliency_tools.soak.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.soak import main

if __name__ == "__main__":
    raise SystemExit(main())
