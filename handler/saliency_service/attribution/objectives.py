"""What is differentiated: per-sample objectives of a batch of logits and target classes.

Each objective maps ``(logits (N, C), targets (N,))`` to one value per sample ``(N,)``. Samples
are independent in eval mode, so the gradient of the *sum* with respect to a batch of inputs is
every sample's own gradient: one backward pass serves the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The target class's unnormalised score S_y (Simonyan et al. 2014)."""
    return logits.gather(1, targets[:, None]).squeeze(1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The cross-entropy loss of the target class, -log softmax(logits)_y."""
    return F.cross_entropy(logits, targets, reduction="none")


OBJECTIVES: dict[str, Objective] = {"score": class_score, "loss": cross_entropy}

PREDICTED = -1  # a target of -1 means "the class the model predicts for this sample"


def resolve_targets(logits: torch.Tensor, requested: torch.Tensor | None) -> torch.Tensor:
    """Requested targets, with ``PREDICTED`` (or no request at all) replaced by the argmax."""
    predicted = logits.argmax(dim=1)
    if requested is None:
        return predicted
    requested = requested.to(device=logits.device, dtype=torch.long)
    return torch.where(requested == PREDICTED, predicted, requested)


class BatchObjective:
    """Each sample's own named objective of its own target, so one backward serves a mixed batch.

    After a call, ``targets`` holds the resolved target of every sample.
    """

    def __init__(self, names: str | Sequence[str], requested: torch.Tensor | None, batch_size: int):
        self.names = [names] * batch_size if isinstance(names, str) else list(names)
        if len(self.names) != batch_size:
            raise ValueError(f"{len(self.names)} objectives for a batch of {batch_size}")
        unknown = set(self.names) - OBJECTIVES.keys()
        if unknown:
            raise ValueError(f"unknown objective(s) {sorted(unknown)}; known: {sorted(OBJECTIVES)}")
        if requested is not None and len(requested) != batch_size:
            raise ValueError(f"{len(requested)} targets for a batch of {batch_size}")
        self.requested = requested
        self.targets: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.targets = resolve_targets(logits, self.requested)
        kinds = sorted(set(self.names))
        if len(kinds) == 1:
            return OBJECTIVES[kinds[0]](logits, self.targets)
        values = torch.zeros(logits.shape[0], device=logits.device, dtype=logits.dtype)
        for name in kinds:
            mask = torch.tensor([n == name for n in self.names], device=logits.device)
            values = torch.where(mask, OBJECTIVES[name](logits, self.targets), values)
        return values
