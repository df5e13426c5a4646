"""The metric code (saliency_tools.metrics) on cases whose answers are known in advance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from saliency_service.attribution import vanilla_saliency
from saliency_service.model import build_model
from saliency_tools.metrics import (
    Curves,
    Interval,
    across_photos,
    auc,
    blur,
    cascading_blocks,
    cascading_randomisation,
    cascading_randomisation_many,
    causal_curves,
    deletion_curves,
    half_life,
    insertion_curves,
    mean_interval,
    paired_difference,
    saliency_order,
    t_critical,
    t_within,
)
from saliency_tools.ranks import spearman

SIDE = 16
REGION = (slice(0, 4), slice(0, 4))  # the only pixels the synthetic model looks at
HIGH, OTHER = 10.0, 5.0  # target logit with the region intact; the other class's logit


class RegionModel(nn.Module):
    """Two classes; class 0's logit is a weighted sum over the region, class 1's is constant.

    With the region at 1 and weights summing to 1 the logit is ``HIGH`` (p(class 0) ~ 0.99); with
    the region at 0 it is 0 (p ~ 0.007).
    """

    def __init__(self) -> None:
        super().__init__()
        weights = torch.zeros(SIDE, SIDE)
        weights[REGION] = (torch.randperm(16) + 1.0).reshape(4, 4)
        self.register_buffer("weights", weights / weights.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = HIGH * (x.mean(dim=1) * self.weights).sum(dim=(1, 2))
        return torch.stack([score, torch.full_like(score, OTHER)], dim=1)


@pytest.fixture(scope="module")
def region_model() -> RegionModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return RegionModel().eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    x = torch.zeros(1, 3, SIDE, SIDE)
    x[(..., *REGION)] = 1.0
    return x


@pytest.fixture(scope="module")
def maps(region_model) -> dict[str, torch.Tensor]:
    good = region_model.weights[None].clone()
    generator = torch.Generator().manual_seed(3)
    return {
        "good": good,
        "reverse": -good,
        "random": torch.rand(1, SIDE, SIDE, generator=generator),
    }


TARGET = torch.tensor([0])


def test_deletion_ranks_the_true_map_above_random_above_its_reverse(region_model, image, maps):
    scores = {
        name: float(deletion_curves(region_model, image, m, TARGET, pixels_per_step=4).auc[0])
        for name, m in maps.items()
    }
    assert scores["good"] < scores["random"] < scores["reverse"], scores  # lower is better
    assert scores["good"] < 0.1 and scores["reverse"] > 0.9


def test_insertion_ranks_the_true_map_above_random_above_its_reverse(region_model, image, maps):
    scores = {
        name: float(insertion_curves(region_model, image, m, TARGET, pixels_per_step=4).auc[0])
        for name, m in maps.items()
    }
    assert scores["good"] > scores["random"] > scores["reverse"], scores  # higher is better
    assert scores["good"] > 0.9 and scores["reverse"] < 0.5  # the blurred image: p ~ 0.4


def test_the_deletion_curve_of_a_known_order_is_known_exactly(region_model, image, maps):
    curves = deletion_curves(region_model, image, maps["good"], TARGET, pixels_per_step=1)
    weights = region_model.weights.flatten().sort(descending=True).values
    remaining = 1 - torch.cat([torch.zeros(1), weights.cumsum(0)])  # region mass left at step k
    expected = torch.sigmoid(HIGH * remaining.clamp(min=0) - OTHER)
    assert curves.fractions.shape == (SIDE * SIDE + 1,)
    torch.testing.assert_close(curves.probabilities[0], expected, atol=1e-6, rtol=1e-5)


def test_curves_start_and_end_at_their_endpoint_images(region_model, image, maps):
    def probability(x: torch.Tensor) -> float:
        return float(torch.softmax(region_model(x), dim=1)[0, 0])

    deletion = deletion_curves(region_model, image, maps["random"], TARGET, pixels_per_step=7)
    insertion = insertion_curves(region_model, image, maps["random"], TARGET, pixels_per_step=7)
    assert float(deletion.probabilities[0, 0]) == pytest.approx(probability(image))
    assert float(deletion.probabilities[0, -1]) == pytest.approx(probability(image * 0))
    assert float(insertion.probabilities[0, 0]) == pytest.approx(probability(blur(image)))
    assert float(insertion.probabilities[0, -1]) == pytest.approx(probability(image))
    assert probability(blur(image)) < 0.5 < probability(image)  # blurring hides the region


def test_the_last_step_may_move_fewer_pixels(region_model, image, maps):
    curves = deletion_curves(region_model, image, maps["good"], TARGET, pixels_per_step=100)
    torch.testing.assert_close(curves.fractions, torch.tensor([0, 100, 200, 256]) / 256)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_images_and_step_batches_are_independent(region_model, image, maps, batch_size):
    # 3 images x 53 steps: batches of 7 and 64 hold the last steps of one image and the first of
    # the next, so each probability must land in its own (image, step) cell.
    images = torch.cat([image, image.flip(-1), image * 0.5])
    stacked = torch.cat([maps["good"], maps["random"], maps["reverse"]])
    targets = torch.tensor([0, 1, 0])
    together = causal_curves(region_model, images, blur(images), stacked, targets, 5, batch_size)
    for n in range(3):
        alone = causal_curves(
            region_model, images[n : n + 1], blur(images[n : n + 1]), stacked[n : n + 1],
            targets[n : n + 1], 5, 7,
        )  # fmt: skip
        torch.testing.assert_close(together.probabilities[n], alone.probabilities[0])


def test_auc_is_the_trapezoidal_area_over_the_moved_fraction() -> None:
    fractions = torch.linspace(0, 1, 11)
    assert float(auc(torch.ones(11), fractions)) == pytest.approx(1.0)
    assert float(auc(1 - fractions, fractions)) == pytest.approx(0.5)
    uneven = torch.tensor([0.0, 0.5, 1.0])
    assert float(auc(torch.tensor([1.0, 0.0, 0.0]), uneven)) == pytest.approx(0.25)


def test_saliency_order_ranks_the_largest_first_and_keeps_ties_in_raster_order() -> None:
    ranks = saliency_order(torch.tensor([[[0.1, 0.9], [0.5, 0.5]]]))
    assert ranks.tolist() == [[3, 0, 1, 2]]
    assert saliency_order(torch.zeros(1, 2, 2)).tolist() == [[0, 1, 2, 3]]


def test_squeezenet_is_randomised_from_the_classifier_down_to_the_first_convolution() -> None:
    assert cascading_blocks(build_model()) == [
        "classifier.1",
        "features.12",
        "features.11",
        "features.10",
        "features.9",
        "features.7",
        "features.6",
        "features.4",
        "features.3",
        "features.0",
    ]


def small_network() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 5),
        ).eval()


def test_cascading_randomisation_replaces_one_more_block_per_step_and_spares_the_model() -> None:
    model = small_network()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    assert cascading_blocks(model) == ["5", "2.0", "0"]
    changed: list[list[str]] = []

    def explain(network: nn.Module) -> torch.Tensor:
        state = network.state_dict()
        changed.append(
            sorted({k.rsplit(".", 1)[0] for k in state if not torch.equal(state[k], original[k])})
        )
        return torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))

    steps = cascading_randomisation(model, explain, seed=4)
    assert changed == [[], ["5"], ["2.0", "5"], ["0", "2.0", "5"]]
    assert [s.block for s in steps] == [None, "5", "2.0", "0"]
    torch.testing.assert_close(steps[0].correlations, torch.ones(2, dtype=torch.float64))
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name])


def test_a_map_blind_to_the_model_passes_through_randomisation_unchanged() -> None:
    image = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    edges = (image - image.roll(1, dims=-1)).abs().amax(dim=1)  # an edge detector, no model
    steps = cascading_randomisation(small_network(), lambda _: edges)
    assert all(float(step.correlations[0]) == pytest.approx(1.0) for step in steps)


def test_gradients_of_a_linear_model_lose_their_order_once_its_weights_are_redrawn() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 4)).eval()
    image = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([2])
    steps = cascading_randomisation(model, lambda m: vanilla_saliency(m, image, target).maps)
    # The map is max_c |W[2]|: a new draw of W is independent of the old one.
    assert [s.block for s in steps] == [None, "1"]
    assert abs(float(steps[1].correlations[0])) < 0.2


def test_many_methods_see_the_same_randomised_models_once_each() -> None:
    model = small_network()
    calls: list[dict[str, torch.Tensor]] = []
    generator = torch.Generator().manual_seed(6)
    images = torch.randn(2, 3, 8, 8, generator=generator)

    def explain(network: nn.Module) -> dict[str, torch.Tensor]:
        output = network(images).sum()  # depends on every block's weights
        maps = {"input": images.amax(dim=1) * output, "weights": network[0].weight[:2, 0]}
        calls.append(maps)
        return maps

    steps = cascading_randomisation_many(model, explain, seed=4)
    assert len(calls) == 4  # the trained model and one per block, each shared by both methods
    assert set(steps) == {"input", "weights"}
    for name in steps:
        assert [s.block for s in steps[name]] == [None, "5", "2.0", "0"]
        torch.testing.assert_close(steps[name][0].maps, calls[0][name])
    # "weights" shows conv 0's kernels: unchanged until block "0" itself is re-drawn.
    rho = [s.correlations for s in steps["weights"]]
    torch.testing.assert_close(rho[2], torch.ones(2, dtype=torch.float64))
    assert float(rho[3].abs().max()) < 0.9
    single = cascading_randomisation(model, lambda m: explain(m)["weights"], seed=4)
    for one, many in zip(single, steps["weights"], strict=True):
        torch.testing.assert_close(one.correlations, many.correlations)


# --- statistics ---


@pytest.mark.parametrize(
    ("df", "expected"),  # two-sided 95% critical values of Student's t, from printed tables
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (6, 2.447), (10, 2.228), (30, 2.042)],
)
def test_t_critical_matches_the_printed_table(df: int, expected: float) -> None:
    assert t_critical(0.95, df) == pytest.approx(expected, abs=5e-4)


def test_t_distribution_matches_scipy_for_odd_and_even_degrees_of_freedom() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 41), 99, 100]:
        for t in (0.0, 0.3, 1.0, 2.5, 7.0):
            assert t_within(t, df) == pytest.approx(2 * stats.t.cdf(t, df) - 1, abs=1e-12), (df, t)
        assert t_critical(0.95, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-10)
        assert t_critical(0.5, df) == pytest.approx(stats.t.ppf(0.75, df), rel=1e-10)


def test_t_quantiles_approach_the_normal_and_reject_bad_arguments() -> None:
    assert t_within(0.0, 5) == 0.0 and t_within(-2.0, 5) == t_within(2.0, 5)
    assert t_critical(0.95, 10_000) == pytest.approx(1.95996, abs=1e-3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_within(1.0, 0)
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="level"):
            t_critical(level, 3)


def test_mean_interval_of_known_values() -> None:
    interval = mean_interval(torch.tensor([1.0, 2.0, 3.0]))  # mean 2, sd 1, n 3
    half = 4.302653 / math.sqrt(3)
    assert interval.mean == pytest.approx(2.0) and interval.count == 3
    assert (interval.low, interval.high) == pytest.approx((2 - half, 2 + half))
    assert interval.defined and not interval.excludes_zero()  # 3 values: t = 4.30, wide
    assert mean_interval(torch.tensor([4.0, 5.0, 6.0])).excludes_zero()
    narrower = mean_interval(torch.tensor([1.0, 2.0, 3.0]), level=0.5)
    assert narrower.high - narrower.low < interval.high - interval.low


def test_mean_interval_leaves_out_undefined_values_and_says_when_it_has_none() -> None:
    nan = float("nan")
    with_gap = mean_interval(torch.tensor([1.0, nan, 3.0]))
    assert with_gap.count == 2 and with_gap.mean == pytest.approx(2.0)
    assert with_gap.low < 2.0 - 12 < 2.0 + 12 < with_gap.high  # 1 degree of freedom: t = 12.7
    one = mean_interval(torch.tensor([0.5, nan]))
    assert (one.mean, one.count, one.defined, one.excludes_zero()) == (0.5, 1, False, False)
    none = mean_interval(torch.tensor([nan, nan]))
    assert none.count == 0 and math.isnan(none.mean) and not none.defined


def test_an_interval_that_straddles_zero_does_not_exclude_it() -> None:
    assert not Interval(0.1, -0.1, 0.3, 5).excludes_zero()
    assert Interval(-0.2, -0.3, -0.1, 5).excludes_zero()


def test_paired_differences_cancel_what_the_photos_share() -> None:
    base = torch.tensor([0.1, 0.5, 0.9, 0.3])  # photo-to-photo spread far above the difference
    better = base + 0.05 + torch.tensor([0.01, -0.01, 0.01, -0.01])
    paired = paired_difference(better, base)
    assert paired.mean == pytest.approx(0.05) and paired.excludes_zero()
    assert mean_interval(better).low < mean_interval(base).high  # unpaired they overlap
    with pytest.raises(ValueError, match="shapes differ"):
        paired_difference(base, base[:2])


def test_half_life_is_the_first_fraction_at_or_below_half_the_start() -> None:
    fractions = torch.linspace(0, 1, 5)
    probabilities = torch.tensor(
        [
            [0.8, 0.6, 0.4, 0.1, 0.0],  # halves at 0.5
            [0.8, 0.2, 0.9, 0.1, 0.0],  # first at 0.25, whatever comes after
            [0.8, 0.8, 0.8, 0.8, 0.8],  # never: counted as the last fraction
        ]
    )
    curves = Curves(fractions, probabilities)
    assert half_life(curves) == pytest.approx((0.5 + 0.25 + 1.0) / 3)


def test_across_photos_is_the_mean_rank_correlation_of_every_pair() -> None:
    generator = torch.Generator().manual_seed(8)
    a = torch.rand(6, 5, generator=generator)
    assert across_photos(torch.stack([a, a * 2, a + 1])) == pytest.approx(1.0)
    assert across_photos(torch.stack([a, -a])) == pytest.approx(-1.0)
    three = torch.stack([a, torch.rand(6, 5, generator=generator), -a])
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(float(spearman(three[i : i + 1], three[j : j + 1])) for i, j in pairs) / 3
    assert across_photos(three) == pytest.approx(expected)
    # A constant map has no rank order: left out; with one map left there is no pair.
    assert across_photos(torch.stack([a, torch.zeros(6, 5), a * 3])) == pytest.approx(1.0)
    assert math.isnan(across_photos(torch.stack([a, torch.zeros(6, 5)])))
    assert math.isnan(across_photos(a[None]))
