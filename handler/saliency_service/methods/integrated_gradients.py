"""``integrated_gradients``: Sundararajan et al. 2017, Gauss-Legendre rule, Captum's delta."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..attribution.integrated_gradients import DEFAULT_STEPS, PathPoints, convergence_deltas
from ..attribution.sampled import Sampler, memory_format_of
from .base import ExplainContext, Job, SampledMethod, Settings
from .options import ChoiceOption, IntegerOption

BASELINES = ("zero", "black")  # zeros of the normalised input (Captum's default), a black image


class IntegratedGradients(SampledMethod):
    """``|sum_c (x - x') * integral of the gradient on the path from x' to x|``; see
    ``attribution.integrated_gradients``. ``delta`` in the answer is Captum's convergence delta:
    sum of attributions - (f(x) - f(x')), 0 for an exact integral."""

    name = "integrated_gradients"
    summary = "path integral of gradients from a baseline (Sundararajan et al. 2017): n passes"
    options = (
        IntegerOption("steps", DEFAULT_STEPS, "Gauss-Legendre points on the path", 1, "max_steps"),
        ChoiceOption(
            "baseline", "zero", "the path's start: zero input or a black image", BASELINES
        ),
    )

    def passes(self, settings: Settings) -> int:
        return 2 + settings["steps"]  # forwards of the input and the baseline, one per point

    def sampler(self, job: Job, context: ExplainContext) -> Sampler:
        baseline = _baseline(job, context)
        return PathPoints(job.inputs, baseline, job.settings["steps"])

    def results(
        self,
        model: nn.Module,
        jobs: Sequence[Job],
        samplers: Sequence[Sampler],
        logits: torch.Tensor,
        targets: torch.Tensor,
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        paths: list[PathPoints] = list(samplers)  # type: ignore[arg-type]  # made by sampler()
        baseline_logits = _baseline_logits(model, jobs, paths)
        attributions = torch.stack([path.attributions() for path in paths])
        objectives = [job.objective for job in jobs]
        deltas = convergence_deltas(attributions, logits, baseline_logits, targets, objectives)
        maps = attributions.sum(dim=1).abs()
        return [(maps[n], {"delta": float(deltas[n])}) for n in range(len(paths))]


def _baseline_logits(
    model: nn.Module, jobs: Sequence[Job], paths: Sequence[PathPoints]
) -> torch.Tensor:
    """f(x') of every job for the deltas, from one forward pass of each *distinct* baseline: the
    baselines of a batch depend on the setting only (its images share a shape), so all "zero"
    baselines are one image, as are all "black" ones."""
    keys = [(job.settings["baseline"], tuple(job.inputs.shape)) for job in jobs]
    distinct = list(dict.fromkeys(keys))
    first = [paths[keys.index(key)].baseline for key in distinct]
    with torch.no_grad():
        batch = torch.stack(first).contiguous(memory_format=memory_format_of(model))
        logits = model(batch)
    return logits[[distinct.index(key) for key in keys]]


def _baseline(job: Job, context: ExplainContext) -> torch.Tensor:
    if job.settings["baseline"] == "zero":
        return torch.zeros_like(job.inputs)
    return context.black.to(job.inputs).expand_as(job.inputs)
