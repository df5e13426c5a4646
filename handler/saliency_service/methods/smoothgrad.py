"""``smoothgrad``, ``smoothgrad_sq``, ``vargrad``: maps of noisy copies, aggregated three ways.

The three share the noise protocol and its options (``samples``, ``noise``, ``seed``) and differ
in the aggregate only; see ``attribution.smoothgrad`` for the formulas and the papers.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..attribution.sampled import Sampler
from ..attribution.smoothgrad import DEFAULT_NOISE, DEFAULT_SAMPLES, MAX_SEED, NoisyCopies
from .base import ExplainContext, Job, SampledMethod, Settings
from .options import FloatOption, IntegerOption

NOISE_OPTIONS = (
    IntegerOption(
        "samples", DEFAULT_SAMPLES, "noisy copies (cost: one gradient each)", 1, "max_samples"
    ),
    FloatOption("noise", DEFAULT_NOISE, "noise sigma as a fraction of the input's max - min"),
    IntegerOption("seed", None, "seed of the noise; drawn and reported when absent", 0, MAX_SEED),
)


class NoisyMethod(SampledMethod):
    aggregate: ClassVar[str]
    options = NOISE_OPTIONS

    def settle(self, settings: Settings) -> Settings:
        if settings.get("seed") is None:
            return {**settings, "seed": secrets.randbelow(MAX_SEED + 1)}
        return settings

    def passes(self, settings: Settings) -> int:
        return 1 + settings["samples"]  # the clean forward, then one gradient per copy

    def sampler(self, job: Job, context: ExplainContext) -> Sampler:
        x, settings = job.inputs, job.settings
        sigma = settings["noise"] * float(x.max() - x.min())
        return NoisyCopies(x, settings["samples"], sigma, settings["seed"])

    def results(
        self,
        model: nn.Module,
        jobs: Sequence[Job],
        samplers: Sequence[Sampler],
        logits: torch.Tensor,
        targets: torch.Tensor,
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        return [(sampler.aggregate(self.aggregate), {}) for sampler in samplers]


class SmoothGrad(NoisyMethod):
    """The mean of the copies' vanilla maps (Smilkov et al. 2017)."""

    name = "smoothgrad"
    summary = "mean gradient map of noisy copies (Smilkov et al. 2017): less noise, n passes"
    aggregate = "mean"


class SmoothGradSquared(NoisyMethod):
    """The mean of the copies' squared maps (Hooker et al. 2019)."""

    name = "smoothgrad_sq"
    summary = "mean squared map of noisy copies (Hooker et al. 2019): beats random under ROAR"
    aggregate = "mean_square"


class VarGrad(NoisyMethod):
    """The variance of the copies' maps (Adebayo et al. 2018)."""

    name = "vargrad"
    summary = "variance of the maps of noisy copies (Adebayo et al. 2018): beats random (ROAR)"
    aggregate = "variance"
