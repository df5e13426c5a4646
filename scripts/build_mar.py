"""Build model_store/'s archive (or another model's): saliency_tools.archive.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.archive import main

if __name__ == "__main__":
    raise SystemExit(main())
