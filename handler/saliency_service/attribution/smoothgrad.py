"""SmoothGrad and its two variants: maps of noisy copies of the input, aggregated three ways.

- ``mean``: SmoothGrad (Smilkov et al. 2017), the mean of the copies' maps;
- ``mean_square``: SmoothGrad-Squared (Hooker et al. 2019), the mean of their squares;
- ``variance``: VarGrad (Adebayo et al. 2018), their variance (population, as Captum's).

The noise of each sample comes from its own seeded CPU ``torch.Generator``: it depends on that
sample's seed and settings only, not on the device, the chunk size or the other samples of the
batch, so a seed reproduces a map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .objectives import BatchObjective, resolve_targets
from .result import SaliencyResult
from .sampled import run_samplers

# Smilkov et al. (section 4.2) see diminishing returns around n = 50. On SqueezeNet (chelsea and
# coffee, seed 1) a 25-copy map has a Pearson correlation of 0.94 with a 200-copy map, a 50-copy
# map 0.965: 25 gets most of the smoothing at half the cost, ~0.5-1 s per image on 2 CPU cores.
DEFAULT_SAMPLES = 25
DEFAULT_NOISE = 0.15  # sigma / (max - min): the middle of the paper's recommended 10-20%
DEFAULT_SEED = 0
# Seeds a JSON client can send and get back exactly (JavaScript numbers: 53 bits), and that
# ``torch.Generator.manual_seed`` accepts.
MAX_SEED = 2**31 - 1
AGGREGATES = ("mean", "mean_square", "variance")


class NoisyCopies:
    """One sample's noisy copies ``x + e_k``, ``e_k ~ N(0, sigma^2 I)``, and their maps' moments.

    The map of a copy is the vanilla map ``max_c |d f_y / d x_c|``. Mean and variance are kept
    with Welford's update, which does not cancel where the variance is small.
    """

    def __init__(self, x: torch.Tensor, count: int, sigma: float, seed: int) -> None:
        self.x, self.count, self.sigma = x, count, sigma
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        shape = x.shape[1:]
        self.mean = torch.zeros(shape, dtype=x.dtype, device=x.device)
        self.mean_square = torch.zeros_like(self.mean)
        self._m2 = torch.zeros_like(self.mean)
        self._seen = 0

    def derived_input(self, k: int) -> torch.Tensor:
        if self.sigma == 0:
            return self.x
        noise = torch.randn(self.x.shape, generator=self._generator, dtype=torch.float32)
        return self.x + (self.sigma * noise).to(device=self.x.device, dtype=self.x.dtype)

    def add(self, k: int, gradient: torch.Tensor) -> None:
        saliency = gradient.abs().amax(dim=0)
        self._seen += 1
        delta = saliency - self.mean
        self.mean += delta / self._seen
        self._m2 += delta * (saliency - self.mean)
        self.mean_square += (saliency.square() - self.mean_square) / self._seen

    def aggregate(self, kind: str) -> torch.Tensor:
        if kind == "mean":
            return self.mean
        if kind == "mean_square":
            return self.mean_square
        return self._m2 / self._seen  # population variance


def smoothgrad_saliency(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    objectives: str | Sequence[str] = "score",
    samples: int | Sequence[int] = DEFAULT_SAMPLES,
    noise: float | Sequence[float] = DEFAULT_NOISE,
    seeds: int | Sequence[int] = DEFAULT_SEED,
    chunk_size: int | None = None,
    aggregates: str | Sequence[str] = "mean",
) -> SaliencyResult:
    """SmoothGrad (or SmoothGrad-Squared, VarGrad) maps of a batch, with per-sample settings.

    For an input x, target class y and n noisy copies ``x_k = x + e_k``, ``e_k ~ N(0, sigma^2 I)``
    with ``sigma = noise * (max(x) - min(x))``, and ``m_k = max_c |d f_y(x_k) / d x_c|`` the
    vanilla map of copy k (Simonyan et al. 2014), the map is::

        mean:         1/n sum_k m_k                 (SmoothGrad)
        mean_square:  1/n sum_k m_k^2               (SmoothGrad-Squared)
        variance:     1/n sum_k (m_k - mean)^2      (VarGrad)

    Smilkov, Thorat, Kim, Viegas & Wattenberg, "SmoothGrad: removing noise by adding noise",
    arXiv:1706.03825 (2017), sections 3 and 4.2 (the noise level sigma / (x_max - x_min));
    Hooker, Erhan, Kindermans & Kim, "A Benchmark for Interpretability Methods in Deep Neural
    Networks", NeurIPS 2019 (SmoothGrad-Squared; with VarGrad the only methods that beat a random
    ranking on ImageNet under ROAR); Adebayo, Gilmer, Goodfellow & Kim, "Local Explanation Methods
    for Deep Neural Networks Lack Sensitivity to Parameter Values", ICLR Workshop 2018 (VarGrad).

    Which quantity is aggregated: the paper's section 3 averages the gradients themselves and
    takes absolute values only to show them (its section 4.1 finds absolute values clearer on
    ImageNet). Here the *maps* are aggregated, as implementations that smooth an absolute
    attribution do (Captum's ``NoiseTunnel`` around ``Saliency(abs=True)``): (1) ``noise=0``
    gives the vanilla map itself, so the methods are comparable pixel for pixel; (2) a mean of
    magnitudes cannot cancel where a gradient flips sign under noise.

    The explained class is resolved once, from the *clean* input (one forward pass without
    gradients), so the noise cannot change which class a map explains; the returned logits are
    those of the clean input too.

    Parameters
    ----------
    model
        Classifier in eval mode, ideally with frozen parameters.
    inputs
        ``(N, C, H, W)`` preprocessed images; sigma is measured in this (normalised) space.
    targets
        ``(N,)`` class indices; ``-1`` (``PREDICTED``) or ``None`` for all means the class that
        the model predicts for the clean input.
    objectives
        ``"score"`` or ``"loss"``, for all samples or one per sample.
    samples
        Number of noisy copies n >= 1, for all samples or one per sample.
    noise
        Noise level sigma / (max - min) >= 0, for all samples or one per sample. With 0 every copy
        is the input itself and the SmoothGrad map is the vanilla map.
    seeds
        Seed of each sample's noise in ``[0, MAX_SEED]``, for all samples or one per sample. The
        noise is drawn on the CPU, copy after copy, from ``torch.Generator().manual_seed(seed)``
        in float32: the same seed, settings and input give the same noise on any device.
    chunk_size
        At most this many noisy images per forward/backward pass; ``None``: all in one pass.
        Copies of different samples share passes: ``ceil(sum(samples) / chunk_size)`` passes.
    aggregates
        ``"mean"``, ``"mean_square"`` or ``"variance"``, for all samples or one per sample.

    Returns
    -------
    SaliencyResult
        ``maps`` of shape ``(N, H, W)`` (>= 0, in the inputs' dtype), the clean logits and the
        resolved targets.
    """
    size = inputs.shape[0]
    counts = per_sample("samples", samples, size, int)
    levels = per_sample("noise", noise, size, float)
    seed_list = per_sample("seeds", seeds, size, int)
    names = [objectives] * size if isinstance(objectives, str) else list(objectives)
    kinds = [aggregates] * size if isinstance(aggregates, str) else list(aggregates)
    if any(count < 1 for count in counts):
        raise ValueError(f"samples must be >= 1, got {counts}")
    if any(not (math.isfinite(level) and level >= 0) for level in levels):
        raise ValueError(f"noise must be finite and >= 0, got {levels}")
    if any(not 0 <= seed <= MAX_SEED for seed in seed_list):
        raise ValueError(f"seeds must be in [0, {MAX_SEED}], got {seed_list}")
    if len(kinds) != size or set(kinds) - set(AGGREGATES):
        raise ValueError(f"aggregates must be {size} of {AGGREGATES}, got {kinds}")
    BatchObjective(names, targets, size)  # validates objective names and the number of targets

    with torch.no_grad():
        logits = model(inputs)
    resolved = resolve_targets(logits, targets)
    spans = (inputs.flatten(1).amax(dim=1) - inputs.flatten(1).amin(dim=1)).tolist()
    samplers = [
        NoisyCopies(inputs[n], counts[n], levels[n] * spans[n], seed_list[n]) for n in range(size)
    ]
    run_samplers(model, samplers, resolved, names, chunk_size)
    maps = torch.stack([s.aggregate(kind) for s, kind in zip(samplers, kinds, strict=True)])
    return SaliencyResult(maps=maps, logits=logits, targets=resolved)


def per_sample(name: str, value: Any, size: int, kind: type) -> list:
    """One value for every sample, from a scalar or a sequence of ``size`` values."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    values = [value] * size if isinstance(value, (int, float)) else list(value)
    if len(values) != size:
        raise ValueError(f"{len(values)} {name} for a batch of {size}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise ValueError(f"{name} must be {kind.__name__}s, got {v!r}")
    return [kind(v) for v in values]
