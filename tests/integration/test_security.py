"""Hardened defaults, shown against the real server started from the production config.

Token authorization on every inference and management call, no model registration over HTTP,
every port bound to loopback, keys that live a week, and key rotation with the API key (on a
server of its own whose keys expire within seconds and whose environment asks TorchServe to
switch the protections off). The request size limit is shown in test_bad_input.py.
"""

from __future__ import annotations

import ipaddress
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
import requests
from photos import packaged_photos
from serving import post, wait_for

from saliency_tools import MODEL_NAME, ROOT
from saliency_tools import server as torchserve_ctl
from saliency_tools.config import KEY_FILE, read_keys
from saliency_tools.server import Server

GOOD = packaged_photos()["coffee"]
REFUSED = 400  # TorchServe answers a missing or wrong token with 400 InvalidKeyException


def refused(response: requests.Response) -> bool:
    return response.status_code == REFUSED and "InvalidKeyException" in response.text


def management(server: Server, method: str, path: str, token: str | None, **kwargs):
    headers = {"Authorization": f"Bearer {server.keys.get(token, token)}"} if token else {}
    url = f"{server.url('management')}{path}"
    return requests.request(method, url, headers=headers, timeout=30, **kwargs)


# --- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["predictions", "explanations"])
@pytest.mark.parametrize("token", [None, "not-the-key", "management", "api"])
def test_inference_needs_the_inference_key(server, endpoint, token) -> None:
    assert refused(post(server, GOOD, endpoint=endpoint, token=token))


def test_ping_needs_the_inference_key(server) -> None:
    url = f"{server.url('inference')}/ping"
    assert refused(requests.get(url, timeout=30))
    key = server.keys["inference"]
    assert requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30).ok


@pytest.mark.parametrize("token", [None, "not-the-key", "inference", "api"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models"),
        ("GET", f"/models/{MODEL_NAME}"),
        ("PUT", f"/models/{MODEL_NAME}?min_worker=4&max_worker=4"),
        ("DELETE", f"/models/{MODEL_NAME}"),
    ],
)
def test_management_needs_the_management_key(server, token, method, path) -> None:
    assert refused(management(server, method, path, token))


def test_the_management_key_works(server) -> None:
    response = management(server, "GET", f"/models/{MODEL_NAME}", "management")
    assert response.status_code == 200 and response.json()[0]["modelName"] == MODEL_NAME


@pytest.mark.parametrize("token", [None, "management", "api"])
def test_model_registration_is_off(server, token) -> None:
    """POST /models (load a .mar from a path or URL: arbitrary code) stays disabled."""
    response = management(server, "POST", f"/models?url={MODEL_NAME}.mar", token)
    assert response.status_code in (REFUSED, 405), response.text
    if token == "management":
        assert response.status_code == 405  # disabled, even with the right key


def test_unregistering_the_model_is_off(server) -> None:
    response = management(server, "DELETE", f"/models/{MODEL_NAME}", "management")
    assert response.status_code == 405, response.text
    assert post(server, GOOD).status_code == 200


def test_new_keys_need_the_api_key(server) -> None:
    for token in (None, "not-the-key", "inference", "management"):
        assert refused(management(server, "GET", "/token?type=inference", token))


# --- network exposure --------------------------------------------------------------------------


def test_every_port_is_bound_to_loopback_only(server) -> None:
    listening = [
        connection.laddr
        for connection in psutil.Process(server.pid).net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    expected = {
        server.ports[name]
        for name in (
            "inference_address",
            "management_address",
            "metrics_address",
            "grpc_inference_port",
            "grpc_management_port",
        )
    }
    assert {address.port for address in listening} >= expected
    for address in listening:  # Java reports IPv4 loopback as "::ffff:127.0.0.1"
        ip = ipaddress.ip_address(address.ip)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        assert ip == ipaddress.ip_address("127.0.0.1"), listening


def test_metrics_answer_without_a_token_on_loopback(server) -> None:
    response = requests.get(f"{server.url('metrics')}/metrics", timeout=30)
    assert response.status_code == 200


# --- keys ---------------------------------------------------------------------------------------


def test_keys_live_a_week(server) -> None:
    """Not TorchServe's 60 minutes, which would cut every client off hourly; rotation before
    the week is up is shown below and documented in docs/errors-and-hardening.md."""
    key_file = server.workdir / KEY_FILE
    written = datetime.fromtimestamp(key_file.stat().st_mtime, UTC)
    for kind in ("inference", "management"):
        lifetime = _expiry(server.workdir, kind) - written
        assert abs(lifetime - timedelta(days=7)) < timedelta(minutes=5), (kind, lifetime)


def test_key_file_is_private(server) -> None:
    mode = (server.workdir / "key_file.json").stat().st_mode & 0o777
    assert mode == 0o600, oct(mode)


# --- expiry and rotation -----------------------------------------------------------------------


def _front_end_up(workdir: Path, management_url: str, pid_file: Path, timeout: float, *_) -> None:
    """Stands in for wait_ready: the keys expire before a worker is ready, and no worker is
    needed to check tokens (the front end checks them before any model is involved)."""
    wait_for(lambda: (workdir / "key_file.json").is_file(), timeout)
    wait_for(lambda: requests.get(f"{management_url}/models", timeout=5).status_code, timeout)


def _expiry(workdir: Path, kind: str) -> datetime:
    text = json.loads((workdir / "key_file.json").read_text())[kind]["expiration time"]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_expired_keys_are_refused_and_the_api_key_issues_new_ones(tmp_path, monkeypatch) -> None:
    """The environment cannot switch the protections off either: TorchServe would read these
    variables only with enable_envvars_config=true, which the production config leaves out."""
    monkeypatch.setattr(torchserve_ctl, "wait_ready", _front_end_up)
    server = Server(
        workdir=tmp_path / "ts",
        model_store=ROOT / "model_store",
        extra_config="token_expiration_min=0.1",  # 6 seconds
        env={"TS_DISABLE_TOKEN_AUTHORIZATION": "true", "TS_ENABLE_MODEL_API": "true"},
    )
    server.start()
    try:
        old = dict(server.keys)
        expires = max(_expiry(server.workdir, "inference"), _expiry(server.workdir, "management"))
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1)
        assert refused(management(server, "GET", "/models", "management"))
        assert refused(
            requests.get(
                f"{server.url('inference')}/ping", headers=_bearer(old["inference"]), timeout=30
            )
        )

        for kind in ("management", "inference"):
            rotated = management(server, "GET", f"/token?type={kind}", "api")
            assert rotated.status_code == 200, rotated.text
        new = read_keys(server.workdir / KEY_FILE)
        assert new["management"] != old["management"] and new["inference"] != old["inference"]
        assert new["api"] == old["api"]  # the API key itself does not expire
        assert _expiry(server.workdir, "inference") > expires

        server.keys = new
        assert management(server, "GET", "/models", "management").status_code == 200
        assert refused(management(server, "GET", "/models", None))
        registration = management(server, "POST", "/models?url=x.mar", "management")
        assert registration.status_code == 405, registration.text
        ping = requests.get(
            f"{server.url('inference')}/ping", headers=_bearer(new["inference"]), timeout=30
        )
        assert not refused(ping)
        assert refused(
            requests.get(
                f"{server.url('inference')}/ping", headers=_bearer(old["inference"]), timeout=30
            )
        )
    finally:
        server.stop()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
