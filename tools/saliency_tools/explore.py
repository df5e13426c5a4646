"""Serve the explorer page (explorer/) with nginx, in front of the TorchServe of scripts/serve.sh.

nginx serves the page's static files and the archive's class names, and proxies
``POST /predictions/squeezenet_saliency`` (and the registrations it redirects to) and
``GET /ping`` to TorchServe's inference address, adding ``Authorization: Bearer <inference key>``
itself. The key is read from TorchServe's key_file.json when the page server starts and written
only into the run directory (mode 700, the key's file 600): the browser never receives it.
Run it through scripts/explore.sh; standard library only.

    scripts/explore.sh [--host 127.0.0.1] [--port 8090] [--foreground]  # start, or restart
    scripts/explore.sh --stop
Other options: --upstream URL (default: inference_address of $TS_CONFIG or config.properties),
--key-file FILE (default: key_file.json in the repository root, where serve.sh writes it),
--archive FILE (the .mar whose class names the page lists), --run-dir DIR (default: .explorer/),
--server-name NAME (another host name the page may be opened at); $NGINX_BIN: the nginx binary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from saliency_tools import MODEL_NAME, ROOT

EXPLORER_DIR = ROOT / "explorer"
TEMPLATE = EXPLORER_DIR / "nginx.conf.template"
DEFAULT_PORT = 8090
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "[::]", "*")
# Characters that can neither end a quoted nginx string nor start a variable: the key and the
# paths go into the config between double quotes.
KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{1,200}")
UNSAFE_IN_CONFIG = re.compile(r'["\\$\x00-\x1f\x7f]')
PLACEHOLDER = re.compile(r"@[A-Z_]+@")


class ExploreError(Exception):
    """A reason not to start, worded for the person who ran the command."""


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host_port: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_port}"


def parse_upstream(url: str) -> Upstream:
    """TorchServe's inference address; a wildcard bind address is reached on loopback."""
    parsed = urllib.parse.urlsplit(url.strip())
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.path not in ("", "/")
    ):
        raise ExploreError(f"not an inference address (http[s]://host:port): {url!r}")
    host = parsed.hostname
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return Upstream(parsed.scheme, f"{host}:{port}")


def inference_address(config: Path) -> str:
    """``inference_address`` of a TorchServe config.properties (TorchServe's default if unset)."""
    for line in config.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "inference_address" and not line.lstrip().startswith("#"):
            return value.strip()
    return "http://127.0.0.1:8080"


def read_inference_key(key_file: Path) -> str:
    """The inference key from TorchServe's key_file.json, checked to be safe in the config."""
    try:
        entry = json.loads(key_file.read_text())["inference"]
        key = entry["key"]
    except FileNotFoundError:
        raise ExploreError(
            f"{key_file} does not exist: start TorchServe first (scripts/serve.sh writes it), "
            "or name the file with --key-file"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExploreError(f"{key_file}: no inference key ({exc})") from None
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ExploreError(
            f"{key_file}: the inference key has characters outside [A-Za-z0-9._~+/=-]"
        )
    expires = expiry(entry.get("expiration time"))
    if expires and expires < datetime.now(UTC):
        print(
            f"[explore] warning: the inference key expired at {expires:%Y-%m-%d %H:%M} UTC; "
            "TorchServe will refuse it. Get a new one (docs/errors-and-hardening.md) and run "
            "scripts/explore.sh again.",
            file=sys.stderr,
        )
    return key


def expiry(text: object) -> datetime | None:
    """TorchServe's ``expiration time`` (ISO 8601 with nanoseconds and a Z), or None."""
    if not isinstance(text, str):
        return None
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?Z?", text.strip())
    if not match:
        return None
    return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)


def archive_labels(archive: Path) -> bytes:
    """The archive's ``index_to_name.json``: the class names the served model answers with."""
    try:
        with zipfile.ZipFile(archive) as mar:
            data = mar.read("index_to_name.json")
    except FileNotFoundError:
        raise ExploreError(f"{archive} does not exist: scripts/serve.sh builds it") from None
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ExploreError(f"{archive}: no class names in it ({exc})") from None
    names = json.loads(data)
    if not isinstance(names, dict) or len(names) != 1000:
        raise ExploreError(f"{archive}: index_to_name.json does not hold 1000 classes")
    return data


