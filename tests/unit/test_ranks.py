"""saliency_tools.ranks: Spearman's rho with average ranks, against scipy, with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saliency_tools.ranks import average_ranks, rank_correlation, spearman


def test_average_ranks_share_ties() -> None:
    ranks = average_ranks(torch.tensor([[10.0, 20.0, 20.0, 5.0], [1.0, 1.0, 1.0, 1.0]]))
    assert ranks.tolist() == [[2.0, 3.5, 3.5, 1.0], [2.5, 2.5, 2.5, 2.5]]


def test_spearman_matches_scipy_with_ties_and_is_invariant_to_monotone_maps() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(5)
    a = torch.randint(0, 6, (3, 8, 9), generator=generator).float()
    b = a + torch.randint(0, 4, (3, 8, 9), generator=generator).float()
    ours = spearman(a, b)
    for n in range(3):
        expected = stats.spearmanr(a[n].flatten().numpy(), b[n].flatten().numpy()).statistic
        assert float(ours[n]) == pytest.approx(expected, abs=1e-10)
    torch.testing.assert_close(spearman(a, a.exp() * 3), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(spearman(a, -a), -torch.ones(3, dtype=torch.float64))
    assert torch.isnan(spearman(a[:1], torch.zeros(1, 8, 9))).all()


def test_rank_correlation_takes_tensors_arrays_and_lists_of_any_shape() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = np.random.default_rng(3)
    a = generator.integers(0, 5, (7, 6)).astype(np.float32)  # 8-bit-like maps: many ties
    b = a + generator.integers(0, 3, (7, 6))
    expected = stats.spearmanr(a.ravel(), b.ravel()).statistic
    assert rank_correlation(a, b) == pytest.approx(expected, abs=1e-12)
    assert rank_correlation(torch.from_numpy(a), b.ravel().tolist()) == pytest.approx(expected)
    # Ordinal ranks (argsort of argsort) would break the ties by position and disagree:
    ordinal = [np.argsort(np.argsort(v.ravel(), kind="stable")) for v in (a, b)]
    assert abs(float(np.corrcoef(*ordinal)[0, 1]) - expected) > 1e-3
    assert math.isnan(rank_correlation(a, np.ones_like(a)))
    with pytest.raises(ValueError, match="sizes differ"):
        rank_correlation(a, b[:3])
