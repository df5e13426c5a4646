"""scripts/explore.py: the explorer's nginx config, rendered from explorer/nginx.conf.template.

The page server itself runs, with a browser, in tests/browser/test_explorer.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from saliency_tools import explore
from saliency_tools.explore import ExploreError

NGINX = os.environ.get("NGINX_BIN") or shutil.which("nginx")


def key_file(tmp_path: Path, key: str, expires: str = "2999-01-01T00:00:00.123456789Z") -> Path:
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"inference": {"key": key, "expiration time": expires}}))
    return path


def archive(tmp_path: Path, classes: int = 1000) -> Path:
    path = tmp_path / "model.mar"
    names = {str(i): f"class {i}" for i in range(classes)}
    with zipfile.ZipFile(path, "w") as mar:
        mar.writestr("index_to_name.json", json.dumps(names))
    return path


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://0.0.0.0:8085/", "http://127.0.0.1:8085"),  # a wildcard bind: reach it on loopback
        ("https://[::1]:9443", "https://[::1]:9443"),
        ("http://torchserve", "http://torchserve:80"),
    ],
)
def test_upstream_addresses(url: str, expected: str) -> None:
    assert explore.parse_upstream(url).url == expected


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:21", "127.0.0.1:8080", "http://h:1/predictions"])
def test_upstream_refuses_what_is_not_an_address(url: str) -> None:
    with pytest.raises(ExploreError):
        explore.parse_upstream(url)


def test_upstream_defaults_to_the_production_configs_inference_address() -> None:
    assert explore.inference_address(explore.ROOT / "config.properties").startswith(
        "http://127.0.0.1:"
    )


def test_the_inference_key_is_read_and_checked(tmp_path: Path, capsys) -> None:
    assert explore.read_inference_key(key_file(tmp_path, "Ab-_9xYz")) == "Ab-_9xYz"
    for unsafe in ('ab"; evil', "a b", "$host", ""):
        with pytest.raises(ExploreError, match="characters"):
            explore.read_inference_key(key_file(tmp_path, unsafe))
    with pytest.raises(ExploreError, match=r"scripts/serve\.sh"):
        explore.read_inference_key(tmp_path / "missing.json")
    explore.read_inference_key(key_file(tmp_path, "Ab-_9xYz", "2001-01-01T00:00:00.5Z"))
    assert "expired" in capsys.readouterr().err


def test_the_class_names_come_from_the_archive(tmp_path: Path) -> None:
    assert len(json.loads(explore.archive_labels(archive(tmp_path)))) == 1000
    with pytest.raises(ExploreError, match="1000"):
        explore.archive_labels(archive(tmp_path, 10))
    with pytest.raises(ExploreError, match="builds it"):
        explore.archive_labels(tmp_path / "none.mar")


def test_host_names_the_page_answers_at() -> None:
    names = explore.server_names("127.0.0.1", [])
    assert names == ["localhost", "127.0.0.1", "[::1]"]
    assert explore.server_names("::1", ["box.lan"])[-1] == "box.lan"
    assert len(explore.server_names("0.0.0.0", [])) == 4  # plus this machine's name
    with pytest.raises(ExploreError):
        explore.server_names("127.0.0.1", ["a b"])
    assert explore.page_url("0.0.0.0", 8090) == "http://127.0.0.1:8090/"
    assert explore.listen_address("::1", 8090) == "[::1]:8090"


def test_every_placeholder_is_filled_or_the_render_fails() -> None:
    with pytest.raises(ExploreError, match="@MODEL@"):
        explore.render("a @MODEL@ b", {})
    assert explore.render("a @MODEL@ b", {"MODEL": "m"}) == "a m b"


def prepared(tmp_path: Path, key: str = "Ab-_9xYz") -> Path:
    args = explore.parse_args(
        [
            "--port=18090",
            f"--run-dir={tmp_path / 'run'}",
            f"--key-file={key_file(tmp_path, key)}",
            f"--archive={archive(tmp_path)}",
        ]
    )
    return explore.prepare(args, explore.parse_upstream("http://127.0.0.1:8080"))


def test_the_key_stays_out_of_the_main_config_in_an_owner_only_directory(tmp_path: Path) -> None:
    config = prepared(tmp_path)
    run_dir = config.parent
    assert "Ab-_9xYz" not in config.read_text()
    assert (run_dir / "auth.conf").read_text() == (
        'proxy_set_header Authorization "Bearer Ab-_9xYz";\n'
    )
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "auth.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "listen 127.0.0.1:18090" in config.read_text()


@pytest.mark.skipif(not NGINX, reason="no nginx binary (set NGINX_BIN)")
def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    config = prepared(tmp_path)
    result = subprocess.run(
        [NGINX, "-t", "-e", "stderr", "-p", f"{config.parent}/", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
