"""A figure in the style of Simonyan et al. (2014), Figure 2: photos on top, saliency maps below.

Each column shows the 224x224 crop the model saw (the original cut to the answer's crop_box and
resized), its saliency map from the running squeezenet_saliency server, and a caption with the
predicted class and its probability. The server is called through saliency_tools.client;
the crop is decoded by the service's own image code (saliency_service.images).

With --methods, one row per photo instead: the crop, then its map under every explanation method
(the noisy methods with a fixed --seed, so the figure is reproducible). With --before-after, one
photo's hot heatmap and overlay as the service drew them before colour clipping (scaled by the
single hottest pixel, clip 100, and a constant 0.5 blend, reproduced here from that heatmap) and
as it draws them now (its defaults: clip at the 99th percentile, opacity following the map).
IMAGE may be a file or ``skimage:NAME`` (scikit-image's photos, e.g. skimage:chelsea).
--start-server serves the requests with a TorchServe of its own (saliency_tools.server's
Server, model_store's archive, production config on free ports) instead of the running one.

Usage:
    .venv/bin/python scripts/figure.py IMAGE [IMAGE ...] [--out out/figure.png]
        [--colormap gray|hot] [--objective score|loss] [--size 224]
        [--methods [vanilla,gradcam,...]] [--seed 0] [--before-after] [--start-server]
        [--url http://127.0.0.1:8080] [--key-file key_file.json | --token TOKEN] [--timeout 120]

    .venv/bin/python scripts/figure.py cat.png coffee.png --colormap hot --out docs/figure.png
    .venv/bin/python scripts/figure.py skimage:chelsea skimage:coffee --methods --colormap hot \
        --size 160 --start-server --out docs/methods.png
    .venv/bin/python scripts/figure.py skimage:chelsea --before-after --size 160 --start-server \
        --out docs/before-after.png
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from saliency_service import images
from saliency_service.errors import RequestError
from saliency_service.methods import METHODS as REGISTRY
from saliency_tools.client import (
    SERVER_HINT,
    ServiceError,
    add_server_arguments,
    post_image,
    server_from_args,
)
from saliency_tools.drawing import Font, centred, line_box, load_font, text_width

MARGIN = 12  # around the whole figure
GAP = 8  # between tiles
CAPTION_GAP = 6  # between the maps and their captions
LINE_SPACING = 4
INK = (0, 0, 0)
MUTED = (90, 90, 90)  # the probability, quieter than the label
WHITE = (255, 255, 255)
METHODS = tuple(REGISTRY)  # the service's methods, in its (the README's) order
NOISY = tuple(name for name, method in REGISTRY.items() if "seed" in method.defaults())
SKIMAGE = "skimage:"
# The overlay before it followed the map: the heatmap blended at a constant opacity everywhere.
OLD_OVERLAY_ALPHA = 0.5
BEFORE = {"colormap": "hot", "clip": 100, "topk": 1}  # scaled by the hottest pixel
AFTER = {"colormap": "hot", "overlay": True, "topk": 1}  # clip and overlay at their defaults


def read_source(source: str) -> bytes:
    """A file's bytes, or ``skimage:NAME``: that scikit-image photo as PNG."""
    if not source.startswith(SKIMAGE):
        return Path(source).read_bytes()
    from skimage import data  # only for these names: a dev requirement

    name = source.removeprefix(SKIMAGE)
    if name not in data.__all__:
        raise OSError(f"{source}: scikit-image has no photo {name!r}")
    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, format="PNG")
    return buffer.getvalue()


def fetch(
    sources: list[tuple[str, bytes]],
    options: dict[str, Any],
    server: tuple[str, str],
    timeout: float,
) -> list[dict]:
    """The server's answers for (name, image bytes), in order (requests run concurrently)."""
    url, token = server

    def one(source: tuple[str, bytes]) -> dict:
        try:
            return post_image(source[1], options, url, token, timeout)
        except ServiceError as exc:  # name the image: the server's message cannot
            raise ServiceError(exc.code, f"{source[0]}: {exc.message}", exc.status) from None

    with ThreadPoolExecutor(max_workers=min(8, len(sources))) as pool:
        return list(pool.map(one, sources))


def method_options(method: str, options: dict[str, Any], seed: int) -> dict[str, Any]:
    return {**options, "method": method, **({"seed": seed} if method in NOISY else {})}


def model_crop(image_data: bytes, crop_box: list[int], size: int) -> Image.Image:
    """The region the model saw: the image decoded by the server's own code (upright by EXIF,
    transparency on white, first frame), cut to the answer's ``crop_box`` and resized to
    ``size`` in one bilinear step."""
    # The server has accepted these bytes under its own limits: none are applied again here.
    accepted = images.ImageLimits(max_bytes=len(image_data), max_pixels=sys.maxsize)
    upright = images.decode(image_data, accepted)
    return upright.resize((size, size), Image.Resampling.BILINEAR, box=tuple(crop_box))


