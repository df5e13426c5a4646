"""The image's runtime scripts against a real TorchServe, without Docker.

deploy/docker/entrypoint.sh starts TorchServe the way the image does (CMD, the container's
log4j2.xml, the image config + a Kubernetes-style overrides file), deploy/docker/healthcheck.py
probes it with token authorization on and keys that expire within seconds, and SIGTERM (docker
stop, Kubernetes) must stop the JVM and its worker cleanly. Only ports and /opt/saliency paths
differ from the image.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from photos import packaged_photos
from serving import ServerAt, post, wait_for

from saliency_tools import MAR, MODEL_NAME, ROOT
from saliency_tools.config import KEY_FILE, read_keys
from saliency_tools.server import describe_model, free_port, pid_alive

DOCKER = ROOT / "deploy" / "docker"
PORT_KEYS = ("inference_address", "management_address", "metrics_address")


def healthcheck(check: str, config: Path, key_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *(sys.executable, str(DOCKER / "healthcheck.py"), check, "--config", str(config)),
            *("--key-file", str(key_file), "--timeout", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def image_config(ports: dict[str, int]) -> str:
    """What the Dockerfile builds (config.properties + container.properties), made local."""
    text = (ROOT / "config.properties").read_text() + "\n"
    text += (DOCKER / "container.properties").read_text()
    for key in PORT_KEYS:
        text = re.sub(rf"(?m)^({key}=https?://[^:\s]+):\d+", rf"\g<1>:{ports[key]}", text)
    for key in ("grpc_inference_port", "grpc_management_port"):
        text = re.sub(rf"(?m)^{key}=\d+", f"{key}={ports[key]}", text)
    text = text.replace("/opt/saliency/metrics.yaml", str(ROOT / "handler" / "metrics.yaml"))
    return text.replace("/opt/saliency/model-store", str(MAR.parent))


def test_entrypoint_serves_with_overrides_probes_and_stops_on_sigterm(tmp_path: Path) -> None:
    if not MAR.is_file():
        pytest.fail(f"{MAR} is missing: run scripts/setup.sh first")
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    ports = {
        key: free_port() for key in (*PORT_KEYS, "grpc_inference_port", "grpc_management_port")
    }
    base = tmp_path / "image-config.properties"
    base.write_text(image_config(ports))
    # As deploy/k8s/configmap.yaml does: move inference to loopback (here: another port), and
    # let the keys expire after 6 s, so that the probes meet expired keys.
    inference_port = free_port()
    overrides = tmp_path / "overrides.properties"
    overrides.write_text(
        f"inference_address=http://127.0.0.1:{inference_port}\ntoken_expiration_min=0.1\n"
    )
    merged = tmp / "ts-config.properties"
    key_file = home / "key_file.json"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "SALIENCY_BASE_CONFIG": str(base),
        "SALIENCY_CONFIG_OVERRIDES": str(overrides),
        "TS_CONFIG_FILE": str(merged),
    }
    command = [
        str(DOCKER / "entrypoint.sh"),
        *("torchserve", "--start", "--foreground", "--ncs", "--ts-config", str(base)),
        *("--model-store", str(MAR.parent), "--log-config", str(DOCKER / "log4j2.xml")),
    ]
    output = tmp_path / "stdout.log"
    with output.open("w") as log:
        process = subprocess.Popen(
            command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    jvm = worker = None
    try:
        # Ready: a worker is READY. By then the 6-second keys have expired: the probe renews
        # the management key with the API key and goes on.
        try:
            ready = wait_for(
                lambda: (r := healthcheck("ready", merged, key_file)).returncode == 0 and r,
                timeout=180,
                interval=0.5,
            )
        except TimeoutError:
            pytest.fail(f"not ready after 180 s; output: {output.read_text()[-3000:]}")
        assert "READY" in ready.stdout
        jvm = int((tmp / ".model_server.pid").read_text())
        time.sleep(6.5)  # every key generated at start has now expired
        assert healthcheck("ready", merged, key_file).returncode == 0
        live = healthcheck("live", merged, key_file)
        assert live.returncode == 0, live.stdout
        assert "refused an expired" in live.stdout, live.stdout

        # The overrides won: inference answers on the overridden port only.
        keys = read_keys(home / KEY_FILE)
        management = f"http://127.0.0.1:{ports['management_address']}"
        renewed = requests.get(
            f"{management}/token?type=inference",
            headers={"Authorization": f"Bearer {keys['api']}"},
            timeout=10,
        )
        assert renewed.status_code == 200, renewed.text
        keys = read_keys(home / KEY_FILE)
        worker = int(describe_model(management, keys["management"])["workers"][0]["pid"])
        served = ServerAt({"inference": f"http://127.0.0.1:{inference_port}"}, keys)
        response = post(served, packaged_photos()["coffee"])
        assert response.status_code == 200, response.text
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{ports['inference_address']}/ping", timeout=5)

        # With the container's log4j2.xml: metrics still reach the Prometheus endpoint, and the
        # logs go to standard output, not to files.
        metrics_url = f"http://127.0.0.1:{ports['metrics_address']}/metrics"
        wait_for(
            lambda: "saliency_batch_size_count{" in requests.get(metrics_url, timeout=5).text,
            timeout=15,
            interval=0.5,
            what="the handler's metrics",
        )
        assert not list(home.rglob("*.log")), list(home.rglob("*"))
        assert f"{MODEL_NAME} ready on" in output.read_text()

        # SIGTERM: a clean stop of the JVM and the worker, exit status 0.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, output.read_text()[-3000:]
        assert "[entrypoint] stopping TorchServe" in output.read_text()
        assert not pid_alive(jvm) and not pid_alive(worker)
        assert healthcheck("ready", merged, key_file).returncode == 1
        assert healthcheck("live", merged, key_file).returncode == 1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for pid in (jvm, worker):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
