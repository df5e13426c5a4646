"""The optimisation levers, timed in process: each variant alternated with the current code path.

A table of rows ``{group, variant, median_ms, best_ms, vs_base, note}``, the first variant of a
group being its base; plus a PNG encoder row and, in full mode, a torch.compile row.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from saliency_service import images, rendering
from saliency_service.pipeline import SaliencyService

from .inprocess import (
    alternate,
    best,
    contiguous_copy,
    forward,
    lowest_rank_correlation,
    med,
    photo_batch,
    saliency,
)
from .photos import Photo, batch_rows, jpeg

SERVED_GRAY_ENCODER = "unfiltered rows, zlib RLE (rendering.gray_png)"
MEAN = torch.tensor(images.IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(images.IMAGENET_STD).view(1, 3, 1, 1)
Step = Callable[[], Any]


@dataclass
class LeverTable:
    """Rows of timed variants; ``repeats`` alternated runs each."""

    repeats: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def time(
        self,
        funcs: Mapping[tuple[str, str], Step],
        notes: Mapping[tuple[str, str], str] | None = None,
    ) -> dict[tuple[str, str], list[float]]:
        """Time (group, variant) functions alternated; the first variant of a group is its base."""
        times = alternate(funcs, self.repeats)
        bases: dict[str, float] = {}
        for (group, variant), values in times.items():
            base = bases.setdefault(group, med(values))
            self.rows.append(
                {
                    "group": group,
                    "variant": variant,
                    "median_ms": med(values),
                    "best_ms": best(values),
                    "vs_base": med(values) / base,
                    "note": (notes or {}).get((group, variant), ""),
                }
            )
        return times

    def group(self, name: str, funcs: Mapping[str, Step], note: str = "") -> None:
        """One group of variants; ``note`` goes with the last."""
        last = list(funcs)[-1]
        self.time({(name, k): f for k, f in funcs.items()}, {(name, last): note})

    def paired(self, label: str, variants: Mapping[str, tuple[Step, Step]]) -> None:
        """Forward and forward + gradient of every variant in one alternated group; each
        forward + gradient row notes its ratio to its own forward."""
        fwd_group, grad_group = f"forward, {label}", f"forward + gradient, {label}"
        funcs = {(fwd_group, name): pair[0] for name, pair in variants.items()}
        funcs |= {(grad_group, name): pair[1] for name, pair in variants.items()}
        times = self.time(funcs)
        for row in self.rows:
            if row["group"] == grad_group:
                ratio = row["median_ms"] / med(times[(fwd_group, row["variant"])])
                row["note"] = f"/ forward: {ratio:.2f}"


def naive_backward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a textbook saliency does: trainable parameters, loss.backward(), x.grad."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        logits = model(leaf)
        logits.gather(1, logits.argmax(dim=1)[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)
        return leaf.grad.abs().amax(dim=1)


def bf16(func: Step) -> Step:
    def run() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return func()

    return run


def gradient_lever(table: LeverTable, model: torch.nn.Module, x: torch.Tensor) -> None:
    trainable = copy.deepcopy(model).requires_grad_(True)
    table.group(
        "gradient (batch 8)",
        {
            "frozen params, autograd.grad(x) [current]": lambda: saliency(model, x),
            "trainable params, autograd.grad(x)": lambda: saliency(trainable, x),
            "trainable params, loss.backward()": lambda: naive_backward(trainable, x),
        },
    )


def layout_lever(table: LeverTable, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """channels_last and bf16 autocast against fp32 NCHW; returns the fp32 NCHW maps."""
    nchw, x_nchw = contiguous_copy(model), x.contiguous()
    reference = saliency(nchw, x_nchw)  # fp32 in PyTorch's default layout
    corr_bf16 = lowest_rank_correlation(reference, bf16(lambda: saliency(model, x))())
    corr_last = lowest_rank_correlation(reference, saliency(model, x))
    top_bf16 = (bf16(lambda: forward(model, x))().argmax(1) == forward(model, x).argmax(1)).sum()
    table.paired(
        "batch 8, layout and precision",
        {
            "fp32 channels_last [current]": (lambda: forward(model, x), lambda: saliency(model, x)),
            "fp32 NCHW (PyTorch's default)": (
                lambda: forward(nchw, x_nchw),
                lambda: saliency(nchw, x_nchw),
            ),
            "bf16 autocast, channels_last": (
                bf16(lambda: forward(model, x)),
                bf16(lambda: saliency(model, x)),
            ),
        },
    )
    table.rows[-1]["note"] += (
        f"; map rank corr. vs fp32 NCHW: channels_last >= {corr_last:.4f}, "
        f"bf16 >= {corr_bf16:.3f}; bf16 top-1 agrees on {int(top_bf16)}/8"
    )
    return reference


def threads_lever(table: LeverTable, model: torch.nn.Module, x: torch.Tensor) -> None:
    threads = torch.get_num_threads()

    def with_threads(n: int, step: Callable) -> Step:
        def run() -> Any:
            torch.set_num_threads(n)
            try:
                return step(model, x)
            finally:
                torch.set_num_threads(threads)

        return run

    table.paired(
        "batch 8, torch threads",
        {
            f"{n} thread(s)" + (" [current]" if n == threads else ""): (
                with_threads(n, forward),
                with_threads(n, saliency),
            )
            for n in sorted({1, threads}, key=lambda n: n != threads)
        },
    )


def batched_preprocess(decoded: list[Image.Image]) -> torch.Tensor:
    """images.preprocess's resize and crop per image, then one uint8 stack and one normalise."""
    crops = []
    for image in decoded:
        geometry = images.crop_geometry(*image.size)
        (w, h), (left, top) = geometry.resized, geometry.offset
        resized = image.resize((w, h), Image.BILINEAR)
        crops.append(np.asarray(resized.crop((left, top, left + 224, top + 224))))
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    return (batch.float().div_(255.0) - MEAN) / STD


