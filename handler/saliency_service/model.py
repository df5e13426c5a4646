"""The classifier: torchvision's SqueezeNet 1.1 with ImageNet weights, ready for input gradients."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import squeezenet1_1

# Grad-CAM's layer: the last Fire module, 512 x 13 x 13 for a 224 x 224 input; after it come only
# dropout, the 1x1 classifier convolution and global pooling.
CAM_LAYER = "features.12"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a SqueezeNet 1.1 ``state_dict`` (tensors only: no pickled code is executed)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def build_model(state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """SqueezeNet 1.1 in eval mode with frozen parameters; ``state_dict`` loaded strictly.

    Freezing means a backward pass computes gradients for the input alone: no weight gradient
    is computed or accumulated between requests.
    """
    model = squeezenet1_1(weights=None)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval().requires_grad_(False)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    return build_model(load_state_dict(path)).to(device)
