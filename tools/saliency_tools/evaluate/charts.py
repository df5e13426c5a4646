"""The report's figure, drawn with Pillow: mean deletion and insertion curves, each method's gain
over the random map with its interval, and one photo's maps as the model's layers are randomised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from saliency_tools.drawing import centred, load_font, text_width
from saliency_tools.metrics import Curves, Interval

from .experiment import RANDOM, Results
from .summary import Summary
from .tables import layer_name

COLOURS = {  # matplotlib's tab10, random in grey
    "vanilla": (31, 119, 180),
    "gradcam": (255, 127, 14),
    "smoothgrad": (214, 39, 40),
    "smoothgrad_sq": (148, 103, 189),
    "vargrad": (140, 86, 75),
    "integrated_gradients": (44, 160, 44),
    RANDOM: (140, 140, 140),
}
INK, MUTED, GRID, WHITE = (0, 0, 0), (90, 90, 90), (225, 225, 225), (255, 255, 255)


def colour(name: str) -> tuple[int, int, int]:
    return COLOURS.get(name, INK)


def legend(names: Sequence[str], width: int) -> Image.Image:
    """A line of ``width`` pixels: each name after a short stroke of its colour."""
    image = Image.new("RGB", (width, 26), WHITE)
    draw = ImageDraw.Draw(image)
    face, x = load_font(14), 8.0
    for name in names:
        draw.line([(x, 13), (x + 24, 13)], fill=colour(name), width=3)
        draw.text((x + 30, 5), name, font=face, fill=INK)
        x += 30 + text_width(name, face) + 22
    return image


def chart(title: str, xlabel: str, curves: dict[str, Curves]) -> Image.Image:
    """Mean probability curves over the photos, one line per method, on [0, 1] x [0, 1]."""
    width, height = 560, 330
    left, right, top, bottom = 58, width - 14, 36, height - 50
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    small, normal = load_font(13), load_font(15)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x * (right - left), bottom - y * (bottom - top)

    for tick in np.linspace(0, 1, 5):
        draw.line([at(tick, 0), at(tick, 1)], fill=GRID)
        draw.line([at(0, tick), at(1, tick)], fill=GRID)
        label = f"{tick:g}"
        centred(draw, (at(tick, 0)[0], bottom + 5), label, small, MUTED)
        draw.text((left - 8 - text_width(label, small), at(0, tick)[1] - 7), label,
                  font=small, fill=MUTED)  # fmt: skip
    draw.rectangle([left, top, right, bottom], outline=MUTED)
    centred(draw, (width / 2, 8), title, normal)
    centred(draw, (width / 2, height - 24), xlabel, small, MUTED)
    draw.text((6, top - 20), "p(class)", font=small, fill=MUTED)
    for name, curve in curves.items():
        mean = curve.probabilities.mean(dim=0)
        points = [at(float(x), float(y)) for x, y in zip(curve.fractions, mean, strict=True)]
        draw.line(points, fill=colour(name), width=2, joint="curve")
    return image


def gains_chart(title: str, gains: dict[str, Interval]) -> Image.Image:
    """Each method's gain over the random map: the mean and its 95% interval, 0 marked."""
    width, row = 560, 26
    left, right, top = 170, width - 20, 34
    height = top + row * len(gains) + 34
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    small, normal = load_font(13), load_font(15)
    ends = [v for g in gains.values() for v in (g.mean, g.low, g.high) if math.isfinite(v)]
    reach = max([abs(v) for v in ends] + [1e-3]) * 1.1
    span = 10 ** math.floor(math.log10(reach))
    reach = math.ceil(reach / span) * span  # round axis ends

    def x_at(value: float) -> float:
        return left + (value + reach) / (2 * reach) * (right - left)

    bottom = top + row * len(gains)
    for tick in (-reach, -reach / 2, 0.0, reach / 2, reach):
        draw.line([(x_at(tick), top), (x_at(tick), bottom)], fill=MUTED if tick == 0 else GRID)
        centred(draw, (x_at(tick), bottom + 4), f"{tick:+.3g}" if tick else "0", small, MUTED)
    centred(draw, (width / 2, 8), title, normal)
    centred(draw, ((x_at(0) + right) / 2, bottom + 18), "better than random ->", small, MUTED)
    for k, (name, gain) in enumerate(gains.items()):
        y = top + row * k + row / 2
        draw.text((8, y - 8), name, font=small, fill=colour(name))
        if gain.defined:
            draw.line([(x_at(gain.low), y), (x_at(gain.high), y)], fill=colour(name), width=2)
            for end in (gain.low, gain.high):
                draw.line([(x_at(end), y - 5), (x_at(end), y + 5)], fill=colour(name), width=2)
        if math.isfinite(gain.mean):
            x = x_at(gain.mean)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour(name))
    return image


