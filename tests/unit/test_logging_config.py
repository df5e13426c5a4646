"""Every log TorchServe writes under the production config is bounded, and none keeps secrets.

scripts/serve.sh starts TorchServe with config.properties, whose vmargs name the log4j2 file;
TorchServe's built-in one rolls its files daily and never deletes them, and copies everything to
the console (logs/console.log, ~2.6 KB per request, never rotated). Read here as XML: each file
appender must roll over by size into a bounded number of files, the console must take errors
only, and the access log must drop query strings. tests/integration/test_logs.py watches a
running server do it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from saliency_tools import ROOT
from saliency_tools.server import log4j_config

MAX_FILE_BYTES = 10 * 2**20
MAX_ROLLED_FILES = 10
# Every logger TorchServe 0.12 writes to; each must reach a bounded file.
TORCHSERVE_LOGGERS = ("ACCESS_LOG", "MODEL_LOG", "MODEL_METRICS", "TS_METRICS", "org.pytorch.serve")
ACCESS_MESSAGE = (
    '/127.0.0.1:5000 "POST /predictions/squeezenet_saliency?key=s3cr3t&x=1 HTTP/1.1" 200 12'
)


def serve_config() -> Path:
    """The config scripts/serve.sh starts with when TS_CONFIG is not set."""
    script = (ROOT / "scripts" / "serve.sh").read_text()
    default = re.search(r'config="\$\{TS_CONFIG:-\$ROOT/([^}"]+)\}"', script)
    assert default, "serve.sh no longer names its default config as expected"
    return ROOT / default.group(1)


def parsed(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def size_in_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"\s*(\d+)\s*([KMG]?B)\s*", text, re.IGNORECASE).groups()
    return int(number) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[unit.upper()]


@pytest.fixture(scope="module")
def production_log4j() -> ET.Element:
    config = serve_config()
    path = log4j_config(config.read_text(), config.parent)
    assert path is not None, f"{config.name} gives TorchServe no log4j2 file (vmargs)"
    assert path.is_file(), path
    # Named log4j2.xml, a path that failed to resolve would silently load TorchServe's own.
    assert path.name != "log4j2.xml"
    return parsed(path)


def appenders(root: ET.Element) -> dict[str, ET.Element]:
    return {element.get("name"): element for element in root.find("Appenders")}


def test_every_file_appender_rolls_over_by_size_into_a_bounded_number_of_files(
    production_log4j,
) -> None:
    files = [a for a in appenders(production_log4j).values() if a.tag != "Console"]
    assert files
    for appender in files:
        name = appender.get("name")
        assert appender.tag == "RollingFile", f"{name}: a {appender.tag} grows without bound"
        sizes = [size_in_bytes(p.get("size")) for p in appender.iter("SizeBasedTriggeringPolicy")]
        assert sizes and max(sizes) <= MAX_FILE_BYTES, name
        strategy = appender.find("DefaultRolloverStrategy")
        assert strategy is not None and 1 <= int(strategy.get("max")) <= MAX_ROLLED_FILES, name
        # The strategy's max counts %i files only: a date in the pattern makes a new series
        # every day (TorchServe's own config: daily files, never deleted).
        pattern = appender.get("filePattern")
        assert "%i" in pattern and "%d" not in pattern, (name, pattern)
        assert not list(appender.iter("TimeBasedTriggeringPolicy")), name
        # In TorchServe's log directory, which the tests and serve.sh choose.
        assert appender.get("fileName").startswith(("${env:LOG_LOCATION", "${env:METRICS_LOCATION"))


def test_the_console_takes_errors_only(production_log4j) -> None:
    consoles = [a for a in appenders(production_log4j).values() if a.tag == "Console"]
    for console in consoles:
        levels = [f.get("level").lower() for f in console.iter("ThresholdFilter")]
        assert levels and set(levels) <= {"error", "fatal"}, console.get("name")


def test_every_torchserve_logger_reaches_a_bounded_file(production_log4j) -> None:
    known = appenders(production_log4j)
    loggers = {element.get("name", "Root"): element for element in production_log4j.find("Loggers")}
    for name in (*TORCHSERVE_LOGGERS, "Root"):
        refs = [ref.get("ref") for ref in loggers[name].iter("AppenderRef")]
        assert all(ref in known for ref in refs), (name, refs)
        assert any(known[ref].tag == "RollingFile" for ref in refs), name
        # Not additive: a logger that also passed its lines to the root would copy them to the
        # console, as TorchServe's own config does.
        if name != "Root":
            assert loggers[name].get("additivity") == "false", name


def strip_as_layout_does(layout: str, message: str) -> str:
    """Apply a PatternLayout's %replace{%m}{regex}{replacement} to a message (Java's regex
    syntax and Python's agree on what the layouts here use)."""
    match = re.search(r"%replace\{%m(?:sg)?\}\{(.+?)\}\{(.*?)\}", layout)
    assert match, f"the layout prints the message unfiltered: {layout}"
    return re.sub(match.group(1), match.group(2), message)


@pytest.mark.parametrize("config", ["production", "docker"])
def test_the_access_log_drops_query_strings(config, production_log4j) -> None:
    root = (
        production_log4j
        if config == "production"
        else parsed(ROOT / "deploy" / "docker" / "log4j2.xml")
    )
    known = appenders(root)
    access = next(e for e in root.find("Loggers") if e.get("name") == "ACCESS_LOG")
    for ref in access.iter("AppenderRef"):
        layout = known[ref.get("ref")].find("PatternLayout").get("pattern")
        logged = strip_as_layout_does(layout, ACCESS_MESSAGE)
        assert "s3cr3t" not in logged and "?" not in logged
        assert '"POST /predictions/squeezenet_saliency HTTP/1.1" 200 12' in logged
