"""scripts/soak.py's memory verdict: a plateau after warm-up passes, a steady climb does not."""

from __future__ import annotations

from saliency_tools.soak import memory_trend

MINUTES = 30


def samples(rss_at) -> list[tuple[float, dict[int, float]]]:
    return [(t * 30.0, {7: rss_at(t * 30.0)}) for t in range(MINUTES * 2 + 1)]


def test_a_plateau_after_warm_up_is_flat() -> None:
    # Climbs for 9 minutes while ever larger batches occur, then wobbles around 2.1 GB.
    trend = samples(lambda at: min(1500 + at / 540 * 600, 2100) + (60 if at % 60 else -60))
    growth, middle, last = memory_trend(trend, 7, MINUTES * 60)
    assert middle == last == 2160 and growth == 0


def test_a_leak_is_caught() -> None:
    leak = samples(lambda at: 800 + at / 60 * 10)  # 10 MiB a minute
    growth, _, _ = memory_trend(leak, 7, MINUTES * 60)
    assert growth >= 95  # ten minutes between the two thirds' peaks: over --max-growth's 50


def test_a_worker_without_samples_has_no_trend() -> None:
    assert memory_trend(samples(lambda at: 1000.0), 8, MINUTES * 60) == (0.0, 0.0, 0.0)
