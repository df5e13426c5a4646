"""Start TorchServe in an isolated directory, wait until the model can answer, and stop it.

Used by scripts/serve.sh (``wait``), the integration tests and the benchmarks. TorchServe keeps
machine-global state (a pid file in $TMPDIR, worker sockets under java.io.tmpdir, logs in ./logs,
key_file.json in the working directory); a ``Server`` gives each of those its own place.

    python scripts/torchserve_ctl.py wait [--workdir .] [--config config.properties] [--timeout 180]
        [--models NAME=FILE.mar ...]
    python scripts/torchserve_ctl.py models [--store model_store] [NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from saliency_tools import MODEL_NAME, ROOT
from saliency_tools.config import KEY_FILE, parse_properties, read_keys, read_properties

# The same archive registered a second time for expensive explanations (config.properties).
ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def registered_models(properties: dict[str, str]) -> list[str]:
    """The model names of ``load_models=name=file.mar,...`` (the production config has two)."""
    entries = [e.strip() for e in properties.get("load_models", "").split(",") if e.strip()]
    names = [entry.split("=", 1)[0] for entry in entries if "=" in entry]
    return names or [MODEL_NAME]


def store_models(store: Path, names: list[str] | None = None) -> list[str]:
    """``NAME=NAME.mar`` registrations of every archive in ``store`` (or of ``names``), each
    followed by its sampled registration (``NAME_sampled=NAME.mar``, as its model-config.yaml's
    ``sampled_model`` names it): what ``torchserve --models`` takes.

    Raises
    ------
    FileNotFoundError
        A named archive is not in ``store``, or the store holds none.
    """
    archives = [store / f"{name}.mar" for name in names] if names else sorted(store.glob("*.mar"))
    missing = [path.name for path in archives if not path.is_file()]
    if missing or not archives:
        raise FileNotFoundError(f"no {', '.join(missing) or '.mar files'} in {store}")
    # The default archive first: its registration is the one serve.sh's hints name.
    archives.sort(key=lambda path: path.stem != MODEL_NAME)
    entries = []
    for path in archives:
        entries.append(f"{path.stem}={path.name}")
        with zipfile.ZipFile(path) as archive:
            config = archive.read("model-config.yaml").decode(errors="replace")
        sampled = re.search(r"(?m)^\s*sampled_model:[ \t]*[\"']?([A-Za-z0-9_-]+)", config)
        if sampled:
            entries.append(f"{sampled.group(1)}={path.name}")
    return entries


def with_ports(config_text: str, ports: dict[str, int]) -> str:
    """The production config with its HTTP and gRPC ports moved (addresses stay loopback)."""
    for key, port in ports.items():
        if key.endswith("_address"):
            pattern, replacement = rf"(?m)^{key}=(https?://[^:\s]+):\d+", rf"{key}=\g<1>:{port}"
        else:
            pattern, replacement = rf"(?m)^{key}=\d+", f"{key}={port}"
        config_text, count = re.subn(pattern, replacement, config_text)
        if count != 1:
            raise ValueError(f"config has no single {key} line to move")
    return config_text


def with_absolute_paths(config_text: str, base_dir: Path, keys=("metrics_config",)) -> str:
    """Relative file paths in the config made absolute against ``base_dir``.

    TorchServe resolves them against its working directory, which for a Server is a temp dir.
    """
    for key in keys:
        match = re.search(rf"(?m)^{key}=(.+)$", config_text)
        if match and not Path(match.group(1).strip()).is_absolute():
            absolute = (base_dir / match.group(1).strip()).resolve()
            config_text = config_text.replace(match.group(0), f"{key}={absolute}", 1)
    # The JVM's log4j2 configuration, inside vmargs: resolved against the working directory too.
    option = re.search(r"(?m)^vmargs=.*?-Dlog4j\.configurationFile=(\S+)", config_text)
    if (
        option
        and not option.group(1).startswith("file:")
        and not Path(option.group(1)).is_absolute()
    ):
        absolute = (base_dir / option.group(1)).resolve()
        config_text = config_text[: option.start(1)] + str(absolute) + config_text[option.end(1) :]
    return config_text


def log4j_config(config_text: str, base_dir: Path) -> Path | None:
    """The log4j2 file that a config's vmargs give the JVM, relative paths against ``base_dir``."""
    option = re.search(r"(?m)^vmargs=.*?-Dlog4j\.configurationFile=(\S+)", config_text)
    if not option:
        return None
    path = Path(option.group(1).removeprefix("file://"))
    return path if path.is_absolute() else base_dir / path


