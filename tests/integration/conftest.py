"""The archive's own weights and a thin client of the session's TorchServe (tests/conftest.py)."""

from __future__ import annotations

import json
import zipfile

import pytest
import requests
import torch

from saliency_service.model import build_model
from saliency_tools import MODEL_NAME, ROOT
from saliency_tools.server import Server

MAR = ROOT / "model_store" / f"{MODEL_NAME}.mar"


@pytest.fixture(scope="session")
def served_model() -> torch.nn.Module:
    """The very weights inside the archive, loaded independently of the handler's code path."""
    with zipfile.ZipFile(MAR) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        with archive.open(manifest["model"]["serializedFile"]) as file:
            state = torch.load(file, map_location="cpu", weights_only=True)
    return build_model(state)


class Api:
    """Thin requests wrapper that sends the inference token."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.session = requests.Session()

    def post(
        self,
        body: bytes | None = None,
        *,
        endpoint: str = "predictions",
        json_body: dict | None = None,
        files: dict | None = None,
        data: dict | None = None,
        headers: dict | None = None,
        token: str | None = "inference",
        model: str = MODEL_NAME,
        allow_redirects: bool = True,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {self.server.keys.get(token, token)}"
        if body is not None and "Content-Type" not in all_headers:
            all_headers["Content-Type"] = "application/octet-stream"
        url = f"{self.server.url('inference')}/{endpoint}/{model}"
        return requests.post(
            url,
            data=body if body is not None else data,
            json=json_body,
            files=files,
            headers=all_headers,
            timeout=120,
            allow_redirects=allow_redirects,  # requests resends a 307 with body and token
        )


@pytest.fixture(scope="session")
def api(server: Server) -> Api:
    return Api(server)
