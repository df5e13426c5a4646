"""SmoothGrad (attribution.smoothgrad): reduces to vanilla, batching-invariant, seeded, textbook."""

from __future__ import annotations

import pytest
import reference_smoothgrad
import torch
from torch import nn

from saliency_service.attribution import PREDICTED, smoothgrad_saliency, vanilla_saliency

SIZE = 64  # SqueezeNet accepts small inputs: the tests stay fast on a shared CPU

# Every comparison here is about exactness (chunked against whole, batched against alone,
# vectorised against naive), so model and inputs are float64. Measured worst case over these
# tests, 1 and 2 threads, NCHW and channels_last: 8e-16 of the map's maximum. In float32 the same
# comparisons differ by up to ~2e-4 of the maximum on some CPUs (max-pooling near-ties; see
# tests/reference.py), which no tolerance could tell from a small bug. 1e-9 leaves a
# million-fold margin over float64 rounding and still catches an error of 1e-6 in the noise
# level (test_the_tolerance_catches_small_planted_errors).
RTOL = 1e-9


@pytest.fixture(scope="module")
def model(exact_model: torch.nn.Module) -> torch.nn.Module:
    return exact_model


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, SIZE, SIZE, generator=generator).double()


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float64 rounding of differently grouped sums, relative to the map's scale."""
    scale = float(expected.abs().max())
    assert scale > 0, "an all-zero map would make the comparison vacuous"
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


