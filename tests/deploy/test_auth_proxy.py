"""The pods' auth proxy (deploy/k8s/configmap.yaml: nginx.conf + nginx-start.sh), run for real.

nginx-start.sh renders the API keys from a directory (the Secret's files) and starts nginx in
front of a stand-in for TorchServe. Only ports and /tmp paths are changed for the test.
Needs an nginx binary ($NGINX_BIN or nginx on PATH; Debian: apt-get install nginx-light);
skipped without one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml
from serving import wait_for

from saliency_tools import MODEL_NAME, ROOT, SAMPLED_MODEL_NAME
from saliency_tools.server import free_port

NGINX = os.environ.get("NGINX_BIN") or shutil.which("nginx")
pytestmark = pytest.mark.skipif(not NGINX, reason="no nginx binary (set NGINX_BIN)")

KEYS = {"key-a": "a" * 32, "key-b": "B0-._~+/=" * 22}  # 32 and 198 characters
PROXIED = f"/predictions/{MODEL_NAME}"  # the nginx rules name the model's paths


class Upstream(BaseHTTPRequestHandler):
    """Stands in for TorchServe: answers what it received."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = json.dumps(
            {
                "path": self.path,
                "method": self.command,
                "authorization": self.headers.get("Authorization"),
                "bytes": len(body),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def rendered(tmp: Path, listen: int, upstream: int) -> tuple[Path, Path]:
    """nginx.conf and nginx-start.sh from the ConfigMap, with test ports and paths."""
    data = yaml.safe_load((ROOT / "deploy/k8s/configmap.yaml").read_text())["data"]
    conf, script = data["nginx.conf"], data["nginx-start.sh"]
    for expected in ("listen 8080;", "server 127.0.0.1:8085;"):
        assert expected in conf, expected
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    conf = conf.replace("server 127.0.0.1:8085;", f"server 127.0.0.1:{upstream};")
    conf = conf.replace("/tmp/", f"{tmp}/")
    if os.geteuid() == 0:  # nginx's workers would drop to "nobody", who cannot enter tmp_path
        conf = "user root;\n" + conf
    script = script.replace("/tmp/", f"{tmp}/")
    script = script.replace("/etc/saliency/nginx/nginx.conf", str(tmp / "nginx.conf"))
    script = script.replace("exec nginx ", f"exec {NGINX} -e stderr -p {tmp}/ ")
    (tmp / "nginx.conf").write_text(conf)
    (tmp / "nginx-start.sh").write_text(script)
    return tmp / "nginx.conf", tmp / "nginx-start.sh"


def start(tmp: Path, keys: dict[str, str], listen: int, upstream: int) -> subprocess.Popen:
    keys_dir = tmp / "api-keys"
    keys_dir.mkdir(exist_ok=True)
    for name, key in keys.items():
        (keys_dir / name).write_text(key)
    _, script = rendered(tmp, listen, upstream)
    return subprocess.Popen(
        ["/bin/sh", str(script)],
        env={**os.environ, "API_KEYS_DIR": str(keys_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    listen = free_port()
    process = start(tmp_path_factory.mktemp("nginx"), KEYS, listen, upstream.server_port)
    url = f"http://127.0.0.1:{listen}"

    def serving() -> bool:
        if process.poll() is not None:
            pytest.fail(f"nginx did not start: {process.communicate()[0]}")
        return requests.get(f"{url}/healthz", timeout=1).ok

    try:
        wait_for(serving, timeout=20, interval=0.1, what="nginx")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        upstream.shutdown()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"}


def test_health_endpoint_needs_no_key(proxy: str) -> None:
    response = requests.get(f"{proxy}/healthz", timeout=5)
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("a" * 31), bearer("wrong" * 8), {"Authorization": "a" * 40}, bearer("")],
    ids=["none", "prefix", "wrong", "no-bearer", "empty"],
)
def test_predictions_without_a_valid_key_are_refused(proxy: str, headers: dict) -> None:
    response = requests.post(f"{proxy}{PROXIED}", data=b"img", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize(
    "path",
    [
        PROXIED,
        f"/explanations/{MODEL_NAME}",
        PROXIED + "/1.0",
        f"/predictions/{SAMPLED_MODEL_NAME}",
    ],
)
def test_every_key_from_the_secret_is_accepted_and_not_forwarded(
    proxy: str, key: str, path: str
) -> None:
    response = requests.post(f"{proxy}{path}", data=b"x" * 1000, headers=bearer(key), timeout=5)
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["path"] == path and seen["method"] == "POST" and seen["bytes"] == 1000
    assert not seen["authorization"]  # the client's key never reaches TorchServe


def test_ping_is_proxied_and_nothing_else_is(proxy: str) -> None:
    assert requests.get(f"{proxy}/ping", timeout=5).json()["path"] == "/ping"
    key = next(iter(KEYS.values()))
    for path in ("/models", f"/models/{MODEL_NAME}", "/predictions/other", "/metrics"):
        response = requests.get(f"{proxy}{path}", headers=bearer(key), timeout=5)
        assert response.status_code == 404, path


def test_request_size_limit_matches_torchserve(proxy: str) -> None:
    key = next(iter(KEYS.values()))
    too_big = b"x" * (12 * 1024 * 1024 + 1)
    response = requests.post(f"{proxy}{PROXIED}", data=too_big, headers=bearer(key), timeout=30)
    assert response.status_code == 413
    fits = b"x" * (11 * 1024 * 1024)
    response = requests.post(f"{proxy}{PROXIED}", data=fits, headers=bearer(key), timeout=30)
    assert response.status_code == 200 and response.json()["bytes"] == len(fits)


@pytest.mark.parametrize(
    "keys",
    [
        {},
        {"short": "x" * 31},
        {"long": "x" * 201},
        {"quote": "a" * 40 + '" 1; default 1; "'},
        {"space": "a b" * 20},
        {"good": "g" * 40, "bad": "x" * 31},
    ],
    ids=["no-key", "short", "long", "injection", "space", "one-bad-of-two"],
)
def test_start_refuses_missing_or_unsafe_keys(tmp_path: Path, keys: dict[str, str]) -> None:
    process = start(tmp_path, keys, free_port(), free_port())
    output, _ = process.communicate(timeout=20)
    assert process.returncode != 0, output
    assert "nginx-start:" in output
