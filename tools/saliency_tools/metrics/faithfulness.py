"""Causal faithfulness: deletion and insertion curves (Petsiuk, Das & Saenko 2018, "RISE").

A map is faithful to the model if the pixels it ranks highest are the ones the model needs. The
deletion curve follows the target class's probability while pixels are removed in the map's
order, most salient first (a sharp drop, i.e. a *low* area under the curve, is good); the
insertion curve follows it while the pixels are put back, most salient first, into a blurred copy
of the image (a sharp rise, a *high* area, is good). Petsiuk, Das & Saenko, "RISE: Randomized
Input Sampling for Explanation of Black-box Models", BMVC 2018 (the "deletion" and "insertion"
causal metrics); the defaults follow their published code: 224 pixels per step on 224x224 inputs,
deleted pixels set to 0 in the normalised input space (the dataset's mean colour), insertion
starting from a Gaussian blur with an 11-pixel kernel and sigma 5.

Every step of every curve is one image; the steps of all images go through the model in batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

PIXELS_PER_STEP = 224
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


@dataclass(frozen=True)
class Curves:
    """The target's probability at every step of one curve per image."""

    fractions: torch.Tensor  # (S,) fraction of the pixels moved at each step, 0 ... 1
    probabilities: torch.Tensor  # (N, S) softmax probability of each image's target class

    @property
    def auc(self) -> torch.Tensor:
        """``(N,)`` areas under the curves, in [0, 1]."""
        return auc(self.probabilities, self.fractions)


def auc(probabilities: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under ``probabilities`` (``(..., S)``) over ``fractions`` (``(S,)``)."""
    return torch.trapezoid(probabilities, fractions.to(probabilities), dim=-1)


def saliency_order(maps: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank in its map, most salient first: ``(N, H, W)`` -> ``(N, H * W)`` int64.

    Ties keep raster order (a stable sort), so a constant map removes pixels row by row.
    """
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def blur(
    images: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA
) -> torch.Tensor:
    """Gaussian blur of ``(N, C, H, W)`` images (reflected borders): insertion's starting point."""
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def causal_curves(
    model: nn.Module,
    start: torch.Tensor,
    finish: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    pixels_per_step: int = PIXELS_PER_STEP,
    batch_size: int = 64,
) -> Curves:
    """Probability of each target while pixels go from ``start`` to ``finish`` in map order.

    At step k the ``k * pixels_per_step`` most salient pixels (all channels) come from ``finish``
    and the rest from ``start``; step 0 is ``start`` itself and the last step is ``finish``.

    Parameters
    ----------
    model
        Classifier in eval mode.
    start, finish
        ``(N, C, H, W)`` images at the first and the last step.
    maps
        ``(N, H, W)`` saliency maps: the order in which pixels move.
    targets
        ``(N,)`` class whose softmax probability is followed.
    pixels_per_step
        Pixels moved per step; there are ``ceil(H * W / pixels_per_step) + 1`` steps.
    batch_size
        Images per forward pass.

    Returns
    -------
    Curves
        ``fractions`` ``(S,)`` and ``probabilities`` ``(N, S)``.
    """
    if start.shape != finish.shape or maps.shape != (start.shape[0], *start.shape[2:]):
        raise ValueError(f"shapes differ: {start.shape}, {finish.shape}, maps {maps.shape}")
    if pixels_per_step < 1 or batch_size < 1:
        raise ValueError("pixels_per_step and batch_size must be >= 1")
    count, _, height, width = start.shape
    pixels = height * width
    steps = math.ceil(pixels / pixels_per_step)
    moved = (torch.arange(steps + 1, device=start.device) * pixels_per_step).clamp_(max=pixels)
    ranks = saliency_order(maps.to(start.device))
    targets = targets.to(start.device).long()
    probabilities = torch.empty(count * (steps + 1), device=start.device)
    # Every (image, step) pair in one flat list, batch_size at a time: the steps of different
    # images share passes, so only the very last pass is partly empty.
    pairs = torch.arange(count * (steps + 1), device=start.device)
    with torch.no_grad():
        for chunk in pairs.split(batch_size):
            image, step = chunk // (steps + 1), chunk % (steps + 1)
            mask = (ranks[image] < moved[step, None]).view(-1, 1, height, width)
            mixed = torch.where(mask, finish[image], start[image])
            logits = model(mixed.contiguous(memory_format=torch.channels_last)).float()
            chosen = F.softmax(logits, dim=1).gather(1, targets[image, None])
            probabilities[chunk] = chosen[:, 0]
    return Curves(
        fractions=moved.float().cpu() / pixels,
        probabilities=probabilities.view(count, steps + 1).cpu(),
    )


def deletion_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    pixels_per_step: int = PIXELS_PER_STEP,
    batch_size: int = 64,
    substrate: torch.Tensor | None = None,
) -> Curves:
    """RISE's deletion metric: most salient pixels first replaced by ``substrate`` (default 0).

    With ImageNet-normalised inputs 0 is the dataset's mean colour. Lower AUC is better.
    """
    finish = torch.zeros_like(images) if substrate is None else substrate.expand_as(images)
    return causal_curves(model, images, finish, maps, targets, pixels_per_step, batch_size)


def insertion_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    pixels_per_step: int = PIXELS_PER_STEP,
    batch_size: int = 64,
    blurred: torch.Tensor | None = None,
) -> Curves:
    """RISE's insertion metric: original pixels put into a blurred copy, most salient first.

    Higher AUC is better.
    """
    start = blur(images) if blurred is None else blurred
    return causal_curves(model, start, images, maps, targets, pixels_per_step, batch_size)
