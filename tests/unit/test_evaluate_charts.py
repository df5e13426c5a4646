"""The report's figure from constructed results: each chart's size, and its marks where the
numbers put them, in the method's colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saliency_tools.evaluate import charts
from saliency_tools.evaluate.experiment import RANDOM, Results, Settings
from saliency_tools.evaluate.photos import Photos
from saliency_tools.evaluate.summary import summarise
from saliency_tools.metrics import Curves, Interval, RandomisationStep

FRACTIONS = torch.linspace(0, 1, 5)
PHOTO = (10, 200, 30)  # the photos' colour: no method's


def pixel(image: Image.Image, x: float, y: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(image)[round(y), round(x)])


def has_colour(image: Image.Image, rgb: tuple[int, int, int]) -> bool:
    return bool((np.asarray(image) == rgb).all(axis=-1).any())


def curves(*rows: float) -> Curves:
    """One flat curve per photo at each value."""
    return Curves(FRACTIONS, torch.tensor(rows)[:, None].repeat(1, len(FRACTIONS)))


def results(randomised: int = 2) -> Results:
    """Two photos, vanilla and random; vanilla's trained map is a ramp, its randomised one flat."""
    crops = [Image.new("RGB", (224, 224), PHOTO)] * 2
    ramp = torch.linspace(0, 1, 16).view(1, 4, 4).repeat(randomised, 1, 1)
    rho = torch.tensor([1.0, float("nan")][:randomised], dtype=torch.float64)
    steps = [
        RandomisationStep(None, ramp, torch.ones(randomised, dtype=torch.float64)),
        RandomisationStep("classifier.1", torch.zeros_like(ramp), rho),
    ]
    return Results(
        Photos(["p", "q"], torch.zeros(2, 3, 224, 224), crops),
        ["cat", "cup"],
        {"vanilla": curves(0.1, 0.3), RANDOM: curves(0.5, 0.5)},
        {"vanilla": curves(0.8, 0.6), RANDOM: curves(0.4, 0.4)},
        {"vanilla": steps},
        Settings(),
    )


def test_the_curve_chart_draws_each_method_s_mean_over_the_photos() -> None:
    drawn = charts.chart("title", "fraction", results().deletion)
    assert drawn.size == (560, 330)
    # Plot area x 58..546, y 36 (p = 1) .. 280 (p = 0): vanilla's mean 0.2, random's 0.5.
    assert pixel(drawn, 300, 280 - 0.2 * 244) == charts.COLOURS["vanilla"]
    assert pixel(drawn, 300, 280 - 0.5 * 244) == charts.COLOURS[RANDOM]
    assert pixel(drawn, 300, 280 - 0.1 * 244) == charts.WHITE  # not the first photo's 0.1
    assert has_colour(drawn, charts.MUTED)  # axes and labels


def test_the_gains_chart_puts_each_mean_on_its_side_of_zero() -> None:
    gains = {"vanilla": Interval(0.5, 0.25, 0.75, 5), "gradcam": Interval(-0.3, -0.4, -0.2, 5)}
    drawn = charts.gains_chart("title", gains)
    assert drawn.size == (560, 34 + 26 * 2 + 34)
    # Axis to +-0.9 (0.75 * 1.1 rounded up) over x 170..540: x = 170 + (g + 0.9) / 1.8 * 370.
    for row, (name, gain) in enumerate(gains.items()):
        y = 34 + 26 * row + 13
        at = 170 + (gain.mean + 0.9) / 1.8 * 370
        assert pixel(drawn, at, y - 3) == charts.COLOURS[name]  # the mean's dot
        assert pixel(drawn, at + 15, y - 3) == charts.WHITE  # above the interval's line
    assert pixel(drawn, 170 + 0.5 * 370, 34 + 5) == charts.MUTED  # the zero line


def test_a_gain_without_an_interval_is_a_dot_alone() -> None:
    drawn = charts.gains_chart("title", {"vanilla": Interval(0.1, float("nan"), float("nan"), 1)})
    y = 34 + 13
    colour = charts.COLOURS["vanilla"]
    row = np.asarray(drawn)[y, 170:]
    marked = np.flatnonzero((row == colour).all(axis=-1))
    assert 0 < len(marked) <= 9  # the dot's width, no line


def test_the_map_tile_is_capped_at_the_99th_percentile() -> None:
    saliency = torch.arange(100, dtype=torch.float32).view(10, 10)
    tile = np.asarray(charts.map_tile(saliency, 10))
    assert tile.shape == (10, 10) and tile[0, 0] == 0 and tile[9, 9] == 255
    assert tile[9, 8] == 255  # 98.01 is the cap: 98 is within rounding of white
    assert tile[5, 0] == round(50 / 98.01 * 255)
    assert not np.asarray(charts.map_tile(torch.zeros(4, 4), 8)).any()  # no cap: black
    assert charts.map_tile(saliency, 32).size == (32, 32)


def test_the_randomisation_grid_shows_the_photo_and_each_step_s_map() -> None:
    grid = charts.randomisation_grid(results(), photo=0, tile=40)
    # One label column (150), the photo and two steps; a header (34), one method row.
    assert grid.size == (150 + 3 * 44, 34 + 40 + 18 + 4 + 4)
    assert pixel(grid, 150 + 20, 34 + 20) == PHOTO
    trained = np.asarray(grid)[34 : 34 + 40, 194 : 194 + 40]
    assert trained[0, 0].tolist() == [0, 0, 0] and trained[-1, -1].tolist() == [255] * 3
    randomised = np.asarray(grid)[34 : 34 + 40, 238 : 238 + 40]
    assert not randomised.any()  # a constant map is black


def test_the_legend_strokes_each_method_in_its_colour() -> None:
    drawn = charts.legend(["vanilla", RANDOM], 400)
    assert drawn.size == (400, 26)
    assert pixel(drawn, 8 + 12, 13) == charts.COLOURS["vanilla"]
    assert has_colour(drawn, charts.COLOURS[RANDOM])


@pytest.mark.parametrize("randomised", [1, 2])
def test_the_figure_stacks_the_legend_charts_and_grid(randomised: int) -> None:
    made = results(randomised)
    drawn = charts.figure(made, summarise(made))
    assert drawn.width == 2 * 560 + 2 * 12  # the two charts side by side are the widest row
    grid = charts.randomisation_grid(made, photo=0)
    gains = 34 + 26 + 34
    assert drawn.height == 12 + 26 + (330 + 8) + (gains + 8) + 28 + grid.height + 12
    for colour in (charts.COLOURS["vanilla"], charts.COLOURS[RANDOM], PHOTO):
        assert has_colour(drawn, colour)
