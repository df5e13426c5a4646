"""A lone cheap request among expensive ones: saliency_tools.load_isolation.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.load_isolation import main

if __name__ == "__main__":
    raise SystemExit(main())