def map_tile(saliency: torch.Tensor, size: int) -> Image.Image:
    """Grayscale map, capped at its 99th percentile as Smilkov et al. visualise (section 4.1)."""
    cap = float(torch.quantile(saliency.flatten().float(), 0.99))
    scaled = (saliency.float() / cap).clamp(0, 1) if cap > 0 else torch.zeros_like(saliency)
    pixels = (scaled * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)


def randomisation_grid(results: Results, photo: int, tile: int = 80) -> Image.Image:
    """One row per method: the photo, its map, then the maps as layers are randomised."""
    gap, label_width, header, caption = 4, 150, 34, 18
    methods = list(results.randomisation)
    steps = results.randomisation[methods[0]]
    width = label_width + (1 + len(steps)) * (tile + gap)
    height = header + len(methods) * (tile + caption + gap) + 4
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    small = load_font(12)
    x0 = label_width
    centred(draw, (x0 + tile / 2, 4), "photo", small)
    for k, step in enumerate(steps):
        x = x0 + (k + 1) * (tile + gap) + tile / 2
        centred(draw, (x, 4), "trained" if step.block is None else layer_name(step.block), small)
        centred(draw, (x, 18), "" if step.block is None else "+ above", small, MUTED)
    crop = results.photos.crops[photo].resize((tile, tile), Image.Resampling.BILINEAR)
    for row, method in enumerate(methods):
        y = header + row * (tile + caption + gap)
        draw.text((6, y + tile / 2 - 8), method, font=load_font(13), fill=colour(method))
        image.paste(crop, (x0, y))
        for k, step in enumerate(results.randomisation[method]):
            x = x0 + (k + 1) * (tile + gap)
            image.paste(map_tile(step.maps[photo], tile), (x, y))
            rho = float(step.correlations[photo])
            text = f"rho {rho:.2f}" if math.isfinite(rho) else "constant"
            centred(draw, (x + tile / 2, y + tile + 2), text, small, MUTED)
    return image


def figure(results: Results, summary: Summary) -> Image.Image:
    """The report's figure: legend, curves, gains, then the first photo's randomisation grid."""
    count = summary.count
    mean_of = f"mean of {count} photo{'s' * (count > 1)}"
    panels = [
        [
            chart(
                f"Deletion: most salient pixels removed first ({mean_of})",
                "fraction of pixels removed",
                results.deletion,
            ),
            chart(
                f"Insertion: most salient pixels restored first ({mean_of})",
                "fraction of pixels restored",
                results.insertion,
            ),
        ],
        [
            gains_chart("Deletion AUC: random's - the method's (95% CI)", summary.deletion_gain),
            gains_chart("Insertion AUC: the method's - random's (95% CI)", summary.insertion_gain),
        ],
    ]
    grid = randomisation_grid(results, photo=0)
    title = (
        f"Cascading randomisation ({results.photos.names[0]}, class '{results.labels[0]}'): "
        "layers re-initialised from the classifier down; rho = Spearman correlation with the "
        "trained model's map"
    )
    margin = 12
    width = max(sum(p.width for p in panels[0]), grid.width) + 2 * margin
    top = legend(list(results.deletion), width - 2 * margin)
    height = (
        margin + top.height + sum(row[0].height + 8 for row in panels) + 28 + grid.height + margin
    )
    canvas = Image.new("RGB", (width, height), WHITE)
    canvas.paste(top, (margin, margin))
    y = margin + top.height
    for row in panels:
        x = margin
        for panel in row:
            canvas.paste(panel, (x, y))
            x += panel.width
        y += row[0].height + 8
    ImageDraw.Draw(canvas).text((margin + 6, y + 4), title, font=load_font(14), fill=INK)
    canvas.paste(grid, (margin, y + 28))
    return canvas
