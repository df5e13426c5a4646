"""Build model_store/squeezenet_saliency.mar: handler, its package, weights, labels, config.

Usage: python scripts/build_mar.py [--weights FILE] [--export-path model_store] [--if-stale]
Weights: --weights, else $SQUEEZENET_WEIGHTS, else torchvision's official file (downloaded once
into .cache/ and checked against its sha256). --if-stale keeps an archive whose code and config
equal handler/'s when no weights are named: a later setup needs neither the network nor the
weights file again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = ROOT / "handler"
sys.path.insert(0, str(HANDLER_DIR))

from saliency_service.labels import torchvision_categories  # noqa: E402
from saliency_service.weights import (  # noqa: E402
    ENV_VAR,
    WeightsError,
    resolve_weights,
    verify_loadable,
)

MODEL_NAME = "squeezenet_saliency"
MODEL_VERSION = "1.0"


def build(weights: Path, export_path: Path) -> Path:
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        extra = Path(tmp) / "extra"  # its contents land at the archive's root
        shutil.copytree(
            HANDLER_DIR / "saliency_service",
            extra / "saliency_service",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        shutil.copy2(HANDLER_DIR / "NOTICE-weights.md", extra)
        labels = {str(i): name for i, name in enumerate(torchvision_categories())}
        (extra / "index_to_name.json").write_text(json.dumps(labels, indent=0), encoding="utf-8")
        subprocess.run(
            [
                str(Path(sys.executable).with_name("torch-model-archiver")),
                "--model-name",
                MODEL_NAME,
                "--version",
                MODEL_VERSION,
                "--serialized-file",
                str(weights),
                "--handler",
                str(HANDLER_DIR / "saliency_handler.py"),
                "--extra-files",
                str(extra),
                "--config-file",
                str(HANDLER_DIR / "model-config.yaml"),
                "--export-path",
                str(export_path),
                "--force",
            ],
            check=True,
        )
    return export_path / f"{MODEL_NAME}.mar"


def handler_files(handler_dir: Path = HANDLER_DIR) -> dict[str, Path]:
    """Archive member name -> working-tree file, for everything of handler/ that is archived."""
    names = ["saliency_handler.py", "model-config.yaml", "NOTICE-weights.md"]
    files = {name: handler_dir / name for name in names}
    for path in sorted((handler_dir / "saliency_service").rglob("*.py")):
        files[path.relative_to(handler_dir).as_posix()] = path
    return {name: path for name, path in files.items() if path.is_file()}


def stale_files(mar: Path, handler_dir: Path = HANDLER_DIR) -> list[str]:
    """What differs between the archive and handler/: changed, added or removed files."""
    expected = handler_files(handler_dir)
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        changed = [
            name
            for name, path in expected.items()
            if name not in names or archive.read(name) != path.read_bytes()
        ]
        removed = [
            name
            for name in names
            if name.startswith("saliency_service/")
            and name.endswith(".py")
            and name not in expected
        ]
    return changed + removed


def variant_archive(store: Path, source: Path | None = None, **settings: object) -> Path:
    """A copy of the built archive in ``store`` with model-config.yaml settings replaced, top
    level or in the handler block (e.g. ``responseTimeout=15``, ``sampled_model='""'``): the
    yaml inside the archive overrides config.properties. For tests and load experiments."""
    source = source or ROOT / "model_store" / f"{MODEL_NAME}.mar"
    store.mkdir(parents=True, exist_ok=True)
    target = store / source.name
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as copy:
        for item in archive.infolist():
            data = archive.read(item.filename)
            if item.filename == "model-config.yaml":
                text = data.decode()
                for key, value in settings.items():
                    text, count = re.subn(rf"(?m)^(\s*){key}:.*$", rf"\g<1>{key}: {value}", text)
                    if count != 1:
                        raise ValueError(f"model-config.yaml has no single {key} line")
                data = text.encode()
            copy.writestr(item, data)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="a SqueezeNet 1.1 state_dict (.pth)")
    parser.add_argument("--export-path", type=Path, default=ROOT / "model_store")
    parser.add_argument(
        "--if-stale", action="store_true", help="keep a current archive when no weights are named"
    )
    args = parser.parse_args()
    current = args.export_path / f"{MODEL_NAME}.mar"
    named = args.weights or os.environ.get(ENV_VAR)
    if args.if_stale and not named and current.is_file() and not stale_files(current):
        print(f"{current} is up to date with handler/ (kept, with the weights it holds)")
        return 0
    try:
        if args.weights:
            verify_loadable(args.weights)
            weights = args.weights
        else:
            weights = resolve_weights(ROOT / ".cache")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mar = build(weights.resolve(), args.export_path.resolve())
    print(f"built {mar} ({mar.stat().st_size / 1e6:.1f} MB) with weights {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