def http_json(url: str, key: str | None = None, timeout: float = 5.0):
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def describe_model(management_url: str, key: str, model: str = MODEL_NAME) -> dict:
    """The management API's description of ``model``: its workers (status, pid), job queue and
    batch settings. The one place that asks it (``Server.describe`` for a running ``Server``)."""
    return http_json(f"{management_url}/models/{model}", key)[0]


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_ready(
    workdir: Path, management_url: str, pid_file: Path, timeout: float, model: str = MODEL_NAME
) -> dict:
    """Block until a worker of ``model`` is READY; fail early if the JVM died."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while True:
        pid = int(pid_file.read_text().strip()) if pid_file.is_file() else None
        if pid is not None and not pid_alive(pid):
            raise RuntimeError(f"TorchServe (pid {pid}) exited during start-up; see its logs")
        try:
            described = describe_model(
                management_url, read_keys(workdir / KEY_FILE)["management"], model
            )
            workers = described.get("workers", [])
            if any(w.get("status") == "READY" for w in workers):
                return described
            last_error = f"workers: {[w.get('status') for w in workers]}"
        except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
            last_error = str(exc)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    raise TimeoutError(f"{model} not ready after {timeout:.0f} s ({last_error})")


@dataclass
class Server:
    """A TorchServe of its own: own working dir, TMPDIR/TEMP, logs, ports and keys."""

    workdir: Path
    model_store: Path
    base_config: Path = ROOT / "config.properties"
    ports: dict[str, int] = field(default_factory=dict)
    extra_config: str = ""
    env: dict[str, str] = field(default_factory=dict)
    # ``torchserve --models`` registrations (``store_models``), as scripts/serve.sh passes them:
    # they replace the config's load_models.
    models_arg: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.model_store = self.model_store.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmp = self.workdir / "tmp"
        self.tmp.mkdir(exist_ok=True)
        if not self.ports:
            names = (*ADDRESS_KEYS, "grpc_inference_port", "grpc_management_port")
            self.ports = {name: free_port() for name in names}
        self.config = self.workdir / "config.properties"
        text = with_ports(self.base_config.read_text(), self.ports)
        text = with_absolute_paths(text, self.base_config.resolve().parent)
        self.config.write_text(text + ("\n" + self.extra_config if self.extra_config else ""))
        self.keys: dict[str, str] = {}
        self.models = registered_models(parse_properties(text + "\n" + self.extra_config))
        if self.models_arg:
            self.models = [entry.split("=", 1)[0] for entry in self.models_arg]

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.ports[f'{kind}_address']}"

    def grpc_address(self, kind: str = "inference") -> str:
        """host:port of the gRPC inference or management API (a grpc channel's target)."""
        return f"127.0.0.1:{self.ports[f'grpc_{kind}_port']}"

    @property
    def pid_file(self) -> Path:
        return self.tmp / ".model_server.pid"

    @property
    def pid(self) -> int | None:
        return int(self.pid_file.read_text()) if self.pid_file.is_file() else None

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        environment.update(
            TMPDIR=str(self.tmp),
            TEMP=str(self.tmp),
            LOG_LOCATION=str(self.workdir / "logs"),
            METRICS_LOCATION=str(self.workdir / "logs"),
            PATH=bin_dir + os.pathsep + environment.get("PATH", ""),
            **self.env,
        )
        return environment

    def start(self, timeout: float = 180.0) -> Server:
        start_log = self.workdir / "start.log"
        command = [
            "torchserve",
            "--start",
            "--ncs",
            "--ts-config",
            str(self.config),
            "--model-store",
            str(self.model_store),
        ]
        if self.models_arg:
            command += ["--models", *self.models_arg]
        # Output to a file, not a pipe: the JVM inherits it and would hold a pipe open forever.
        with start_log.open("w") as log_file:
            started = subprocess.run(
                command,
                cwd=self.workdir,
                env=self._environment(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        if started.returncode != 0:
            raise RuntimeError(f"torchserve --start failed: {start_log.read_text()}")
        deadline = time.monotonic() + timeout
        try:
            for model in self.models:
                left = max(deadline - time.monotonic(), 1.0)
                wait_ready(self.workdir, self.url("management"), self.pid_file, left, model)
        except Exception:
            self.stop()
            raise
        self.keys = read_keys(self.workdir / KEY_FILE)
        return self

    def describe(self, model: str = MODEL_NAME) -> dict:
        """``model`` as the management API describes it (``describe_model``)."""
        return describe_model(self.url("management"), self.keys["management"], model)

    def worker_pids(self, model: str | None = MODEL_NAME) -> list[int]:
        """The worker processes of ``model``; of every registered model for None."""
        pids = []
        for name in [model] if model else self.models:
            pids += [int(w["pid"]) for w in self.describe(name)["workers"] if w.get("pid")]
        return pids

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the JVM and its workers; kill them if a clean stop does not finish in time."""
        pid = self.pid
        workers = []
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            workers = self.worker_pids(None) if self.keys else []
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["torchserve", "--stop", "--foreground"],
                cwd=self.workdir,
                env=self._environment(),
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for leftover in [pid, *workers]:
            if pid_alive(leftover):
                os.kill(leftover, signal.SIGKILL)

    def log_text(self, name: str = "model_log.log") -> str:
        path = self.workdir / "logs" / name
        return path.read_text(errors="replace") if path.is_file() else ""


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Wait until TorchServe's models are ready, or list a store's registrations."
    )
    parser.add_argument("command", choices=["wait", "models"])
    parser.add_argument("names", nargs="*", help="models: these archives only")
    parser.add_argument("--workdir", type=Path, default=Path.cwd())
    parser.add_argument("--config", type=Path, default=ROOT / "config.properties")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument(
        "--models", nargs="+", help="wait: the registrations torchserve --models was given"
    )
    args = parser.parse_intermixed_args()  # names may come after the options
    if args.command == "models":
        try:
            print(" ".join(store_models(args.store, args.names)))
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    properties = read_properties(args.config)
    if args.models:  # the command line's registrations replace the config's load_models
        properties["load_models"] = ",".join(args.models)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    deadline = time.monotonic() + args.timeout
    for model in registered_models(properties):
        try:
            described = wait_ready(
                args.workdir,
                properties["management_address"],
                tmp / ".model_server.pid",
                max(deadline - time.monotonic(), 1.0),
                model,
            )
        except (RuntimeError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"{described['modelName']} ready: batch size {described['batchSize']}, "
            f"max batch delay {described['maxBatchDelay']} ms, "
            f"{len(described['workers'])} worker(s) on {described.get('deviceType', '?')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
