"""Send images to the service and save its answers: saliency_tools.client.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.client import main

if __name__ == "__main__":
    raise SystemExit(main())