def config_safe(value: str, what: str) -> str:
    if UNSAFE_IN_CONFIG.search(value):
        raise ExploreError(f"{what} {value!r} has characters nginx's config cannot quote")
    return value


def listen_address(host: str, port: int) -> str:
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def page_url(host: str, port: int) -> str:
    if host in WILDCARDS:
        host = "127.0.0.1"
    return f"http://{listen_address(host, port)}/"


def server_names(host: str, extra: list[str]) -> list[str]:
    """Host names the page answers at: loopback's, the bound address, and any named ones."""
    names = list(LOOPBACK_NAMES)
    if host in WILDCARDS:
        names.append(socket.gethostname())
    else:
        names.append(f"[{host.strip('[]')}]" if ":" in host else host)
    names.extend(extra)
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", name):
            raise ExploreError(f"not a host name: {name!r}")
    return list(dict.fromkeys(names))


def render(template: str, values: dict[str, str]) -> str:
    text = template
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = PLACEHOLDER.findall(text)
    if leftover:
        raise ExploreError(f"the template has unfilled placeholders: {sorted(set(leftover))}")
    return text


def write_private(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write ``path`` readable by its owner only from its first byte (it may hold the key)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)


def prepare(args: argparse.Namespace, upstream: Upstream) -> Path:
    """Write nginx.conf, auth.conf and labels.json into the run directory; the config's path."""
    run_dir: Path = args.run_dir
    key = read_inference_key(args.key_file)
    labels = archive_labels(args.archive)
    values = {
        # Started as root, nginx would hand its workers to "nobody", who may not read the
        # checkout or the run directory; a loopback page server keeps its user.
        "USER": "user root;" if os.geteuid() == 0 else "",
        "RUN_DIR": config_safe(str(run_dir), "the run directory"),
        "EXPLORER_DIR": config_safe(str(EXPLORER_DIR), "the explorer directory"),
        "ERROR_LOG": "stderr" if args.foreground else f'"{run_dir / "error.log"}"',
        "LISTEN": listen_address(args.host, args.port),
        "SERVER_NAMES": " ".join(server_names(args.host, args.server_name)),
        "URL": page_url(args.host, args.port),
        "UPSTREAM_HOST": upstream.host_port,
        "UPSTREAM_SCHEME": upstream.scheme,
        "UPSTREAM_URL": upstream.url,
        "MODEL": MODEL_NAME,
    }
    text = render(TEMPLATE.read_text(), values)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    (run_dir / "temp").mkdir(mode=0o700, exist_ok=True)
    write_private(run_dir / "auth.conf", f'proxy_set_header Authorization "Bearer {key}";\n')
    write_private(run_dir / "labels.json", labels, 0o644)
    config = run_dir / "nginx.conf"
    write_private(config, text)
    return config


def nginx_binary() -> str:
    found = os.environ.get("NGINX_BIN") or shutil.which("nginx")
    if not found:
        raise ExploreError(
            "no nginx binary: install it (Debian/Ubuntu: apt install nginx; macOS: brew "
            "install nginx) or point NGINX_BIN at one"
        )
    return found


def running_pid(run_dir: Path) -> int | None:
    """The pid of this run directory's nginx master, if it is alive."""
    pid_file = run_dir / "nginx.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    # A recycled pid belongs to another program: ours has this run directory on its command line.
    with contextlib.suppress(OSError):
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if str(run_dir) not in command:
            return None
    return pid


