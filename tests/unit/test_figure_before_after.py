"""scripts/figure.py: the crop the model saw, decoded by the service's own code, and
--before-after's old rendering rebuilt from the service's own pictures."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from saliency_service import images
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


def encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_the_crop_is_upright_by_the_photo_s_exif_orientation() -> None:
    # Stored 200 x 100, left half red, right half blue; orientation 6: turn it 90 degrees
    # clockwise to show it, so it stands 100 x 200 with red on top.
    stored = Image.new("RGB", (200, 100), (255, 0, 0))
    stored.paste((0, 0, 255), (100, 0, 200, 100))
    exif = stored.getexif()
    exif[0x0112] = 6
    crop = np.asarray(figure.model_crop(encoded(stored, exif=exif), [0, 0, 100, 200], 50))
    assert crop.shape == (50, 50, 3)
    assert crop[5, 25].tolist() == [255, 0, 0] and crop[45, 25].tolist() == [0, 0, 255]


def test_transparency_is_flattened_on_white_and_the_box_is_cut_out() -> None:
    image = Image.new("RGBA", (120, 60), (0, 0, 0, 0))  # transparent black on the left
    image.paste((0, 128, 0, 255), (60, 0, 120, 60))  # opaque green on the right
    crop = np.asarray(figure.model_crop(encoded(image), [30, 0, 90, 60], 40))
    assert crop[20, 5].tolist() == [255, 255, 255] and crop[20, 35].tolist() == [0, 128, 0]
    right = np.asarray(figure.model_crop(encoded(image), [60, 0, 120, 60], 40))
    assert (right[:, 2:] == [0, 128, 0]).all()  # the filter reaches a pixel past the box


def test_a_16_bit_photo_looks_as_the_model_saw_it() -> None:
    """Mid-grey in 16 bits is mid-grey in the crop, as in the server's own crop (not clipped
    to white, which a plain 8-bit conversion of the high values would give)."""
    data = encoded(Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16)))
    served = images.preprocess(images.decode(data))
    crop = np.asarray(figure.model_crop(data, list(served.crop_box), 224))
    assert crop[0, 0].tolist() == np.asarray(served.crop)[0, 0].tolist() == [128, 128, 128]
