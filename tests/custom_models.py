"""Models other than SqueezeNet for the tests: a custom 10-class CNN saved as TorchScript and as a
torch.export program, and torchvision models with seeded random weights (nothing downloaded).

Also the independent expectation for them: torchvision's stock transforms with the archive's
sizes and statistics, one image at a time, ``.backward()``, in float64 (as ``reference.py``) by
default.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import reference
import torch
from reference import load_rgb
from torch import nn
from torchvision import transforms

SEED = 1234
# The custom CNN sees 64 x 64 crops of the shorter side resized to 72, with its own statistics.
TINY_RESIZE, TINY_CROP = 72, 64
TINY_MEAN, TINY_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TINY_LABELS = [f"shape {name}" for name in "abcdefghij"]


class TinyNet(nn.Module):
    """A 10-class CNN whose code is not in torchvision."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def tiny_net(seed: int = SEED) -> TinyNet:
    """Seeded weights, and BatchNorm statistics that are not the identity."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = TinyNet()
        net.features[1].running_mean.uniform_(-0.2, 0.2)
        net.features[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def save_torchscript(model: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def save_exported(model: nn.Module, path: Path, crop: int = TINY_CROP, dynamic=True) -> Path:
    """A .pt2 program with a dynamic batch dimension (``dynamic=False``: fixed at 2)."""
    example = (torch.randn(2, 3, crop, crop),)
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    torch.export.save(torch.export.export(model, example, dynamic_shapes=shapes), path)
    return path


def torchvision_state(
    arch: str,
    classes: int,
    path: Path,
    seed: int = SEED,
    calibrate: torch.Tensor | None = None,
) -> nn.Module:
    """A randomly initialised torchvision model whose state_dict is saved to ``path``.

    ``calibrate`` (a batch of model inputs): BatchNorm statistics measured on it and as many
    noise images (one forward in training mode), and the last linear layer scaled to give them
    scores of standard deviation 1, as training would leave them. Deep random nets such as
    MobileNetV3 and EfficientNet otherwise give every image nearly equal scores, and rounding
    decides the top classes; the noise keeps the scores of build_mar.py's noise checks moderate.
    """
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
        if calibrate is not None:
            calibrate = torch.cat([calibrate, torch.randn_like(calibrate)])
            norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a plain average over the batch
            with torch.no_grad():
                model.train()(calibrate)
                for norm in norms:
                    norm.momentum = 0.1
                last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
                scale = float(model.eval()(calibrate).std())
                last.weight /= scale
                last.bias /= scale
        model.eval()
    torch.save(model.state_dict(), path)
    return model


def write_labels(names: list[str], path: Path, index_to_name: bool = False) -> Path:
    data = {str(i): name for i, name in enumerate(names)} if index_to_name else names
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def preprocessed(
    data: bytes,
    resize: int,
    crop: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """An encoded image as a (3, crop, crop) model input, by torchvision's stock transforms."""
    preprocess = transforms.Compose(
        [
            transforms.Resize(resize, transforms.InterpolationMode(interpolation)),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(mean=list(mean), std=list(std)),
        ]
    )
    return preprocess(load_rgb(data))


def reference_map(
    model: nn.Module,
    data: bytes,
    resize: int,
    crop: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    target: int | None = None,
    interpolation: str = "bilinear",
    dtype: torch.dtype = torch.float64,
) -> tuple[np.ndarray, int, torch.Tensor]:
    """(vanilla map (crop, crop), target class, logits) for one encoded image, in float64 (or
    ``dtype``: float64 depthwise convolutions have no fast kernel, seconds each on 2 cores)."""
    exact = copy.deepcopy(model).to(dtype).eval()
    x = preprocessed(data, resize, crop, mean, std, interpolation).to(dtype)
    saliency, y, logits = reference.gradient_map(exact, x, target)
    return saliency.float().numpy(), y, logits.float()
