"""The tests' own yardsticks: the naive gradient map is the textbook one, and "the same map up to
float32 rounding" can fail."""

from __future__ import annotations

import numpy as np
import pytest
import reference
import torch


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


def test_gradient_map_of_a_linear_model_is_its_weights() -> None:
    """For logits = W x + b the gradients have a closed form: W[y] for the score S_y, and
    sum_k (softmax_k - [k = y]) W[k] for the cross-entropy."""
    generator = torch.Generator().manual_seed(5)
    linear = torch.nn.Linear(3 * 4 * 5, 7).double()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(7, 60, generator=generator, dtype=torch.float64))
    model = torch.nn.Sequential(torch.nn.Flatten(), linear)
    image = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    weights = linear.weight.detach()
    logits = linear(image.flatten()).detach()
    probabilities = torch.softmax(logits, 0)

    def expected(gradient: torch.Tensor) -> torch.Tensor:
        return gradient.view(3, 4, 5).abs().max(dim=0).values

    for target in (None, 2):
        y = int(logits.argmax()) if target is None else target
        grad, got_y, got_logits = reference.gradient_map(model, image, target, "score")
        assert got_y == y
        torch.testing.assert_close(got_logits, logits)
        torch.testing.assert_close(grad, expected(weights[y]))
        loss_gradient = (probabilities - torch.eye(7, dtype=torch.float64)[y]) @ weights
        grad, _, _ = reference.gradient_map(model, image, target, "loss")
        torch.testing.assert_close(grad, expected(loss_gradient))
