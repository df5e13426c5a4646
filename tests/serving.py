"""The tests' one way to send a request to a served model, and their one way to wait.

Tests need raw control over what they send (bodies, headers, tokens, redirects, multipart), so
``post`` is a thin layer over requests, not the client library (``saliency_tools.client``). The
server is a ``saliency_tools.server.Server``, or anything else that says where it listens and
holds its keys (``ServerAt``: a TorchServe the image's entrypoint or scripts/serve.sh started).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import requests

from saliency_tools import MODEL_NAME


class Served(Protocol):
    """A running TorchServe as a request sees it: base URLs by API kind, and its keys."""

    @property
    def keys(self) -> dict[str, str]: ...

    def url(self, kind: str) -> str: ...


@dataclass
class ServerAt:
    """A TorchServe started by other means than ``Server``."""

    urls: dict[str, str]  # "inference", "management" -> base URL
    keys: dict[str, str]

    def url(self, kind: str) -> str:
        return self.urls[kind]


def post(
    server: Served,
    body: bytes | None = None,
    *,
    endpoint: str = "predictions",
    model: str = MODEL_NAME,
    json_body: dict | None = None,
    files: dict | None = None,
    data: dict | None = None,
    headers: dict | None = None,
    params: dict | None = None,
    token: str | None = "inference",
    session: requests.Session | None = None,
    timeout: float = 120,
    allow_redirects: bool = True,
) -> requests.Response:
    """One request to ``/{endpoint}/{model}``, sent as given.

    ``token`` names one of the server's keys, or is sent as it is; None sends no Authorization.
    A raw ``body`` goes as application/octet-stream unless ``headers`` say otherwise. Redirects
    are followed unless told not to: requests resends a 307 with its body and token.
    """
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {server.keys.get(token, token)}"
    if body is not None:
        all_headers.setdefault("Content-Type", "application/octet-stream")
    return (session or requests).post(
        f"{server.url('inference')}/{endpoint}/{model}",
        data=body if body is not None else data,
        json=json_body,
        files=files,
        headers=all_headers,
        params=params,
        timeout=timeout,
        allow_redirects=allow_redirects,
    )


class Api:
    """``post`` bound to one server: the integration tests' ``api`` fixture."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self.session = requests.Session()  # for a test's own requests; ``post`` opens its own

    def post(self, body: bytes | None = None, **options: Any) -> requests.Response:
        return post(self.server, body, **options)

    def answer(self, image: bytes, **options: Any) -> dict:
        """The answer to ``image`` sent in a JSON document with ``options``; it must be a 200."""
        response = self.post(json_body={"image": base64.b64encode(image).decode(), **options})
        assert response.status_code == 200, response.text
        return response.json()


def wait_for(
    condition: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "a condition"
) -> Any:
    """The first true value of ``condition()``, called every ``interval`` seconds.

    A call that fails as a server not yet (or no longer) there makes it fail (refused connection,
    half-written file, missing entry) counts as false. Raises TimeoutError after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (OSError, ValueError, KeyError, IndexError, requests.RequestException):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
