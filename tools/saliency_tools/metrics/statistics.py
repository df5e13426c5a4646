"""Statistics over photos: means with Student-t confidence intervals, paired differences, the
deletion curve's half-life, and how alike the maps of different photos are.

Pure Python and PyTorch (no SciPy): Student's t distribution for an integer number of degrees of
freedom has a closed-form CDF (Abramowitz & Stegun 26.7.3 and 26.7.4), inverted by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from saliency_tools.ranks import average_ranks

from .faithfulness import Curves

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over photos and its two-sided confidence interval (``nan`` with fewer than 2)."""

    mean: float
    low: float
    high: float
    count: int  # finite values the mean is over

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def excludes_zero(self) -> bool:
        return self.defined and (self.low > 0 or self.high < 0)


def t_within(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with ``df`` (integer >= 1) degrees of freedom.

    Abramowitz & Stegun 26.7.3 (odd ``df``) and 26.7.4 (even ``df``): finite sums in
    ``theta = atan(t / sqrt(df))``.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    sine, cosine = math.sin(theta), math.cos(theta)
    total = 0.0
    if df % 2:
        term = cosine  # cos, 2/3 cos^3, (2*4)/(3*5) cos^5, ... up to cos^(df-2)
        for k in range((df - 1) // 2):
            total += term
            term *= cosine**2 * (2 * k + 2) / (2 * k + 3)
        return 2 / math.pi * (theta + sine * total)
    term = 1.0  # 1, 1/2 cos^2, (1*3)/(2*4) cos^4, ... up to cos^(df-2)
    for k in range(df // 2):
        total += term
        term *= cosine**2 * (2 * k + 1) / (2 * k + 2)
    return sine * total


def t_critical(level: float, df: int) -> float:
    """The ``t`` with ``P(|T| <= t) = level``: the half-width of a ``level`` interval in standard
    errors (12.706 for 1 degree of freedom at 95%, 1.984 for 99)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = 0.0, 1.0
    while t_within(high, df) < level:
        high *= 2
    for _ in range(200):  # bisection to float precision
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_within(middle, df) < level else (low, middle)
    return high


def mean_interval(values: torch.Tensor, level: float = LEVEL) -> Interval:
    """Mean of the finite values and its Student-t interval ``mean +- t * sd / sqrt(n)``."""
    finite = values.double()[values.double().isfinite()]
    count = len(finite)
    if count == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(finite.mean())
    if count == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_critical(level, count - 1) * float(finite.std()) / math.sqrt(count)
    return Interval(mean, mean - half, mean + half, count)


def paired_difference(a: torch.Tensor, b: torch.Tensor, level: float = LEVEL) -> Interval:
    """Mean of ``a - b`` over photos with its interval: each photo is its own control, so the
    photo-to-photo spread of the AUCs (much larger than the methods' differences) cancels."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    return mean_interval(a.double() - b.double(), level)


def half_life(curves: Curves) -> float:
    """Mean fraction of pixels moved when the probability first falls to half its start (the
    last fraction for a curve that never does)."""
    below = curves.probabilities <= curves.probabilities[:, :1] / 2
    last = len(curves.fractions) - 1
    first = torch.where(below.any(dim=1), below.int().argmax(dim=1), last)
    return float(curves.fractions[first].mean())


def across_photos(maps: torch.Tensor) -> float:
    """Mean Spearman correlation between the maps of different photos: what any two maps share
    whatever the image (``nan`` for one photo or constant maps only).

    Ranks are computed once per map and every pair correlated at once (a Gram matrix), so a
    hundred photos cost a hundred sorts, not ten thousand.
    """
    if len(maps) < 2:
        return math.nan
    ranks = average_ranks(maps.flatten(1))
    ranks = ranks - ranks.mean(dim=1, keepdim=True)
    norms = ranks.norm(dim=1)
    usable = norms > 0  # a constant map's correlation is undefined
    if int(usable.sum()) < 2:
        return math.nan
    unit = ranks[usable] / norms[usable, None]
    gram = unit @ unit.T
    pairs = torch.triu_indices(len(unit), len(unit), offset=1)
    return float(gram[pairs[0], pairs[1]].mean())
