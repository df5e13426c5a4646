"""A naive SmoothGrad, for tests: one noisy copy at a time, ``.backward()``, no batching.

It shares no code with ``saliency_service``; it follows the service's documented noise protocol
(a CPU ``torch.Generator`` seeded with the request's seed, one ``randn`` of the image's shape per
copy, sigma = noise x (max - min) of the preprocessed image) and averages the vanilla maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothgrad(
    model: torch.nn.Module,
    x: torch.Tensor,
    samples: int,
    noise: float,
    seed: int,
    target: int | None = None,
    objective: str = "score",
    aggregate: str = "mean",
) -> tuple[torch.Tensor, int]:
    """(map (H, W), target) for one preprocessed image ``x`` of shape (C, H, W).

    ``aggregate``: ``"mean"`` (SmoothGrad), ``"mean_square"`` (SmoothGrad-Squared) or
    ``"variance"`` (VarGrad, population variance) of the copies' maps, by the textbook formulas.
    """
    with torch.no_grad():
        y = int(model(x[None]).argmax()) if target is None else target
    generator = torch.Generator().manual_seed(seed)
    sigma = noise * float(x.max() - x.min())
    maps = []
    for _ in range(samples):
        copy = x.clone()
        if sigma:
            copy = copy + sigma * torch.randn(x.shape, generator=generator)
        copy = copy[None].requires_grad_(True)
        logits = model(copy)
        if objective == "score":
            logits[0, y].backward()
        else:
            F.cross_entropy(logits, torch.tensor([y])).backward()
        maps.append(copy.grad[0].abs().amax(dim=0))
    stacked = torch.stack(maps)
    if aggregate == "mean":
        return stacked.sum(dim=0) / samples, y
    if aggregate == "mean_square":
        return stacked.square().sum(dim=0) / samples, y
    mean = stacked.sum(dim=0) / samples
    return (stacked - mean).square().sum(dim=0) / samples, y