class CountingModel(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.model(x)


def test_zero_noise_gives_the_vanilla_map(model, inputs) -> None:
    vanilla = vanilla_saliency(model, inputs)
    smooth = smoothgrad_saliency(model, inputs, samples=3, noise=0.0)
    close(smooth.maps, vanilla.maps)
    assert torch.equal(smooth.targets, vanilla.targets)
    close(smooth.logits, vanilla.logits)


def test_chunked_equals_unchunked(model, inputs) -> None:
    """On 40 x 40 corners: how copies are cut into chunks does not depend on the size, and six
    runs of nine copies cost half of what they do at 64 x 64. Measured: a seed, a copy or an
    absolute 1e-6 of noise level off still changes the maps by 1e-2 of their maximum or more."""
    corners = inputs[:, :, :40, :40].contiguous()
    settings = {"samples": [3, 2, 4], "noise": 0.2, "seeds": [5, 6, 7]}
    whole = smoothgrad_saliency(model, corners, **settings)
    for chunk_size in (1, 2, 4, 5, 100):
        close(
            smoothgrad_saliency(model, corners, **settings, chunk_size=chunk_size).maps, whole.maps
        )


def test_all_copies_of_all_samples_share_as_few_passes_as_the_chunk_size_allows(
    model, inputs
) -> None:
    counting = CountingModel(model)
    smoothgrad_saliency(counting, inputs, samples=[3, 2, 4], noise=0.1, chunk_size=4)
    assert counting.batches == [3, 4, 4, 1]  # the clean pass, then ceil(9 / 4) gradient passes
    counting.batches.clear()
    smoothgrad_saliency(counting, inputs, samples=[3, 2, 4], noise=0.1)
    assert counting.batches == [3, 9]


def test_the_same_seed_gives_the_same_map_and_other_seeds_differ(model, inputs) -> None:
    first = smoothgrad_saliency(model, inputs, samples=3, noise=0.15, seeds=42).maps
    again = smoothgrad_saliency(model, inputs, samples=3, noise=0.15, seeds=42).maps
    other = smoothgrad_saliency(model, inputs, samples=3, noise=0.15, seeds=43).maps
    assert torch.equal(first, again)
    for n in range(len(inputs)):
        assert (first[n] - other[n]).abs().max() > 0.05 * first[n].max()


def test_the_global_random_state_is_neither_used_nor_changed(model, inputs) -> None:
    state = torch.random.get_rng_state()
    first = smoothgrad_saliency(model, inputs[:1], samples=2, noise=0.2, seeds=3).maps
    torch.manual_seed(999)
    second = smoothgrad_saliency(model, inputs[:1], samples=2, noise=0.2, seeds=3).maps
    torch.random.set_rng_state(state)
    assert torch.equal(first, second)


def test_mixed_per_sample_settings_equal_each_sample_computed_alone(model, inputs) -> None:
    samples, noise, seeds = [2, 3, 1], [0.1, 0.25, 0.0], [11, 12, 13]
    objectives = ["score", "loss", "score"]
    targets = torch.tensor([5, PREDICTED, 7])
    together = smoothgrad_saliency(
        model, inputs, targets, objectives, samples, noise, seeds, chunk_size=4
    )
    for n in range(len(inputs)):
        alone = smoothgrad_saliency(
            model,
            inputs[n : n + 1],
            targets[n : n + 1],
            objectives[n],
            samples[n],
            noise[n],
            seeds[n],
        )
        close(together.maps[n], alone.maps[0])
        assert together.targets[n] == alone.targets[0]


@pytest.mark.parametrize(("target", "objective"), [(None, "score"), (3, "loss")])
def test_equals_a_naive_one_copy_at_a_time_smoothgrad(model, inputs, target, objective) -> None:
    x = inputs[1]
    expected, expected_target = reference_smoothgrad.smoothgrad(
        model, x, samples=3, noise=0.2, seed=8, target=target, objective=objective
    )
    requested = None if target is None else torch.tensor([target])
    result = smoothgrad_saliency(
        model, x[None], requested, objective, samples=3, noise=0.2, seeds=8, chunk_size=2
    )
    assert int(result.targets[0]) == expected_target
    close(result.maps[0], expected)


def test_the_tolerance_catches_small_planted_errors(model, inputs) -> None:
    """``close`` tells a correct map from one whose noise level is off by 1e-6 (relative; the
    loss objective, whose gradient is smooth in the input: the score's is piecewise constant),
    from one that drew another seed, and from one that skipped a copy."""
    x = inputs[0]
    settings = {"samples": 3, "noise": 0.2, "seed": 8, "objective": "loss"}
    result = smoothgrad_saliency(model, x[None], None, "loss", 3, 0.2, 8, chunk_size=2)
    close(result.maps[0], reference_smoothgrad.smoothgrad(model, x, **settings)[0])
    planted = [
        {**settings, "noise": 0.2 * (1 + 1e-6)},  # off by 2e-8 of the maximum
        {**settings, "seed": 9},
        {**settings, "samples": 2},
    ]
    for wrong in planted:
        with pytest.raises(AssertionError):
            close(result.maps[0], reference_smoothgrad.smoothgrad(model, x, **wrong)[0])


@pytest.mark.parametrize("aggregate", ["mean_square", "variance"])
@pytest.mark.parametrize(("target", "objective"), [(None, "score"), (3, "loss")])
def test_smoothgrad_squared_and_vargrad_equal_the_textbook_formulas(
    model, inputs, aggregate, target, objective
) -> None:
    x = inputs[2]
    expected, _ = reference_smoothgrad.smoothgrad(
        model, x, 4, 0.2, 21, target, objective, aggregate=aggregate
    )
    requested = None if target is None else torch.tensor([target])
    result = smoothgrad_saliency(
        model, x[None], requested, objective, 4, 0.2, 21, chunk_size=3, aggregates=aggregate
    )
    close(result.maps[0], expected)
    mean, _ = reference_smoothgrad.smoothgrad(model, x, 4, 0.2, 21, target, objective)
    with pytest.raises(AssertionError):  # the aggregates are told apart
        close(result.maps[0], mean)


def test_one_batch_mixes_aggregates_as_if_each_sample_were_alone(model, inputs) -> None:
    aggregates = ["variance", "mean", "mean_square"]
    together = smoothgrad_saliency(
        model, inputs, None, "score", [2, 3, 2], 0.1, [1, 2, 3], chunk_size=4, aggregates=aggregates
    )
    for n, aggregate in enumerate(aggregates):
        alone = smoothgrad_saliency(
            model, inputs[n : n + 1], None, "score", [2, 3, 2][n], 0.1, n + 1, aggregates=aggregate
        )
        close(together.maps[n], alone.maps[0])


def test_variance_of_one_copy_is_zero_and_of_no_noise_too(model, inputs) -> None:
    one = smoothgrad_saliency(model, inputs[:1], samples=1, noise=0.3, aggregates="variance")
    still = smoothgrad_saliency(model, inputs[:1], samples=3, noise=0.0, aggregates="variance")
    assert float(one.maps.abs().max()) == 0.0
    assert float(still.maps.abs().max()) == 0.0


def test_explicit_targets_are_explained(model, inputs) -> None:
    requested = torch.tensor([1, 2, 3])
    result = smoothgrad_saliency(model, inputs, requested, samples=2, noise=0.1, seeds=4)
    assert result.targets.tolist() == [1, 2, 3]
    for n, target in enumerate((1, 2, 3)):
        expected, _ = reference_smoothgrad.smoothgrad(model, inputs[n], 2, 0.1, 4, target)
        close(result.maps[n], expected)


class NoiseSensitive(nn.Module):
    """Predicts class 0 for a constant image, class 1 once noise adds enough variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
        variance = centred.square().mean(dim=(1, 2, 3))
        return torch.stack([-variance + x.mean(dim=(1, 2, 3)), torch.full_like(variance, -0.5)], 1)


def test_the_predicted_class_comes_from_the_clean_input_not_from_the_noisy_copies() -> None:
    model = NoiseSensitive()
    x = torch.zeros(1, 3, 8, 8)
    x[..., 0, 0] = 1.0  # max - min = 1, so noise 1.0 means sigma 1: variance ~1 > 0.5
    with torch.no_grad():
        assert model(x).argmax().item() == 0
        noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        assert model(noisy).argmax().item() == 1
    result = smoothgrad_saliency(model, x, samples=4, noise=1.0, seeds=1)
    assert result.targets.tolist() == [0]
    explicit = smoothgrad_saliency(model, x, torch.tensor([0]), samples=4, noise=1.0, seeds=1)
    assert torch.equal(result.maps, explicit.maps)


def test_works_on_inference_tensors_as_under_torchserve(model, inputs) -> None:
    expected = smoothgrad_saliency(model, inputs, samples=2, noise=0.1, seeds=2).maps
    with torch.inference_mode():
        frozen = inputs.clone()
        actual = smoothgrad_saliency(model, frozen, samples=2, noise=0.1, seeds=2).maps
    assert torch.equal(actual, expected)


@pytest.mark.parametrize(
    "settings",
    [
        {"samples": 0},
        {"samples": 2.5},
        {"samples": [1, 2]},
        {"noise": -0.1},
        {"noise": float("nan")},
        {"noise": True},
        {"seeds": -1},
        {"seeds": 2**63},
        {"chunk_size": 0},
        {"objectives": "margin"},
        {"aggregates": "median"},
        {"aggregates": ["mean"]},
    ],
)
def test_invalid_settings_are_refused(model, inputs, settings) -> None:
    with pytest.raises(ValueError):
        smoothgrad_saliency(model, inputs, **settings)
