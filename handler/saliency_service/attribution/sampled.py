"""Methods that average gradients over many derived inputs (noisy copies, points on a path).

Each sample of a batch has a ``Sampler`` that makes its derived inputs and folds their gradients
into its map. The derived inputs of *all* samples go through the model together, in chunks of at
most ``chunk_size`` images per forward/backward pass, so a batch of such requests costs
``ceil(sum of counts / chunk_size)`` passes whatever its mix. A sampler sees its inputs and
gradients in its own order, one at a time: its result does not depend on the chunking or on the
other samples (up to the kernels' float rounding).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

from .gradients import input_gradients
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
    for chunk in _chunks(samplers, chunk_size or max(total, 1)):
        owners = torch.tensor([owner for owner, _ in chunk], device=targets.device)
        batch = torch.stack([samplers[owner].derived_input(k) for owner, k in chunk])
        objective = BatchObjective([objectives[o] for o, _ in chunk], targets[owners], len(chunk))
        gradients, _ = input_gradients(model, batch, objective)
        for (owner, k), gradient in zip(chunk, gradients, strict=True):
            samplers[owner].add(k, gradient)


def _chunks(samplers: Sequence[Sampler], size: int) -> Iterator[list[tuple[int, int]]]:
    """(owner, k) of every derived input, sample after sample, ``size`` at a time."""
    pending = [(owner, k) for owner, s in enumerate(samplers) for k in range(s.count)]
    for start in range(0, len(pending), size):
        yield pending[start : start + size]
