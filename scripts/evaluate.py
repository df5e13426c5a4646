"""Faithfulness report of every method: saliency_tools.evaluate (cli, experiment, report, charts).

Options: ``--help``. The tooling package is installed into .venv by scripts/setup.sh.
"""

from saliency_tools.evaluate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
