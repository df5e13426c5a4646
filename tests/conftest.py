"""Tiers from where a test lives: tests/integration -> ``server``, tests/deploy -> ``deploy``,
tests/browser -> ``browser``; the rest (unit/, test_lint.py) is the fast tier that
``scripts/test.sh --fast`` runs."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = {"integration": "server", "deploy": "deploy", "browser": "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder in TIERS:
            item.add_marker(TIERS[folder])
