"""Wait for a started TorchServe, list the models to serve: saliency_tools.server.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.server import main

if __name__ == "__main__":
    raise SystemExit(main())
