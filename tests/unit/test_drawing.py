"""The figures' shared text helpers: the font, its measures, and centred text where asked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from saliency_tools import drawing


def ink(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns holding anything but white."""
    dark = (np.asarray(image) < 255).any(axis=-1)
    return np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))


def test_the_font_has_the_size_asked_for() -> None:
    small, large = drawing.load_font(12), drawing.load_font(36)
    assert drawing.line_box(large)[1] > 2 * drawing.line_box(small)[1]
    assert drawing.text_width("Ag", large) > 2 * drawing.text_width("Ag", small)


def test_an_old_pillow_gets_its_fixed_bitmap_font(monkeypatch) -> None:
    fixed = ImageFont.load_default()

    def old_load_default(*arguments, **keywords):  # Pillow < 10.1 takes no size
        if arguments or keywords:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return fixed

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    assert drawing.load_font(20) is fixed


def test_widths_are_those_measured_on_a_figure() -> None:
    font = drawing.load_font(15)
    figure = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    for text in ("", "vanilla", "integrated_gradients", "p = 0.51"):
        assert drawing.text_width(text, font) == figure.textlength(text, font=font)
    assert drawing.text_width("", font) == 0
    assert drawing.text_width("vanillas", font) > drawing.text_width("vanilla", font)


def test_the_line_box_is_where_the_letters_land() -> None:
    font = drawing.load_font(20)
    top, height = drawing.line_box(font)
    image = Image.new("RGB", (80, 60), (255, 255, 255))
    ImageDraw.Draw(image).text((5, 10 - top), "Ag", font=font, fill=drawing.INK)
    rows, _ = ink(image)
    assert (rows[0], rows[-1] + 1) == (10, 10 + height)


@pytest.mark.parametrize("x", [40.0, 61.5])
def test_centred_text_is_centred_on_x_at_the_given_height(x: float) -> None:
    font = drawing.load_font(16)
    image = Image.new("RGB", (120, 40), (255, 255, 255))
    drawing.centred(ImageDraw.Draw(image), (x, 8), "Ag", font, (200, 0, 0))
    rows, columns = ink(image)
    assert abs((columns[0] + columns[-1] + 1) / 2 - x) <= 1.5  # glyph bearings: a pixel or so
    top, _ = drawing.line_box(font)
    assert rows[0] == 8 + top  # drawn at 8: its tallest letter's top where line_box says
    assert ((np.asarray(image) == (200, 0, 0)).all(axis=-1)).any()  # in the colour asked for
