"""Explanations of a batch of jobs: one shared pass for single-pass methods, shared chunked
passes for sampled ones, and everything back in the batch's order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from ..attribution.objectives import resolve_targets
from ..attribution.passes import batch_pass
from ..attribution.sampled import run_samplers
from .base import ExplainContext, Explanation, Job, Method, SampledMethod, SinglePassMethod


def explain(model: nn.Module, jobs: Sequence[Job], context: ExplainContext) -> list[Explanation]:
    """One ``Explanation`` per job, in order."""
    answers: list[Explanation | None] = [None] * len(jobs)
    single = [n for n, job in enumerate(jobs) if isinstance(job.method, SinglePassMethod)]
    sampled = [n for n, job in enumerate(jobs) if isinstance(job.method, SampledMethod)]
    if len(single) + len(sampled) != len(jobs):
        raise TypeError("every method is a SinglePassMethod or a SampledMethod")
    for group, run in ((single, _single_pass), (sampled, _sampled)):
        if group:
            for n, answer in zip(group, run(model, [jobs[n] for n in group], context), strict=True):
                answers[n] = answer
    return [answer for answer in answers if answer is not None]


def _by_method(jobs: Sequence[Job]) -> dict[Method, list[int]]:
    rows: dict[Method, list[int]] = defaultdict(list)
    for n, job in enumerate(jobs):
        rows[job.method].append(n)
    return rows


def _requested(jobs: Sequence[Job], device: torch.device) -> torch.Tensor:
    return torch.tensor([job.target for job in jobs], device=device)


def _single_pass(
    model: nn.Module, jobs: Sequence[Job], context: ExplainContext
) -> list[Explanation]:
    """Every job's gradients from as few and as cheap passes as their methods allow: vanilla's
    backward pass to the input serves Grad-CAM's layer too, and Grad-CAM of the class score
    needs only a forward pass (``attribution.passes``)."""
    inputs = torch.stack([job.inputs for job in jobs])
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    methods = [job.method for job in jobs]
    passed, targets = batch_pass(
        model,
        inputs,
        [job.objective for job in jobs],
        _requested(jobs, inputs.device),
        [m.wants_input_gradient for m in methods],  # type: ignore[attr-defined]
        [m.wants_layer for m in methods],  # type: ignore[attr-defined]
        context.cam_layer,
    )
    size = (inputs.shape[2], inputs.shape[3])
    answers: list[Explanation | None] = [None] * len(jobs)
    for method, rows in _by_method(jobs).items():
        assert isinstance(method, SinglePassMethod)
        for row, (saliency, extra) in zip(
            rows, method.maps(passed, rows, size, context), strict=True
        ):
            answers[row] = Explanation(saliency, passed.logits[row], int(targets[row]), extra)
    return [answer for answer in answers if answer is not None]


def _sampled(model: nn.Module, jobs: Sequence[Job], context: ExplainContext) -> list[Explanation]:
    """A clean forward pass resolves the targets (noise or a path cannot change which class is
    explained); then the derived inputs of every job share chunked passes."""
    inputs = torch.stack([job.inputs for job in jobs])
    with torch.no_grad():
        logits = model(inputs.contiguous(memory_format=torch.channels_last))
    targets = resolve_targets(logits, _requested(jobs, inputs.device))
    samplers = [job.method.sampler(job, context) for job in jobs]  # type: ignore[attr-defined]
    run_samplers(model, samplers, targets, [job.objective for job in jobs], context.chunk_size)
    answers: list[Explanation | None] = [None] * len(jobs)
    for method, rows in _by_method(jobs).items():
        assert isinstance(method, SampledMethod)
        index = torch.tensor(rows, device=inputs.device)
        results = method.results(
            model,
            [jobs[r] for r in rows],
            [samplers[r] for r in rows],
            logits[index],
            targets[index],
        )
        for row, (saliency, extra) in zip(rows, results, strict=True):
            answers[row] = Explanation(saliency, logits[row], int(targets[row]), extra)
    return [answer for answer in answers if answer is not None]
