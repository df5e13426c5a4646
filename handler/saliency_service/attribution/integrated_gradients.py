"""Integrated Gradients (Sundararajan, Taly & Yan 2017), with Gauss-Legendre quadrature.

For input x, baseline x' and objective f, the attribution of input element i is::

    IG_i = (x_i - x'_i) * integral_0^1 d f(x' + a (x - x')) / d x_i  da

approximated with the n-point Gauss-Legendre rule on [0, 1] (Captum's default,
``method="gausslegendre"``): nodes ``a_k = (1 + t_k) / 2`` and weights ``w_k / 2`` of the rule
``(t_k, w_k)`` on [-1, 1]. By completeness the attributions sum to ``f(x) - f(x')``; the
difference, Captum's *convergence delta*, says how exact the integral was. Sundararajan, Taly &
Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.

The served map is ``|sum_c IG_c|``, one value per pixel: Captum's ``visualize_image_attr``
convention (sum over channels, absolute value).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .objectives import BatchObjective, resolve_targets
from .result import SaliencyResult
from .sampled import memory_format_of, run_samplers

DEFAULT_STEPS = 32


@lru_cache(maxsize=64)
def gauss_legendre(steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes in [0, 1] and weights (summing to 1) of the ``steps``-point Gauss-Legendre rule."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return tuple(0.5 * (1 + nodes)), tuple(0.5 * weights)


class PathPoints:
    """One sample's points on the straight path from its baseline, and the weighted gradients."""

    def __init__(self, x: torch.Tensor, baseline: torch.Tensor, steps: int) -> None:
        self.baseline = baseline.expand_as(x)
        self.difference = x - self.baseline
        self.count = steps
        self.alphas, self.weights = gauss_legendre(steps)
        self.integral = torch.zeros_like(x)

    def derived_input(self, k: int) -> torch.Tensor:
        return self.baseline + self.alphas[k] * self.difference

    def add(self, k: int, gradient: torch.Tensor) -> None:
        self.integral += self.weights[k] * gradient

    def attributions(self) -> torch.Tensor:
        return self.difference * self.integral


def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor | None = None,
    objectives: str | Sequence[str] = "score",
    steps: int | Sequence[int] = DEFAULT_STEPS,
    chunk_size: int | None = None,
) -> tuple[SaliencyResult, torch.Tensor, torch.Tensor]:
    """Integrated Gradients of a batch; all path points of all samples share chunked passes.

    Parameters
    ----------
    model
        Classifier in eval mode, ideally with frozen parameters.
    inputs
        ``(N, C, H, W)`` preprocessed images.
    baselines
        ``(N, C, H, W)``, or anything that broadcasts to one image, e.g. ``(C, 1, 1)``.
    targets
        ``(N,)`` class indices; ``-1`` (or ``None`` for all) means the predicted class of the
        input (not of the path points).
    objectives
        ``"score"`` or ``"loss"``, for all samples or one per sample.
    steps
        Quadrature points n >= 1, for all samples or one per sample.
    chunk_size
        At most this many path points per forward/backward pass; ``None``: all in one pass.

    Returns
    -------
    result, attributions, deltas
        ``result.maps`` = ``|sum_c attributions|`` of shape ``(N, H, W)``; the attributions
        ``(N, C, H, W)``; and ``deltas`` ``(N,)`` = sum of attributions - (f(x) - f(x')).
    """
    size = inputs.shape[0]
    counts = [steps] * size if isinstance(steps, int) else list(steps)
    names = [objectives] * size if isinstance(objectives, str) else list(objectives)
    if len(counts) != size or any(isinstance(c, bool) or c < 1 for c in counts):
        raise ValueError(f"steps must be {size} integers >= 1, got {counts}")
    BatchObjective(names, targets, size)  # validates objective names and the number of targets
    baselines = baselines.to(inputs)
    shared = baselines.dim() < inputs.dim() or baselines.shape[0] == 1  # one image for all
    baselines = torch.broadcast_to(baselines, inputs.shape)

    with torch.no_grad():
        logits = model(inputs)
        layout = memory_format_of(model)
        if shared:  # f(x') once
            baseline_logits = model(baselines[:1].contiguous(memory_format=layout))
            baseline_logits = baseline_logits.expand(size, -1)
        else:
            baseline_logits = model(baselines.contiguous(memory_format=layout))
    resolved = resolve_targets(logits, targets)
    paths = [PathPoints(inputs[n], baselines[n], counts[n]) for n in range(size)]
    run_samplers(model, paths, resolved, names, chunk_size)
    attributions = torch.stack([path.attributions() for path in paths])
    deltas = convergence_deltas(attributions, logits, baseline_logits, resolved, names)
    maps = attributions.sum(dim=1).abs()
    return SaliencyResult(maps, logits, resolved), attributions, deltas


def convergence_deltas(
    attributions: torch.Tensor,
    logits: torch.Tensor,
    baseline_logits: torch.Tensor,
    targets: torch.Tensor,
    objectives: Sequence[str],
) -> torch.Tensor:
    """Captum's convergence delta per sample: sum of attributions - (f(x) - f(x'))."""
    objective = BatchObjective(list(objectives), targets, len(targets))
    change = objective(logits) - objective(baseline_logits)
    return attributions.flatten(1).sum(dim=1) - change
