"""scripts/serve.sh and scripts/stop.sh themselves: a clean stop, and a start after a crash.

The scripts run from a scratch copy of the repository (their own TMPDIR for the pid file, own
ports, own key_file.json and logs), so that a developer's running server is never touched:
scripts/serve.sh, stop.sh and torchserve_ctl.py are copied, setup.sh is replaced by a no-op (the
.mar is already built) and .venv, model_store and handler are links to the real ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests
from photos import packaged_photos
from serving import post, wait_for

from saliency_tools import ROOT
from saliency_tools.config import KEY_FILE, read_keys
from saliency_tools.server import (
    ADDRESS_KEYS,
    free_port,
    pid_alive,
    with_absolute_paths,
    with_ports,
)

pytestmark = pytest.mark.faults  # the longest served tests: -m "not faults" skips them


class Checkout:
    """A scratch repository root in which scripts/serve.sh and stop.sh run for real."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "scripts").mkdir(parents=True)
        for name in ("serve.sh", "stop.sh", "torchserve_ctl.py"):
            shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
        (root / "scripts" / "setup.sh").write_text("#!/usr/bin/env bash\nexit 0\n")
        for name in (".venv", "model_store", "handler"):
            (root / name).symlink_to(ROOT / name)
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        names = (*ADDRESS_KEYS, "grpc_inference_port", "grpc_management_port")
        self.ports = {name: free_port() for name in names}
        text = with_ports((ROOT / "config.properties").read_text(), self.ports)
        self.config = root / "config.properties"
        self.config.write_text(with_absolute_paths(text, ROOT))

    @property
    def pid_file(self) -> Path:
        return self.tmp / ".model_server.pid"

    def run(self, script: str, timeout: float = 240) -> subprocess.CompletedProcess:
        environment = {
            key: value for key, value in os.environ.items() if key not in ("TS_CONFIG_FILE",)
        }
        environment.update(TMPDIR=str(self.tmp), TEMP=str(self.tmp), TS_CONFIG=str(self.config))
        for key in ("LOG_LOCATION", "METRICS_LOCATION"):  # logs go to the checkout's logs/
            environment.pop(key, None)
        return subprocess.run(
            ["bash", str(self.root / "scripts" / script)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def server_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.ports[f'{kind}_address']}"

    @property
    def keys(self) -> dict[str, str]:
        """The keys of the TorchServe that serve.sh started, as it wrote them."""
        return read_keys(self.root / KEY_FILE)

    def worker_pids(self) -> list[int]:
        return [
            child.pid
            for child in psutil.Process(self.server_pid()).children(recursive=True)
            if "model_service_worker" in " ".join(child.cmdline())
        ]

    def predict(self) -> requests.Response:
        return post(self, packaged_photos()["coffee"], headers={"Content-Type": "image/png"})

    def port_open(self, kind: str = "inference_address") -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.ports[kind])) == 0

    def kill_everything(self) -> None:
        """Last resort for a failed test: nothing it started may outlive it."""
        if self.pid_file.is_file():
            pid = self.server_pid()
            if pid_alive(pid) and "java" in psutil.Process(pid).name():
                for process in [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]:
                    process.kill()


@pytest.fixture
def checkout(tmp_path: Path):
    instance = Checkout(tmp_path / "checkout")
    try:
        yield instance
    finally:
        instance.kill_everything()


def test_stop_without_a_server_and_with_a_stale_pid_file(checkout) -> None:
    result = checkout.run("stop.sh")
    assert result.returncode == 0 and "not running" in result.stdout

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer exists, as a crashed server leaves behind
    checkout.pid_file.write_text(str(dead.pid))
    result = checkout.run("stop.sh")
    assert result.returncode == 0, result.stderr
    assert "stale pid file" in result.stdout
    assert not checkout.pid_file.exists()


def test_start_after_a_crash_then_a_clean_stop(checkout) -> None:
    # 1. A pid file naming a live process that is not TorchServe (the pid was reused after a
    #    crash): the start must neither refuse nor harm that process.
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        checkout.pid_file.write_text(str(bystander.pid))
        first = checkout.run("serve.sh")
        assert first.returncode == 0, first.stdout + first.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert checkout.predict().status_code == 200

    # 2. Crash: the JVM is killed outright; its workers follow it, the pid file stays behind.
    jvm = checkout.server_pid()
    workers = checkout.worker_pids()
    assert workers
    os.kill(jvm, signal.SIGKILL)
    crashed = [jvm, *workers]
    wait_for(lambda: not any(map(pid_alive, crashed)), timeout=30, what="JVM and workers to exit")
    assert checkout.pid_file.read_text().strip() == str(jvm)  # stale

    # 3. The second start cleans up after the crash and serves.
    second = checkout.run("serve.sh")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "stale pid file" in second.stdout
    assert checkout.server_pid() != jvm
    assert checkout.predict().status_code == 200

    # 3b. Running serve.sh again (after editing model-config.yaml, say) restarts the server it
    #     started instead of failing with "TorchServe is already running".
    jvm, workers = checkout.server_pid(), checkout.worker_pids()
    again = checkout.run("serve.sh")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"restarting the running TorchServe (pid {jvm})" in again.stdout
    assert not pid_alive(jvm)
    assert checkout.server_pid() != jvm
    assert checkout.predict().status_code == 200
    assert not any(pid_alive(p) for p in workers)
    # Its logs are files under logs/; the console (the JVM's stdout) gets nothing per request.
    console = checkout.root / "logs" / "console.log"
    size = console.stat().st_size
    assert checkout.predict().status_code == 200
    assert console.stat().st_size == size
    assert (checkout.root / "logs" / "access_log.log").stat().st_size > 0

    # 4. A clean stop: JVM and workers gone, pid file and keys removed, ports free.
    jvm, workers = checkout.server_pid(), checkout.worker_pids()
    start = time.monotonic()
    stop = checkout.run("stop.sh")
    seconds = time.monotonic() - start
    print(f"\n[shutdown] stop.sh took {seconds:.1f} s")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not pid_alive(jvm)
    wait_for(lambda: not any(map(pid_alive, workers)), timeout=15, what="workers to exit")
    assert not checkout.pid_file.exists()
    assert not (checkout.root / "key_file.json").exists()
    assert not checkout.port_open("inference_address")
    assert not checkout.port_open("management_address")


def test_a_torchserve_of_another_checkout_is_left_alone(checkout, tmp_path) -> None:
    """serve.sh restarts only the TorchServe serving its own model store."""
    other = subprocess.Popen(
        [
            *("python3", "-c", "import time; time.sleep(600)"),
            *("org.pytorch.serve.ModelServer", "-s", str(tmp_path / "elsewhere"), "-ncs"),
        ]
    )
    try:
        checkout.pid_file.write_text(str(other.pid))
        result = checkout.run("serve.sh")
        assert result.returncode != 0
        assert "another TorchServe" in result.stderr
        assert other.poll() is None
        assert checkout.pid_file.read_text().strip() == str(other.pid)
    finally:
        other.kill()
        other.wait()
