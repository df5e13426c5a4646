"""Finding the pretrained weights: a local file named by SQUEEZENET_WEIGHTS, else torchvision's.

Run as ``python -m saliency_tools.weights CACHE_DIR``: prints the path of verified weights.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

ENV_VAR = "SQUEEZENET_WEIGHTS"
OFFICIAL_URL = "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"
OFFICIAL_SHA256 = "b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b"


class WeightsError(RuntimeError):
    """No usable weights: the message says what to do."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_loadable(path: Path) -> None:
    """A strict load into SqueezeNet 1.1: the file has every tensor of the right shape."""
    from saliency_service.model import build_model, load_state_dict

    try:
        build_model(load_state_dict(path))
    except Exception as exc:
        raise WeightsError(f"{path} is not a SqueezeNet 1.1 state_dict: {exc}") from exc


def download(url: str, destination: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` atomically, refusing a file with another checksum."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as tmp:
        partial = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while block := response.read(1 << 20):
                    tmp.write(block)
        except (urllib.error.URLError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise WeightsError(
                f"could not download {url} ({exc}). Without network access, point {ENV_VAR} at "
                "a SqueezeNet 1.1 state_dict, e.g. export "
                f"{ENV_VAR}=/path/to/squeezenet1_1.pth"
            ) from exc
    actual = sha256_of(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise WeightsError(f"{url} has sha256 {actual}, expected {sha256}: refusing it")
    partial.replace(destination)
    return destination


def resolve_weights(cache_dir: Path) -> Path:
    """Path of verified weights: ``$SQUEEZENET_WEIGHTS``, else torchvision's file (cached)."""
    named = os.environ.get(ENV_VAR)
    if named:
        path = Path(named).expanduser().resolve()
        if not path.is_file():
            raise WeightsError(f"{ENV_VAR}={named} is not a file")
        verify_loadable(path)
        return path
    cached = cache_dir / OFFICIAL_URL.rsplit("/", 1)[1]
    if cached.is_file() and sha256_of(cached) == OFFICIAL_SHA256:
        return cached
    print(f"downloading {OFFICIAL_URL}", file=sys.stderr)
    return download(OFFICIAL_URL, cached, OFFICIAL_SHA256)


def main(argv: list[str]) -> int:
    cache_dir = Path(argv[0]) if argv else Path(".cache")
    try:
        print(resolve_weights(cache_dir))
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
