"""SmoothGrad: vanilla gradient maps averaged over noisy copies of the input (Smilkov et al. 2017).

Every noisy copy of every sample of a batch goes through the model together, in chunks of at most
``chunk_size`` images per forward/backward pass. The noise of each sample comes from its own seeded
CPU ``torch.Generator``: it depends on that sample's seed and settings only, not on the device,
the chunk size or the other samples of the batch, so a seed reproduces a map.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .gradients import input_gradients
from .objectives import BatchObjective, resolve_targets
from .vanilla import SaliencyResult

# Smilkov et al. (section 4.2) see diminishing returns around n = 50. On SqueezeNet (chelsea and
# coffee, seed 1) a 25-copy map has a Pearson correlation of 0.94 with a 200-copy map, a 50-copy
# map 0.965: 25 gets most of the smoothing at half the cost, ~0.5-1 s per image on 2 CPU cores.
DEFAULT_SAMPLES = 25
DEFAULT_NOISE = 0.15  # sigma / (max - min): the middle of the paper's recommended 10-20%
DEFAULT_SEED = 0
MAX_SEED = 2**63 - 1  # what ``torch.Generator.manual_seed`` accepts


def smoothgrad_saliency(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    objectives: str | Sequence[str] = "score",
    samples: int | Sequence[int] = DEFAULT_SAMPLES,
    noise: float | Sequence[float] = DEFAULT_NOISE,
    seeds: int | Sequence[int] = DEFAULT_SEED,
    chunk_size: int | None = None,
) -> SaliencyResult:
    """SmoothGrad saliency maps of a batch, with per-sample sample count, noise level and seed.

    For an input x, target class y and n noisy copies ``x_k = x + e_k``, ``e_k ~ N(0, sigma^2 I)``
    with ``sigma = noise * (max(x) - min(x))``, the map is::

        M(x) = 1/n * sum_k  max_c |d f_y(x_k) / d x_c|

    the mean of the *vanilla maps* (absolute gradient, maximum over colour channels; Simonyan et
    al. 2014) of the noisy copies. Smilkov, Thorat, Kim, Viegas & Wattenberg, "SmoothGrad:
    removing noise by adding noise", arXiv:1706.03825 (2017), section 3, with the noise level
    sigma / (x_max - x_min) of their section 4.2.

    Which variant is averaged: the paper's section 3 averages the gradients ``d f_y / d x``
    themselves and takes absolute values only to visualise them (its section 4.1 finds absolute
    values clearer on ImageNet). Here the *maps* are averaged instead: the absolute value and the
    channel maximum are taken before the mean, as implementations that smooth an absolute
    attribution do (e.g. Captum's ``NoiseTunnel`` around ``Saliency(abs=True)``). Reasons:
    (1) SmoothGrad then smooths exactly the quantity this service serves, so ``noise=0`` gives
    the vanilla map itself and the two methods are comparable pixel for pixel; (2) a mean of
    absolute values cannot cancel: a pixel whose gradient flips sign under noise stays salient
    instead of averaging towards 0, and a magnitude map is meant to show sensitivity, whatever
    its sign.

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
        is the input itself and the map is the vanilla map.
    seeds
        Seed of each sample's noise in ``[0, 2**63 - 1]``, for all samples or one per sample. The
        noise is drawn on the CPU, copy after copy, from ``torch.Generator().manual_seed(seed)``:
        the same seed, settings and input give the same noise on any device.
    chunk_size
        At most this many noisy images per forward/backward pass; ``None``: all in one pass.
        Copies of different samples share passes, so the number of passes is
        ``ceil(sum(samples) / chunk_size)``.

    Returns
    -------
    SaliencyResult
        ``maps`` of shape ``(N, H, W)`` (float32, >= 0), the clean logits, the resolved targets.
    """
    size = inputs.shape[0]
    counts = _per_sample("samples", samples, size, int)
    levels = _per_sample("noise", noise, size, float)
    seed_list = _per_sample("seeds", seeds, size, int)
    names = [objectives] * size if isinstance(objectives, str) else list(objectives)
    if any(count < 1 for count in counts):
        raise ValueError(f"samples must be >= 1, got {counts}")
    if any(not (math.isfinite(level) and level >= 0) for level in levels):
        raise ValueError(f"noise must be finite and >= 0, got {levels}")
    if any(not 0 <= seed <= MAX_SEED for seed in seed_list):
        raise ValueError(f"seeds must be in [0, 2**63 - 1], got {seed_list}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    BatchObjective(names, targets, size)  # validates objective names and the number of targets

    with torch.no_grad():
        logits = model(inputs)
    resolved = resolve_targets(logits, targets)

    span = (inputs.flatten(1).amax(dim=1) - inputs.flatten(1).amin(dim=1)).tolist()
    plan = _Plan(counts, [level * s for level, s in zip(levels, span, strict=True)], seed_list)
    totals = torch.zeros(size, *inputs.shape[2:], dtype=torch.float32, device=inputs.device)
    for owners in plan.chunks(chunk_size or plan.total):
        copies = torch.stack([plan.noisy_copy(inputs, owner) for owner in owners])
        requested = resolved[torch.tensor(owners, device=inputs.device)]
        objective = BatchObjective([names[o] for o in owners], requested, len(owners))
        gradients, _ = input_gradients(model, copies, objective)
        maps = gradients.abs().amax(dim=1).float()
        # A chunk holds consecutive runs of copies of one sample: sum each run (deterministic on
        # every device, unlike index_add_'s atomic adds on a GPU).
        start = 0
        for owner, run in itertools.groupby(owners):
            length = len(list(run))
            totals[owner] += maps[start : start + length].sum(dim=0)
            start += length
    maps = totals / torch.tensor(counts, dtype=totals.dtype, device=totals.device)[:, None, None]
    return SaliencyResult(maps=maps, logits=logits, targets=resolved)


@dataclass
class _Plan:
    """Which sample each noisy image belongs to, in order, and each sample's noise stream."""

    counts: list[int]
    sigmas: list[float]
    seeds: list[int]

    def __post_init__(self) -> None:
        self.total = sum(self.counts)
        self._generators = [torch.Generator(device="cpu").manual_seed(s) for s in self.seeds]

    def chunks(self, chunk_size: int) -> Iterator[list[int]]:
        """The owner (sample index) of every noisy image, ``chunk_size`` images at a time."""
        owners = [n for n, count in enumerate(self.counts) for _ in range(count)]
        for start in range(0, len(owners), chunk_size):
            yield owners[start : start + chunk_size]

    def noisy_copy(self, inputs: torch.Tensor, owner: int) -> torch.Tensor:
        """The owner's next noisy copy: one draw of its generator per copy, in copy order."""
        clean = inputs[owner]
        if self.sigmas[owner] == 0:
            return clean
        noise = torch.randn(clean.shape, generator=self._generators[owner], dtype=torch.float32)
        return clean + (self.sigmas[owner] * noise).to(device=clean.device, dtype=clean.dtype)


def _per_sample(name: str, value: Any, size: int, kind: type) -> list:
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
