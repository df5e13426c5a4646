"""What the comparisons run against: TorchServe's stock ``image_classifier`` handler.

Archived here with the same SqueezeNet 1.1 weights as ours; its ``/explanations`` is Captum's
IntegratedGradients. This module knows its archive, its request bodies, its answers' maps and its
preprocessing (the one place the tooling imports TorchServe: pyproject.toml's import contracts).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from saliency_service import images
from saliency_service.labels import torchvision_categories
from saliency_tools.client import encode_form

from .photos import Photo

STOCK = "squeezenet_stock"
# The stock handler's model: torchvision's SqueezeNet 1.1, built by a class TorchServe can load.
MODEL_FILE = '''"""TorchServe's loader wants the model file's one class: it builds the net."""
from torchvision.models.squeezenet import SqueezeNet


class StockSqueezeNet(SqueezeNet):
    def __init__(self):
        super().__init__(version="1_1")
'''
# The same batching and worker settings as handler/model-config.yaml; a longer responseTimeout,
# since a batch of 8 Captum explanations takes seconds per image.
MODEL_CONFIG = """minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 20
responseTimeout: 600
startupTimeout: 120
"""
# The stock handler's get_insights: IntegratedGradients(model).attribute(x, target, n_steps=15),
# Captum's default zero baseline and Gauss-Legendre rule; ours asked for the same.
IG_SETTINGS = {"method": "integrated_gradients", "steps": "15", "baseline": "zero"}


def build_stock_mar(weights: Path, store: Path, work: Path) -> Path:
    """The stock archive, ``store/squeezenet_stock.mar``, from files written into ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.py").write_text(MODEL_FILE)
    (work / "model-config.yaml").write_text(MODEL_CONFIG)
    labels = {str(i): name for i, name in enumerate(torchvision_categories())}
    (work / "index_to_name.json").write_text(json.dumps(labels))
    subprocess.run(
        [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            *("--model-name", STOCK, "--version", "1.0"),
            *("--model-file", str(work / "model.py")),
            *("--serialized-file", str(weights)),
            *("--handler", "image_classifier"),
            *("--extra-files", str(work / "index_to_name.json")),
            *("--config-file", str(work / "model-config.yaml")),
            *("--export-path", str(store), "--force"),
        ],
        check=True,
    )
    return store / f"{STOCK}.mar"


def stock_body(photo: Photo, target: int | None = None) -> tuple[bytes, str]:
    """A raw POST (an explanation then explains class 0), or a form that names the class: the
    handler reads ``target`` from the request row, a file part typed application/json."""
    if target is None:
        return photo.data, "application/octet-stream"
    return encode_form(
        {
            "data": (photo.name, photo.data, "application/octet-stream"),
            "target": ("target.json", str(target).encode(), "application/json"),
        }
    )


def captum_map(answer: Any) -> np.ndarray:
    """|sum over colour channels| of a stock /explanations answer (nested float lists).

    The stock handler answers each request with ``attributions[i].tolist()``, (C, H, W); a
    leading batch axis of 1 and a channels-last layout are accepted too.
    """
    attributions = np.asarray(answer, dtype=np.float64)
    while attributions.ndim > 3 and attributions.shape[0] == 1:
        attributions = attributions[0]
    if attributions.ndim != 3:
        raise ValueError(f"expected (C, H, W) attributions, got shape {attributions.shape}")
    if attributions.shape[0] == 3:
        channel_axis = 0
    elif attributions.shape[-1] == 3:
        channel_axis = -1
    else:
        raise ValueError(f"no colour axis of 3 in shape {attributions.shape}")
    return np.abs(attributions.sum(axis=channel_axis))


def input_difference(data: bytes) -> float:
    """Our preprocessing against the stock handler's transform (Resize 256, CenterCrop 224,
    ToTensor, Normalize, no EXIF rotation), on the same bytes: max |difference|."""
    from ts.torch_handler.image_classifier import ImageClassifier

    ours = images.preprocess(images.decode(data)).tensor
    with Image.open(io.BytesIO(data)) as image:
        theirs = ImageClassifier.image_processing(image)
    if ours.shape != theirs.shape:
        return float("inf")
    return float((ours - theirs).abs().max())
