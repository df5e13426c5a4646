"""The Dockerfile: hadolint-clean, and everything it copies exists and reaches the build context.

No Docker engine here: these checks read the Dockerfile as text. The .mar is built by
scripts/setup.sh before the tests run (scripts/test.sh, CI).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from saliency_tools import MAR
from saliency_tools.config import read_properties

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONTAINER_PROPERTIES = ROOT / "deploy" / "docker" / "container.properties"


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.is_file() else shutil.which("hadolint")
    if not path:
        pytest.fail("hadolint is missing: run scripts/setup.sh --dev (requirements-dev.txt)")
    return path


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def copies() -> list[tuple[list[str], str, dict[str, str]]]:
    """(sources, destination, flags) of every COPY, in order."""
    found = []
    for keyword, rest in instructions():
        if keyword != "COPY":
            continue
        words = rest.split()
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        found.append((paths[:-1], paths[-1], flags))
    return found


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (Docker's rules, as used
    here: the last matching pattern wins; a pattern matching a parent directory applies)."""
    excluded = False
    parts = path.split("/")
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_effective() -> None:
    """The linter does flag a bad Dockerfile (so a pass above means something)."""
    bad = "FROM ubuntu\nRUN apt-get install curl\nUSER root\n"
    result = subprocess.run(
        [hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3008" in result.stdout, result.stdout


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    sources = [src for srcs, _, flags in copies() if "from" not in flags for src in srcs]
    assert f"model_store/{MAR.name}" in sources
    for source in sources:
        matches = list(ROOT.glob(source))
        assert matches, f"COPY {source}: missing (scripts/setup.sh builds the .mar)"
        for match in matches:
            files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert not dockerignored(relative), f"{relative} is excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    for path in ("key_file.json", "logs/ts_log.log", ".venv/bin/python", ".git/config", "tests/x"):
        assert dockerignored(path), path


def image_files() -> set[str]:
    """Absolute paths the image gets from COPY (and the config the Dockerfile concatenates)."""
    files = set()
    for sources, destination, flags in copies():
        if "from" in flags:
            files.add(destination)
            continue
        for source in sources:
            name = Path(source).name
            files.add(destination + name if destination.endswith("/") else destination)
    text = DOCKERFILE.read_text()
    files.update(re.findall(r">\s*(/opt/saliency/\S+)", text))
    return files


def json_words(keyword: str) -> list[str]:
    (rest,) = [rest for key, rest in instructions() if key == keyword][-1:]
    return json.loads(rest[rest.index("[") :])


def test_runtime_paths_come_from_the_build() -> None:
    files = image_files()
    command = json_words("CMD")
    assert command[:3] == ["torchserve", "--start", "--foreground"]
    wanted = [w for w in command if w.startswith("/opt/saliency/")]
    wanted += json_words("ENTRYPOINT") + json_words("HEALTHCHECK")[:1]
    for path in wanted:
        if path.endswith("model-store"):
            assert f"{path}/{MAR.name}" in files
        else:
            assert path in files, f"{path} is not produced by the Dockerfile: {sorted(files)}"


def test_base_image_is_the_torchserve_tested_here_and_user_is_not_root() -> None:
    """Every base image the Dockerfile names (the default and the documented CPU variant) is the
    official TorchServe image of the version these tests run against."""
    tested = importlib.metadata.version("torchserve")
    (default,) = [rest for key, rest in instructions() if key == "ARG" and "BASE_IMAGE=" in rest]
    named = re.findall(r"pytorch/torchserve:([\w.-]+)", DOCKERFILE.read_text())
    assert default.startswith("BASE_IMAGE=pytorch/torchserve:") and named
    assert {tag.split("-")[0] for tag in named} == {tested}, named
    assert ("FROM", "${BASE_IMAGE}") in instructions()
    users = [rest for key, rest in instructions() if key == "USER"]
    assert users[-1] not in ("root", "0", "0:0")
    assert any(key == "HEALTHCHECK" for key, _ in instructions())


# Settings whose production values tests/integration/test_security.py and test_bad_input.py
# show on a real server: the image must inherit them from config.properties unchanged.
PROTECTIONS = {
    "disable_token_authorization",
    "enable_model_api",
    "enable_envvars_config",
    "token_expiration_min",
    "max_request_size",
    "allowed_urls",
    "install_py_dep_per_model",
}


def test_container_config_exposes_inference_only_and_keeps_the_protections() -> None:
    """The image's config: the repository's config.properties + container.properties."""
    overrides = read_properties(CONTAINER_PROPERTIES)
    config = read_properties(ROOT / "config.properties") | overrides
    assert not PROTECTIONS & set(overrides), sorted(PROTECTIONS & set(overrides))
    addresses = {key: value for key, value in config.items() if key.endswith("_address")}
    public = {key for key, value in addresses.items() if "127.0.0.1" not in value}
    assert public == {"inference_address"}, addresses
    exposed = [rest for key, rest in instructions() if key == "EXPOSE"]
    assert exposed == [config["inference_address"].rsplit(":", 1)[1]]
    files = image_files()
    assert config["metrics_config"] in files
    assert f"{config['model_store']}/{MAR.name}" in files
