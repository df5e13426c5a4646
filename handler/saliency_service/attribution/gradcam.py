"""Grad-CAM: a convolutional layer's activations weighted by the gradient (Selvaraju et al. 2017).

For target class y, objective f_y and the chosen layer's activations ``A`` of shape (K, h, w)::

    alpha_k = 1/(h w) sum_ij d f_y / d A_kij          (channel weights)
    L = ReLU(sum_k alpha_k A_k)                        (the coarse map, h x w)

upsampled bilinearly to the input's size. Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra,
"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017,
equations 1 and 2. This is what pytorch-grad-cam's ``GradCAM`` and Captum's ``LayerGradCam``
(with ``relu_attributions=True``) compute; they differ in the scaling, which is left to whoever
shows the map (the service scales every map by its maximum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .passes import batch_pass
from .result import SaliencyResult


def cam_from_gradients(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Coarse Grad-CAM maps ``(N, h, w)`` from a layer's activations and gradients (N, K, h, w),
    or from a transformer block's ``(N, T, D)`` tokens taken as their patch grid
    (``tokens_to_grid``)."""
    if activations.ndim == 3:
        activations, gradients = tokens_to_grid(activations), tokens_to_grid(gradients)
    if activations.ndim != 4:
        raise ValueError(f"Grad-CAM needs a (N, K, h, w) layer output, got {activations.ndim}-D")
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1).clamp_min(0)


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """A transformer block's ``(N, T, D)`` tokens as a ``(N, D, s, s)`` feature map.

    The patch tokens form an ``s x s`` grid in raster order; a leading class token (``T = s^2 +
    1``, as in torchvision's ViT) is dropped. pytorch-grad-cam's ``reshape_transform`` for ViT.
    """
    count = tokens.shape[1]
    for skip in (0, 1):
        side = math.isqrt(count - skip)
        if side > 1 and side * side == count - skip:
            grid = tokens[:, skip:].reshape(tokens.shape[0], side, side, tokens.shape[2])
            return grid.permute(0, 3, 1, 2)
    raise ValueError(f"{count} tokens are no square grid of patches (nor one and a class token)")


def upsample(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``(N, h, w)`` maps to ``size``, pixel centres aligned as in
    OpenCV's ``INTER_LINEAR`` (pytorch-grad-cam's resize); the result stays >= 0."""
    return F.interpolate(coarse[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def gradcam(
    model: nn.Module,
    layer: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    objectives: str | Sequence[str] = "score",
) -> tuple[SaliencyResult, torch.Tensor]:
    """Grad-CAM maps of a batch: one forward pass, and a backward pass through the head only.

    The class score of SqueezeNet's head needs no backward pass at all (``heads``); the loss,
    or another model, takes one from the logits back to the layer (``passes``).

    Parameters
    ----------
    model
        Classifier in eval mode, ideally with frozen parameters.
    layer
        A submodule of ``model`` whose output is ``(N, K, h, w)`` (for SqueezeNet 1.1 the last
        Fire module, ``features[12]``: 512 x 13 x 13 for a 224 x 224 input).
    inputs
        ``(N, C, H, W)`` preprocessed images.
    targets
        ``(N,)`` class indices; ``-1`` (or ``None`` for all) means the predicted class.
    objectives
        ``"score"`` or ``"loss"``, for all samples or one per sample.

    Returns
    -------
    result, coarse
        ``result.maps`` of shape ``(N, H, W)``, and the coarse maps ``(N, h, w)``.
    """
    count = inputs.shape[0]
    names = [objectives] * count if isinstance(objectives, str) else list(objectives)
    if len(names) != count:
        raise ValueError(f"{len(names)} objectives for a batch of {count}")
    passed, resolved = batch_pass(
        model, inputs, names, targets, [False] * count, [True] * count, layer
    )
    assert passed.activations is not None and passed.layer is not None
    coarse = cam_from_gradients(passed.activations, passed.layer)
    maps = upsample(coarse, tuple(inputs.shape[2:]))
    return SaliencyResult(maps, passed.logits, resolved), coarse
