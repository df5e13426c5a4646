"""A figure in the style of Simonyan et al. (2014), Figure 2: photos on top, saliency maps below.

Each column shows the 224x224 crop the model saw (the original cut to the answer's crop_box and
resized), its saliency map from the running squeezenet_saliency server, and a caption with the
predicted class and its probability. The server is called through scripts/client.py.

Usage:
    .venv/bin/python scripts/figure.py IMAGE [IMAGE ...] [--out out/figure.png]
        [--colormap gray|hot] [--objective score|loss] [--size 224]
        [--url http://127.0.0.1:8080] [--key-file key_file.json | --token TOKEN] [--timeout 120]

    .venv/bin/python scripts/figure.py cat.png coffee.png --colormap hot --out docs/figure.png
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from client import SERVER_HINT, ServiceError, add_server_arguments, post_image, server_from_args
from PIL import Image, ImageDraw, ImageFont, ImageOps

MARGIN = 12  # around the whole figure
GAP = 8  # between tiles
CAPTION_GAP = 6  # between the maps and their captions
LINE_SPACING = 4
INK = (0, 0, 0)
MUTED = (90, 90, 90)  # the probability, quieter than the label
WHITE = (255, 255, 255)


def fetch(
    paths: list[Path], options: dict[str, Any], server: tuple[str, str], timeout: float
) -> list[dict]:
    """The server's answers, in the order of ``paths`` (requests run concurrently)."""
    url, token = server

    def one(path: Path) -> dict:
        try:
            return post_image(path, options, url, token, timeout)
        except ServiceError as exc:  # name the image: the server's message cannot
            raise ServiceError(exc.code, f"{path}: {exc.message}", exc.status) from None

    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        return list(pool.map(one, paths))


def model_crop(path: Path, crop_box: list[int], size: int) -> Image.Image:
    """The region the model saw, oriented by EXIF and flattened on white like the server does."""
    with Image.open(path) as original:
        image = ImageOps.exif_transpose(original) or original
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba)
        image = image.convert("RGB")
        return image.resize(
            (size, size), Image.Resampling.BILINEAR, box=tuple(crop_box)
        )  # as the server


def map_tile(answer: dict, colormap: str, size: int) -> Image.Image:
    """The server's saliency map (or its hot heatmap); nearest-neighbour keeps pixels crisp."""
    picture = answer.get("heatmap") if colormap == "hot" else answer.get("saliency")
    if not picture or not picture.get("png"):
        raise ServiceError("bad_response", f"the answer has no {colormap} saliency picture")
    tile = Image.open(io.BytesIO(base64.b64decode(picture["png"]))).convert("RGB")
    return (
        tile if tile.size == (size, size) else tile.resize((size, size), Image.Resampling.NEAREST)
    )


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a small fixed bitmap font
        return ImageFont.load_default()


def wrap(text: str, font: Any, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a single over-long word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def caption(
    answer: dict, font: Any, width: int, draw: ImageDraw.ImageDraw
) -> list[tuple[str, tuple[int, int, int]]]:
    """(text, colour) lines: the predicted label, wrapped, then its probability."""
    prediction = answer["prediction"]
    lines = [(line, INK) for line in wrap(prediction["label"], font, width, draw)]
    return [*lines, (f"p = {prediction['probability']:.2f}", MUTED)]


def compose(
    photos: list[Image.Image], maps: list[Image.Image], answers: list[dict], size: int
) -> Image.Image:
    """Photos in the top row, maps below, captions under each column; all on white."""
    font = load_font(max(12, round(size / 14)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [caption(answer, font, size, scratch) for answer in answers]
    _, top, _, bottom = scratch.textbbox((0, 0), "Ag", font=font)
    line_height = bottom - top + LINE_SPACING
    caption_height = max(len(lines) for lines in captions) * line_height
    columns = len(photos)
    width = 2 * MARGIN + columns * size + (columns - 1) * GAP
    height = 2 * MARGIN + 2 * size + GAP + CAPTION_GAP + caption_height
    figure = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(figure)
    for column, (photo, tile, lines) in enumerate(zip(photos, maps, captions, strict=True)):
        x = MARGIN + column * (size + GAP)
        figure.paste(photo, (x, MARGIN))
        figure.paste(tile, (x, MARGIN + size + GAP))
        y = MARGIN + 2 * size + GAP + CAPTION_GAP - top
        for text, colour in lines:
            centred = x + (size - draw.textlength(text, font=font)) / 2
            draw.text((centred, y), text, fill=colour, font=font)
            y += line_height
    return figure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Photos above their saliency maps, as in Simonyan et al. (2014), Figure 2."
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files, one column each")
    parser.add_argument("--out", type=Path, default=Path("out/figure.png"), help="PNG to write")
    parser.add_argument("--colormap", choices=["gray", "hot"], default="gray")
    parser.add_argument("--objective", choices=["score", "loss"], help="what to differentiate")
    parser.add_argument("--size", type=int, default=224, help="tile size in pixels (224)")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error("--size must be at least 32")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    options = {"colormap": args.colormap, "objective": args.objective, "topk": 1}
    try:
        answers = fetch(args.images, options, server_from_args(args), args.timeout)
    except ServiceError as exc:
        hint = f"\nhint: {SERVER_HINT}" if exc.code == "unreachable" else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    try:
        photos = [
            model_crop(p, a["crop_box"], args.size)
            for p, a in zip(args.images, answers, strict=True)
        ]
        maps = [map_tile(answer, args.colormap, args.size) for answer in answers]
    except (OSError, ServiceError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compose(photos, maps, answers, args.size).save(args.out)
    for path, answer in zip(args.images, answers, strict=True):
        prediction = answer["prediction"]
        print(f"{path.name}: {prediction['label']} {prediction['probability']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
