"""Text on the Pillow figures (scripts/figure.py, scripts/evaluate.py): one font, one measure.

Every figure draws on RGB images, whose text is rendered in Pillow's ``L`` font mode, so a width
measured here on a scratch canvas equals the width ``ImageDraw.textlength`` gives on the figure.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
Colour = tuple[int, int, int]
INK: Colour = (0, 0, 0)

_SCRATCH = ImageDraw.Draw(Image.new("RGB", (1, 1)))  # measures text; nothing is kept


def load_font(size: int) -> Font:
    """Pillow's default font, ``size`` pixels high (its bundled TrueType face)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a small fixed bitmap font
        return ImageFont.load_default()


def text_width(text: str, font: Font) -> float:
    """How far ``text`` advances in ``font``, in pixels."""
    return _SCRATCH.textlength(text, font=font)


def line_box(font: Font) -> tuple[int, int]:
    """(top, height) of a line of ``font``: how far below the point text is drawn at its tallest
    letters begin, and how far its letters reach from there down to the lowest descender."""
    _, top, _, bottom = _SCRATCH.textbbox((0, 0), "Ag", font=font)
    return top, bottom - top


def centred(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Font, fill: Colour = INK
) -> None:
    """Draw ``text`` centred on ``xy[0]``, drawn at height ``xy[1]``."""
    draw.text((xy[0] - text_width(text, font) / 2, xy[1]), text, font=font, fill=fill)
