"""The tests' own yardstick for "the same map up to float32 rounding" can fail."""

from __future__ import annotations

import numpy as np
import pytest
import reference


@pytest.fixture()
def a_map() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (224, 224)).astype(np.float64)


def test_rounding_sized_differences_agree(a_map) -> None:
    other = a_map + np.random.default_rng(4).integers(-1, 2, a_map.shape)  # +-1 level everywhere
    other[:10, :10] += 4  # an isolated patch, as a flipped max-pooling argmax gives
    reference.assert_maps_agree(a_map, other, 255)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: np.roll(m, 1, axis=1),  # misplaced by one pixel
        lambda m: m * 0.97,  # a 3% scale error: ~4 levels on the bright half
        lambda m: np.where(np.arange(m.size).reshape(m.shape) % 40 == 0, m + 2, m),  # 2.5% off
        lambda m: np.where(np.arange(m.size).reshape(m.shape) == 777, m + 6, m),  # one pixel 6 off
    ],
)
def test_real_differences_do_not(a_map, change) -> None:
    with pytest.raises(AssertionError):
        reference.assert_maps_agree(a_map, change(a_map), 255)
