"""TorchServe's files as the tooling reads them: properties (config.properties) and key_file.json.

Standard library only: the client library and the server control both use it.
"""

from __future__ import annotations

import json
from pathlib import Path

KEY_FILE = "key_file.json"  # written by TorchServe into its working directory (token auth)
_KEY_KINDS = (("inference", "inference"), ("management", "management"), ("api", "API"))


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java properties text; comments and blank lines skipped. A key
    given twice keeps its last value, as ``java.util.Properties`` does."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def read_properties(path: Path) -> dict[str, str]:
    return parse_properties(Path(path).read_text())


def read_keys(key_file: Path) -> dict[str, str]:
    """The token keys of a key_file.json: ``inference``, ``management`` and ``api``.

    Raises ``OSError`` if it cannot be read, ``ValueError`` / ``KeyError`` / ``TypeError`` if it
    is not TorchServe's format.
    """
    data = json.loads(Path(key_file).read_text())
    return {kind: data[key]["key"] for kind, key in _KEY_KINDS}