def map_tile(answer: dict, colormap: str, size: int) -> Image.Image:
    """The server's saliency map (or its hot heatmap): enlarged nearest-neighbour, which keeps
    pixels crisp; shrunk by area averaging, which keeps a fine pattern from aliasing."""
    picture = answer.get("heatmap") if colormap == "hot" else answer.get("saliency")
    if not picture or not picture.get("png"):
        raise ServiceError("bad_response", f"the answer has no {colormap} saliency picture")
    tile = Image.open(io.BytesIO(base64.b64decode(picture["png"]))).convert("RGB")
    if tile.size == (size, size):
        return tile
    shrink = size < min(tile.size)
    return tile.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.NEAREST)


def wrap(text: str, font: Font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a single over-long word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and text_width(candidate, font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def caption(answer: dict, font: Font, width: int) -> list[tuple[str, tuple[int, int, int]]]:
    """(text, colour) lines: the predicted label, wrapped, then its probability."""
    prediction = answer["prediction"]
    lines = [(line, INK) for line in wrap(prediction["label"], font, width)]
    return [*lines, (f"p = {prediction['probability']:.2f}", MUTED)]


def lettering(size: int) -> tuple[Font, int, int]:
    """The captions' font for tiles of ``size``, the offset of a line's top from where it is
    drawn, and the distance between lines."""
    font = load_font(max(12, round(size / 14)))
    top, height = line_box(font)
    return font, top, height + LINE_SPACING


def compose(
    photos: list[Image.Image], maps: list[Image.Image], answers: list[dict], size: int
) -> Image.Image:
    """Photos in the top row, maps below, captions under each column; all on white."""
    font, top, line_height = lettering(size)
    captions = [caption(answer, font, size) for answer in answers]
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
            centred(draw, (x + size / 2, y), text, font, colour)
            y += line_height
    return figure


def compose_methods(
    photos: list[Image.Image],
    maps: list[list[Image.Image]],
    answers: list[dict],
    titles: list[str],
    size: int,
) -> Image.Image:
    """One row per photo: the crop (its prediction below it), then one map per method; the
    method names head the columns."""
    font, top, line_height = lettering(size)
    captions = [caption(answer, font, size) for answer in answers]
    caption_height = max(len(lines) for lines in captions) * line_height
    row_height = size + CAPTION_GAP + caption_height
    columns = len(titles)
    width = 2 * MARGIN + columns * size + (columns - 1) * GAP
    height = 2 * MARGIN + line_height + CAPTION_GAP + len(photos) * (row_height + GAP) - GAP
    figure = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(figure)
    for column, title in enumerate(titles):
        centred(draw, (MARGIN + column * (size + GAP) + size / 2, MARGIN - top), title, font)
    for row, (photo, tiles, lines) in enumerate(zip(photos, maps, captions, strict=True)):
        y = MARGIN + line_height + CAPTION_GAP + row * (row_height + GAP)
        for column, tile in enumerate([photo, *tiles]):
            figure.paste(tile, (MARGIN + column * (size + GAP), y))
        text_y = y + size + CAPTION_GAP - top
        for text, colour in lines:
            centred(draw, (MARGIN + size / 2, text_y), text, font, colour)
            text_y += line_height
    return figure


def decode_png(picture: dict | None, what: str) -> Image.Image:
    if not picture or not picture.get("png"):
        raise ServiceError("bad_response", f"the answer has no {what} picture")
    return Image.open(io.BytesIO(base64.b64decode(picture["png"]))).convert("RGB")


def before_after_rows(
    crop: Image.Image, before: dict, after: dict
) -> list[tuple[str, list[Image.Image]]]:
    """(title, [crop, heatmap, overlay]) for the old rendering and the current one, at 224."""
    old_heatmap = decode_png(before.get("heatmap"), "heatmap")
    old_overlay = Image.blend(crop, old_heatmap, OLD_OVERLAY_ALPHA)
    new_heatmap = decode_png(after.get("heatmap"), "heatmap")
    new_overlay = decode_png(after.get("overlay"), "overlay")
    return [
        (
            "before: scaled by the hottest pixel, overlay a constant 0.5 blend",
            [crop, old_heatmap, old_overlay],
        ),
        (
            "after: clipped at the 99th percentile, overlay as opaque as the map",
            [crop, new_heatmap, new_overlay],
        ),
    ]


def compose_before_after(
    rows: list[tuple[str, list[Image.Image]]], titles: list[str], size: int
) -> Image.Image:
    """Column titles on top; each row under its own title line; tiles ``size`` square."""
    font, top, line_height = lettering(size)
    columns = len(titles)
    width = 2 * MARGIN + columns * size + (columns - 1) * GAP
    row_height = line_height + CAPTION_GAP + size
    height = 2 * MARGIN + line_height + len(rows) * (row_height + GAP)
    figure = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(figure)
    for column, title in enumerate(titles):
        centred(draw, (MARGIN + column * (size + GAP) + size / 2, MARGIN - top), title, font)
    for row, (title, tiles) in enumerate(rows):
        y = MARGIN + line_height + GAP + row * (row_height + GAP)
        draw.text((MARGIN, y - top), title, MUTED, font)
        for column, tile in enumerate(tiles):
            shrunk = (
                tile
                if tile.size == (size, size)
                else tile.resize((size, size), Image.Resampling.BOX)
            )
            figure.paste(shrunk, (MARGIN + column * (size + GAP), y + line_height + CAPTION_GAP))
    return figure


def before_after(
    source: tuple[str, bytes], server: tuple[str, str], timeout: float, size: int
) -> Image.Image:
    """The figure of --before-after, from two answers of the service for one photo."""
    before, after = (fetch([source], options, server, timeout)[0] for options in (BEFORE, AFTER))
    crop = model_crop(source[1], after["crop_box"], 224)
    rows = before_after_rows(crop, before, after)
    return compose_before_after(rows, ["the crop the model saw", "heatmap (hot)", "overlay"], size)


@contextlib.contextmanager
def own_server() -> Iterator[tuple[str, str]]:
    """(URL, token) of a TorchServe of this script's own: model_store's archive, production
    config on free ports, as served (OMP_WAIT_POLICY=PASSIVE); stopped on the way out."""
    from saliency_tools import MAR
    from saliency_tools.archive import stale_files  # torch: only here
    from saliency_tools.server import Server

    stale = stale_files(MAR) if MAR.is_file() else ["missing"]
    if stale:  # a figure of old code would be a wrong figure
        raise ServiceError(
            "stale_archive", f"{MAR} ({', '.join(stale[:3])}): run scripts/build_mar.py"
        )
    with tempfile.TemporaryDirectory(prefix="figure-") as work:
        environment = {"OMP_WAIT_POLICY": "PASSIVE"}
        server = Server(workdir=Path(work), model_store=MAR.parent, env=environment)
        server.start()
        try:
            yield server.url("inference"), server.keys["inference"]
        finally:
            server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Photos above their saliency maps, as in Simonyan et al. (2014), Figure 2."
    )
    parser.add_argument(
        "images", nargs="+", help="image files or skimage:NAME, one column (row) each"
    )
    parser.add_argument("--out", type=Path, default=Path("out/figure.png"), help="PNG to write")
    parser.add_argument("--colormap", choices=["gray", "hot"], default="gray")
    parser.add_argument("--objective", choices=["score", "loss"], help="what to differentiate")
    parser.add_argument("--size", type=int, default=224, help="tile size in pixels (224)")
    parser.add_argument(
        "--methods", action="store_true", help="one row per image, one column per method"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the SmoothGrad family")
    parser.add_argument(
        "--before-after",
        action="store_true",
        help="one photo's hot heatmap and overlay before and after percentile clipping",
    )
    parser.add_argument(
        "--start-server", action="store_true", help="serve with a TorchServe of this script's own"
    )
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error("--size must be at least 32")
    if args.before_after and (args.methods or len(args.images) != 1):
        parser.error("--before-after takes one image and no --methods")
    return args


def main_before_after(args: argparse.Namespace, source: tuple[str, bytes]) -> int:
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(own_server()) if args.start_server else None
            figure = before_after(source, server or server_from_args(args), args.timeout, args.size)
    except ServiceError as exc:
        hint = f"\nhint: {SERVER_HINT}" if exc.code == "unreachable" else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError, OSError, KeyError, RequestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette: a third of the RGB file's size (for the README), no visible change.
    figure.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [s for s in args.images if not s.startswith(SKIMAGE) and not os.path.isfile(s)]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        sources = [(name, read_source(name)) for name in args.images]
    except (OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.before_after:
        return main_before_after(args, sources[0])
    options = {"colormap": args.colormap, "objective": args.objective, "topk": 1}
    methods = list(METHODS) if args.methods else [None]
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(own_server()) if args.start_server else None
            server = server or server_from_args(args)
            grid = [  # grid[method][image]
                fetch(
                    sources,
                    method_options(m, options, args.seed) if m else options,
                    server,
                    args.timeout,
                )
                for m in methods
            ]
    except ServiceError as exc:
        hint = f"\nhint: {SERVER_HINT}" if exc.code == "unreachable" else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError) as exc:  # our own TorchServe did not start
        print(f"error: {exc}", file=sys.stderr)
        return 1
    answers = grid[0]
    try:
        photos = [
            model_crop(data, a["crop_box"], args.size)
            for (_, data), a in zip(sources, answers, strict=True)
        ]
        maps = [[map_tile(a, args.colormap, args.size) for a in row] for row in grid]
    except (OSError, ServiceError, KeyError, RequestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.methods:
        per_photo = [list(tiles) for tiles in zip(*maps, strict=True)]
        figure = compose_methods(photos, per_photo, answers, ["photo", *methods], args.size)
    else:
        figure = compose(photos, maps[0], answers, args.size)
    figure.save(args.out)
    for (name, _), answer in zip(sources, answers, strict=True):
        prediction = answer["prediction"]
        print(f"{name}: {prediction['label']} {prediction['probability']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
