"""scripts/figure.py --before-after: the old rendering rebuilt from the service's own pictures."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from saliency_tools import figure
from saliency_tools.client import ServiceError


def png(colour: tuple[int, int, int], size: int = 224) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_old_overlay_is_a_constant_half_blend_of_the_unclipped_heatmap() -> None:
    crop = Image.new("RGB", (224, 224), (200, 100, 0))
    before = {"heatmap": {"png": png((0, 50, 250)), "clip": 100}}
    after = {"heatmap": {"png": png((1, 2, 3))}, "overlay": {"png": png((4, 5, 6))}}
    (old_title, old), (new_title, new) = figure.before_after_rows(crop, before, after)
    assert "hottest pixel" in old_title and "99th percentile" in new_title
    assert old[0] is crop and new[0] is crop
    assert np.asarray(old[2])[0, 0].tolist() == [100, 75, 125]  # (crop + heatmap) / 2
    assert np.asarray(new[1])[0, 0].tolist() == [1, 2, 3]
    assert np.asarray(new[2])[0, 0].tolist() == [4, 5, 6]  # the service's own overlay


def test_an_answer_without_the_pictures_is_an_error() -> None:
    crop = Image.new("RGB", (224, 224))
    with pytest.raises(ServiceError, match="overlay"):
        figure.before_after_rows(
            crop, {"heatmap": {"png": png((0, 0, 0))}}, {"heatmap": {"png": png((0, 0, 0))}}
        )


def test_the_figure_is_a_grid_of_tiles_of_the_requested_size() -> None:
    tiles = [Image.new("RGB", (224, 224), (255, 0, 0))] * 3
    drawn = figure.compose_before_after([("a", tiles), ("b", tiles)], ["x", "y", "z"], 100)
    assert drawn.width == 2 * figure.MARGIN + 3 * 100 + 2 * figure.GAP
    assert drawn.height > 2 * 100


def test_before_after_takes_one_image(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        figure.parse_args(["a.png", "b.png", "--before-after"])
    assert "one image" in capsys.readouterr().err