def draft_decode(data: bytes) -> Image.Image:
    """JPEG decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the short side >= 256."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    short = min(width, height)
    image.draft("RGB", (math.ceil(width * 256 / short), math.ceil(height * 256 / short)))
    return images.to_rgb(images._orient(image.convert("RGB")))


def preprocess_lever(table: LeverTable, service: SaliencyService, photos: list[Photo]) -> None:
    decoded = [images.decode(d) for d in batch_rows(photos, 8)]
    reference = photo_batch(photos, 8)
    difference = float((batched_preprocess(decoded) - reference).abs().max())
    table.group(
        "preprocess 8 images",
        {
            "per image, then stack [current]": lambda: service.model_input(
                [images.preprocess(i).tensor for i in decoded]
            ),
            "PIL crop per image, one batched normalise": lambda: batched_preprocess(decoded),
        },
        f"max abs diff {difference:.1e}",
    )


def decode_lever(table: LeverTable, photos: list[Photo]) -> None:
    """Full decode vs JPEG draft mode, on the largest JPEG and on it upscaled to phone size."""
    large = [p for p in photos if p.data[:2] == b"\xff\xd8"]
    if not large:
        return
    big = max(large, key=lambda p: p.size[0] * p.size[1])
    array = np.asarray(Image.open(io.BytesIO(big.data)).convert("RGB"))
    scale = max(1, 3000 // max(big.size))
    upscaled = jpeg(
        np.asarray(Image.fromarray(array).resize((big.size[0] * scale, big.size[1] * scale)))
    )
    for label, data in (
        (f"{big.name} {big.size[0]}x{big.size[1]}", big.data),
        (f"{big.name} upscaled x{scale} (phone-size stand-in)", upscaled),
    ):
        exact = images.preprocess(images.decode(data)).tensor
        drafted = images.preprocess(draft_decode(data)).tensor
        diff = float((exact - drafted).abs().max() * 0.226 * 255)
        table.group(
            f"decode + preprocess, {label}",
            {
                "PIL full decode [current]": lambda d=data: images.preprocess(images.decode(d)),
                "PIL JPEG draft (DCT downscale)": lambda d=data: images.preprocess(draft_decode(d)),
            },
            f"draft changes pixels by up to ~{diff:.0f}/255",
        )


def png(array: np.ndarray, level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def png_lever(maps: torch.Tensor, repeats: int) -> dict[str, Any]:
    """ms per map and bytes per PNG of Pillow's levels and the served gray encoder."""
    pixels, _ = rendering.quantise(maps)
    coloured = {"gray": list(pixels), "hot": [rendering.colorize(p, "hot") for p in pixels]}
    encoders: dict[str, Callable[[np.ndarray], bytes]] = {
        f"Pillow, level {level}": functools.partial(png, level=level) for level in (0, 1, 6, 9)
    }
    encoders[SERVED_GRAY_ENCODER] = rendering.gray_png
    funcs = {
        (name, colour): functools.partial(lambda arrays, encode: [encode(a) for a in arrays], a, e)
        for name, e in encoders.items()
        for colour, a in coloured.items()
        if colour == "gray" or e is not rendering.gray_png
    }
    rows = [
        {
            "encoder": name,
            "colour": colour,
            "ms_per_map": med(values) / len(pixels),
            "bytes": statistics.mean(len(encoders[name](a)) for a in coloured[colour]),
        }
        for (name, colour), values in alternate(funcs, repeats).items()
    ]
    return {"group": "png", "rows": rows}


def compile_lever(model: torch.nn.Module, photos: list[Photo], repeats: int) -> dict[str, Any]:
    """torch.compile of the model: first answer, new batch sizes, steady state, same maps."""
    torch._dynamo.reset()
    compiled = torch.compile(model)
    firsts = {}
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        # A cold start, as a fresh worker has, unless TORCHINDUCTOR_CACHE_DIR persists.
        previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            for size in (8, 3, 5, 32, 1):
                x = photo_batch(photos, size)
                start = time.perf_counter()
                maps = saliency(compiled, x)
                firsts[size] = time.perf_counter() - start
                if size == 8:
                    corr = lowest_rank_correlation(maps, saliency(model, x))
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    x = photo_batch(photos, 8)
    times = alternate(
        {"eager": lambda: saliency(model, x), "compiled": lambda: saliency(compiled, x)}, repeats
    )
    fwd = alternate(
        {"eager": lambda: forward(model, x), "compiled": lambda: forward(compiled, x)}, repeats
    )
    return {"group": "compile", "firsts": firsts, "times": times, "forward": fwd, "corr": corr}


def levers(
    service: SaliencyService,
    photos: list[Photo],
    repeats: int,
    compile_: bool,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Each lever timed against its baseline, alternated, at batch 8 unless said otherwise."""
    model = service.model  # channels_last, as served
    x = photo_batch(photos, 8)
    table = LeverTable(repeats)
    log("lever: input-only gradient vs trainable parameters")
    gradient_lever(table, model, x)
    log("lever: channels_last and bf16 autocast")
    reference = layout_lever(table, model, x)
    log("lever: torch threads")
    threads_lever(table, model, x)
    log("lever: preprocessing and decoding")
    preprocess_lever(table, service, photos)
    decode_lever(table, photos)
    log("lever: PNG encoding")
    table.rows.append(png_lever(reference, repeats))
    if compile_:
        log("lever: torch.compile of forward + backward (minutes)")
        table.rows.append(compile_lever(model, photos, repeats))
    return table.rows
