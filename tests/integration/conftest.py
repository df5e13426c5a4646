"""The archive's own weights and the ``api`` of the session's TorchServe (tests/conftest.py)."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from serving import Api

from saliency_service.model import build_model
from saliency_tools import MAR
from saliency_tools.server import Server


@pytest.fixture(scope="session")
def served_model() -> torch.nn.Module:
    """The very weights inside the archive, loaded independently of the handler's code path."""
    with zipfile.ZipFile(MAR) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        with archive.open(manifest["model"]["serializedFile"]) as file:
            state = torch.load(file, map_location="cpu", weights_only=True)
    return build_model(state)


@pytest.fixture(scope="session")
def api(server: Server) -> Api:
    return Api(server)
