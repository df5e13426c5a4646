"""Methods that average gradients over many derived inputs (noisy copies, points on a path).

Each sample of a batch has a ``Sampler`` that makes its derived inputs and folds their gradients
into its map. The derived inputs of *all* samples go through the model together, in chunks of at
most ``chunk_size`` images per forward/backward pass, so a batch of such requests costs
``ceil(sum of counts / chunk_size)`` passes (a chunk that mixes the two objectives on a model
with the score shortcut: one of each kind). A sampler sees its inputs and gradients in its own
order, one at a time: its result does not depend on the chunking or on the other samples (up to
the kernels' float rounding).

Rows of the class score on torchvision's SqueezeNet take a shortcut (``heads.TargetScores``): the
features, then only the target's class map; the loss needs every class's map and takes the whole
model. Measured on one CPU thread (224 x 224, chunks of 32, channels_last): Integrated Gradients
takes ~18% less CPU time per image than through the whole model. A chunk enters the model in the
memory format of the model's weights (channels_last in the service).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Protocol

import torch
from torch import nn

from .gradients import input_gradients
from .heads import TargetScores
from .objectives import BatchObjective


class Sampler(Protocol):
    """One sample's derived inputs and what it makes of their gradients."""

    count: int  # how many derived inputs

    def derived_input(self, k: int) -> torch.Tensor:
        """The k-th derived input ``(C, H, W)``; called once for each k, in increasing order."""
        ...

    def add(self, k: int, gradient: torch.Tensor) -> None:
        """Fold in the gradient ``(C, H, W)`` of the k-th derived input (increasing k)."""
        ...


def run_samplers(
    model: nn.Module,
    samplers: Sequence[Sampler],
    targets: torch.Tensor,
    objectives: Sequence[str],
    chunk_size: int | None = None,
) -> None:
    """Feed every sampler the gradients of its derived inputs, in shared chunked passes.

    ``targets`` are resolved class indices (no ``PREDICTED``), one per sampler, as are
    ``objectives`` (``"score"`` or ``"loss"``).
    """
    if len(targets) != len(samplers) or len(objectives) != len(samplers):
        raise ValueError("one target and one objective per sampler")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = sum(sampler.count for sampler in samplers)
    scores = TargetScores.of(model)
    layout = memory_format_of(model)
    for chunk in _chunks(samplers, chunk_size or max(total, 1)):
        derived = [samplers[owner].derived_input(k) for owner, k in chunk]
        gradients: list[torch.Tensor | None] = [None] * len(chunk)
        for rows, shortcut in _passes([objectives[owner] for owner, _ in chunk], scores):
            batch = _stack([derived[r] for r in rows], layout)
            owners = torch.tensor([chunk[r][0] for r in rows], device=targets.device)
            if shortcut:
                assert scores is not None
                score_of = partial(scores, targets=targets[owners])  # (N,): the objective itself
                passed, _ = input_gradients(score_of, batch, _identity)
            else:
                names = [objectives[chunk[r][0]] for r in rows]
                objective = BatchObjective(names, targets[owners], len(rows))
                passed, _ = input_gradients(model, batch, objective)
            for r, gradient in zip(rows, passed, strict=True):
                gradients[r] = gradient
        for (owner, k), gradient in zip(chunk, gradients, strict=True):
            assert gradient is not None
            samplers[owner].add(k, gradient)


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """channels_last if the model's first 4-D weight that tells the layouts apart is stored so
    (``SaliencyService`` lays its model out that way), else the default contiguous format."""
    for parameter in model.parameters():
        if parameter.dim() == 4:
            last = parameter.is_contiguous(memory_format=torch.channels_last)
            if last != parameter.is_contiguous():
                return torch.channels_last if last else torch.contiguous_format
    return torch.contiguous_format


def _stack(images: Sequence[torch.Tensor], layout: torch.memory_format) -> torch.Tensor:
    """The images as one batch in ``layout``, written there directly: stacking a channels_last
    model's derived inputs gives NCHW, and converting that costs a second copy (~4x the time)."""
    first = images[0]
    shape = (len(images), *first.shape)
    batch = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=layout)
    return torch.stack(list(images), out=batch)


def _identity(values: torch.Tensor) -> torch.Tensor:
    return values


def _passes(names: Sequence[str], scores: TargetScores | None) -> list[tuple[list[int], bool]]:
    """The rows of a chunk by how they are differentiated: the class score's rows through the
    shortcut (``True``) where the model has one, the others (all, without one) whole."""
    rows = range(len(names))
    if scores is None:
        return [(list(rows), False)]
    groups = [([r for r in rows if names[r] == "score"], True)]
    groups.append(([r for r in rows if names[r] != "score"], False))
    return [(members, shortcut) for members, shortcut in groups if members]


def _chunks(samplers: Sequence[Sampler], size: int) -> Iterator[list[tuple[int, int]]]:
    """(owner, k) of every derived input, sample after sample, ``size`` at a time."""
    pending = [(owner, k) for owner, s in enumerate(samplers) for k in range(s.count)]
    for start in range(0, len(pending), size):
        yield pending[start : start + size]
