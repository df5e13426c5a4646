"""The service core's maps and speed on a GPU: saliency_tools.gpu_check.

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.gpu_check import main

if __name__ == "__main__":
    raise SystemExit(main())
