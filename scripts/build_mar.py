"""Build model_store/squeezenet_saliency.mar: handler, its package, weights, labels, config.

Usage: python scripts/build_mar.py [--weights FILE] [--export-path model_store]
Weights: --weights, else $SQUEEZENET_WEIGHTS, else torchvision's official file (downloaded once
into .cache/ and checked against its sha256).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = ROOT / "handler"
sys.path.insert(0, str(HANDLER_DIR))

from saliency_service.labels import torchvision_categories  # noqa: E402
from saliency_service.weights import WeightsError, resolve_weights, verify_loadable  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="a SqueezeNet 1.1 state_dict (.pth)")
    parser.add_argument("--export-path", type=Path, default=ROOT / "model_store")
    args = parser.parse_args()
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
