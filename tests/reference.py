"""Independent expectations: the textbook way to compute what the service computes.

Deliberately naive (one image at a time, torchvision's stock transforms, ``.backward()``), so
that it shares no code with ``saliency_service`` beyond the model weights.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision import transforms

STANDARD_PREPROCESS = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def load_rgb(data: bytes) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def saliency(
    model: torch.nn.Module, data: bytes, target: int | None = None, objective: str = "score"
) -> tuple[np.ndarray, int, torch.Tensor]:
    """(map (224, 224), target class, logits) for one encoded image, cs231n style."""
    x = STANDARD_PREPROCESS(load_rgb(data)).unsqueeze(0).requires_grad_(True)
    logits = model(x)
    y = int(logits.argmax()) if target is None else target
    if objective == "score":
        logits[0, y].backward()
    else:
        F.cross_entropy(logits, torch.tensor([y])).backward()
    return x.grad[0].abs().max(dim=0).values.numpy(), y, logits.detach()[0]


def decode_png(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])
