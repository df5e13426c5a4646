"""Tiers from where a test lives: tests/integration -> ``server``, tests/deploy -> ``deploy``,
tests/browser -> ``browser``; the rest (unit/, test_lint.py) is the fast tier that
``scripts/test.sh --fast`` runs. And the one real TorchServe that the integration and browser
tests share: from the built .mar, with the production config, once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from saliency_tools import MAR
from saliency_tools.archive import stale_files
from saliency_tools.server import Server

TESTS = Path(__file__).resolve().parent
TIERS = {"integration": "server", "deploy": "deploy", "browser": "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder in TIERS:
            item.add_marker(TIERS[folder])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not MAR.is_file():
        pytest.fail(f"{MAR} is missing: run scripts/test.sh (or scripts/build_mar.py) first")
    stale = stale_files(MAR)
    if stale:  # tests of an old archive would pass or fail for the wrong code
        pytest.fail(f"{MAR} is older than handler/ ({', '.join(stale)}): run scripts/build_mar.py")
    instance = Server(workdir=tmp_path_factory.mktemp("torchserve"), model_store=MAR.parent)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
