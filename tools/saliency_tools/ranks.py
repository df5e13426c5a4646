"""Spearman rank correlation with ties, the one implementation the tooling uses.

Saliency maps quantised to 8 bits tie a lot: ranks are *average* ranks (tied values share the
mean of their ranks), as ``scipy.stats.spearmanr`` does, so a tie is never ordered by accident.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..M of each row of ``(N, M)`` values, tied values sharing their average rank."""
    ranks = torch.empty(values.shape, dtype=torch.float64, device=values.device)
    for n, row in enumerate(values):
        ordered, order = row.sort(stable=True)
        _, group, counts = torch.unique_consecutive(
            ordered, return_inverse=True, return_counts=True
        )
        last = counts.cumsum(0).double()  # the 1-based rank of each group's last member
        ranks[n, order] = (last - (counts.double() - 1) / 2)[group]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps: ``(N, ...)`` x ``(N, ...)`` -> ``(N,)``.

    The Pearson correlation of average ranks (ties handled as ``scipy.stats.spearmanr`` does);
    ``nan`` where a map is constant.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    ra, rb = (average_ranks(x.flatten(1)) for x in (a, b))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    correlation = (ra * rb).sum(dim=1) / denominator
    return torch.where(denominator > 0, correlation, torch.full_like(correlation, float("nan")))


def rank_correlation(a: Any, b: Any) -> float:
    """Spearman's rho of two maps of equal size (tensors, arrays or sequences); NaN if constant."""
    x, y = (_flat(v) for v in (a, b))
    if x.numel() != y.numel():
        raise ValueError(f"sizes differ: {x.numel()} vs {y.numel()}")
    return float(spearman(x[None], y[None])[0])


def _flat(values: Any) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).flatten()
    return torch.from_numpy(np.asarray(values, dtype=np.float64)).flatten()