def stop(run_dir: Path, timeout: float = 15.0) -> bool:
    """Stop this run directory's nginx (graceful, then forced); whether one was running."""
    pid = running_pid(run_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGQUIT)  # nginx: finish the requests in flight, then exit
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGTERM)
    forget_key(run_dir)  # no copy of the key outlives the server
    return True


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET (an HTTP error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def report_torchserve(url: str) -> None:
    """Say whether TorchServe answers through the page server (the page works without it)."""
    try:
        status, body = get(f"{url}ping", timeout=10)
    except OSError as exc:
        status, body = 0, str(exc)
    if status == 200:
        print(f"[explore] TorchServe answers through it: {body.strip()}")
    else:
        print(
            f"[explore] warning: TorchServe did not answer /ping ({status}: {body.strip()[:200]}); "
            "the page shows the error until it does (start it with scripts/serve.sh).",
            file=sys.stderr,
        )


def forget_key(run_dir: Path) -> None:
    """Remove the run directory's copy of the key once nginx is gone."""
    with contextlib.suppress(FileNotFoundError):
        (run_dir / "auth.conf").unlink()


def wait_answering(url: str, process: subprocess.Popen | None, timeout: float = 10.0) -> bool:
    """Poll the page until nginx serves it; False if it does not (or its process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            if get(url, timeout=2)[0] == 200:
                return True
        time.sleep(0.1)
    return False


def start(args: argparse.Namespace) -> int:
    nginx = nginx_binary()
    if stop(args.run_dir):
        print("[explore] stopped the page server that was running; starting it again")
    upstream = parse_upstream(args.upstream or inference_address(args.config))
    config = prepare(args, upstream)
    url = page_url(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        print(
            f"[explore] warning: listening on {args.host}: anyone who reaches this port uses the "
            "model with TorchServe's inference key (the page server adds it). Prefer loopback "
            "and an SSH tunnel.",
            file=sys.stderr,
        )
    command = [nginx, "-p", f"{args.run_dir}/", "-c", str(config)]
    if args.foreground:
        foreground = [*command, "-e", "stderr", "-g", "daemon off;"]
        return run_in_foreground(foreground, args.run_dir, url, upstream, args.key_file)
    error_log = args.run_dir / "error.log"
    started = subprocess.run(
        [*command, "-e", str(error_log)], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:  # nginx reports a bad config or a taken port before forking
        forget_key(args.run_dir)
        print(f"[explore] error: nginx did not start:\n{started.stderr.strip()}", file=sys.stderr)
        return 1
    if not wait_answering(url, None):
        print(f"[explore] error: no answer at {url}; see {error_log}", file=sys.stderr)
        stop(args.run_dir)
        return 1
    print(f"[explore] explorer page at {url} (nginx pid {running_pid(args.run_dir)})")
    announce(url, upstream, args.key_file)
    print("[explore] stop: scripts/explore.sh --stop")
    return 0


def announce(url: str, upstream: Upstream, key_file: Path) -> None:
    print(f"[explore] it forwards the page's requests to TorchServe at {upstream.url}, adding")
    print(f"[explore] the inference key from {key_file} (the browser never sees it)")
    report_torchserve(url)


def run_in_foreground(
    command: list[str], run_dir: Path, url: str, upstream: Upstream, key_file: Path
) -> int:
    """nginx as a child until it exits; Ctrl-C (to the whole group) or SIGTERM stops both."""
    process = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        if wait_answering(url, process):
            print(f"[explore] explorer page at {url} (Ctrl-C stops it)")
            announce(url, upstream, key_file)
            sys.stdout.flush()
        else:
            print(f"[explore] error: no answer at {url}", file=sys.stderr)
            process.terminate()
        return process.wait()
    finally:
        forget_key(run_dir)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve the explorer page with nginx, the inference key added server-side."
    )
    parser.add_argument("--stop", action="store_true", help="stop the page server")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (8090)")
    parser.add_argument("--foreground", action="store_true", help="run nginx in the foreground")
    parser.add_argument("--upstream", help="TorchServe's inference address")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("TS_CONFIG") or ROOT / "config.properties"),
        help="TorchServe config whose inference_address to use ($TS_CONFIG, config.properties)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=ROOT / "key_file.json",
        help="TorchServe's key_file.json (where scripts/serve.sh writes it)",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        default=ROOT / "model_store" / f"{MODEL_NAME}.mar",
        help="the model archive whose class names the page lists",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=ROOT / ".explorer",
        help="nginx's config, pid, logs and copy of the key (.explorer/)",
    )
    parser.add_argument(
        "--server-name", action="append", default=[], help="another host name for the page"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error("--port must be 1..65535")
    args.run_dir = args.run_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stop:
        stopped = stop(args.run_dir)
        print("[explore] stopped" if stopped else "[explore] the page server is not running")
        return 0
    try:
        return start(args)
    except ExploreError as exc:
        print(f"[explore] error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
