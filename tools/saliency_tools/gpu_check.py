"""Prove the service core's maps on a GPU and measure its speed there, in one call of minutes.

    python scripts/gpu_check.py [--device cuda|cpu] [--out DIR] [--images DIR] [--quick]
        [--weights FILE] [--no-compile] [--threads N]

1. Equivalence (``SaliencyService`` on the device against one on the CPU, the same weights): for
   every served method and every photo, the same class and target, maps with Pearson >= 0.999;
   a SmoothGrad-family seed drawn on the device gives the same map on the CPU; a mixed batch of
   every photo and method gives what each request gives alone.
2. Speed, in process: images/s and latency of ``handle_batch`` per method at batch 1, 8, 32, 64,
   128 (1, 8 with --quick), with the service's own stage timings (decode, forward_backward,
   encode) and the host-to-device copy timed apart; plain classification (``saliency=false``)
   for the saliency/plain ratio; the GPU levers side by side (layout, TF32, bf16/fp16
   autocast, cudnn.benchmark, torch.compile, a CUDA graph, nvJPEG decoding, pinned memory, the
   sampled methods' chunk size), each kept only if faster and, where it changes the arithmetic,
   if its maps keep a Spearman rank correlation >= 0.99 with fp32.
3. TorchServe is not started (no Java on the device machine): the figures are in-process only.
4. Writes gpu_check.json and gpu_check.md to --out (default $OUT, else ./out/gpu_check) and
   prints the Markdown. Exit status 1 if an equivalence check failed or a phase broke.

Photos: scikit-image's chelsea and coffee (as JPEG, quality 90) when scikit-image is installed,
plus every image in --images; with neither, synthetic structured images. Weights: --weights,
else $SQUEEZENET_WEIGHTS, else a seeded random initialisation (classes then mean nothing, but
equivalence and speed still do). Timing: CUDA events on a GPU, time.perf_counter on the CPU.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from saliency_tools import ranks

JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"
MIN_PEARSON = 0.999  # device vs CPU, batch vs alone: float rounding may move a few 8-bit levels
MIN_SPEARMAN = 0.99  # a lever that changes the arithmetic must keep the maps' ranking
MIN_SPEEDUP = 1.05  # gains under 5% are within the spread of repeated runs
GOAL_RATIO = 0.85  # the goal on a GPU: saliency >= 0.85 x plain classification
NOISY = ("smoothgrad", "smoothgrad_sq", "vargrad")
PLAIN = "plain"  # saliency=false: classification only
SEED = 1234
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# A table cell that is a number: right-aligned. The lookahead asks for at least one digit.
NUMBER = re.compile(r"^[-+]?(?=\.?\d)(\d{1,3}(,\d{3})+|\d*)(\.\d+)?(e[-+]?\d+)?[x%]?$|^n/a$")
TORCHSERVE_NOTE = (
    "TorchServe is not started (the GPU machine this is made for has no Java): every figure "
    "here is in process (SaliencyService.handle_batch), without the front end, HTTP or clients."
)


@dataclass(frozen=True)
class Mode:
    name: str
    batches: tuple[int, ...]
    warmup: int  # untimed calls per (method, batch) before timing
    repeats: int  # timed calls per (method, batch)
    lever_repeats: int  # alternated timed runs per lever variant
    samples: int | None  # SmoothGrad family's copies; None: the served default (25)
    steps: int | None  # Integrated Gradients' points; None: the served default (32)


FULL = Mode("full", (1, 8, 32, 64, 128), 1, 3, 7, None, None)
# --quick keeps every code path but cuts the sampled methods' work, to run on 2 CPU cores.
QUICK = Mode("quick", (1, 8), 1, 2, 3, 4, 4)


# ---------------------------------------------------------------------------------------------
# Pure parts: statistics (rank correlation: saliency_tools.ranks), the lever rule, tables


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation of two equally shaped arrays; NaN when either is constant."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"shapes differ: {np.shape(a)} vs {np.shape(b)}")
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    if denominator == 0:
        return math.nan
    return max(-1.0, min(1.0, float(x @ y) / denominator))


def maps_agree(a: Any, b: Any, minimum: float = MIN_PEARSON) -> bool:
    """Equal maps, or Pearson >= ``minimum`` (equal constant maps, e.g. all zero, agree)."""
    return bool(np.array_equal(a, b)) or pearson(a, b) >= minimum


def lever_verdict(speedup: float | None, rank_correlation: float | None, skip: str = "") -> str:
    """Keep a lever only if it ran, kept the maps' ranking where it changes the arithmetic
    (``rank_correlation`` None: exact by construction) and is faster by more than noise."""
    if skip:
        return f"skipped: {skip}"
    if speedup is None or not math.isfinite(speedup):
        return "skipped: not timed"
    if rank_correlation is not None and not rank_correlation >= MIN_SPEARMAN:  # NaN fails too
        return f"drop: maps' Spearman {fmt(rank_correlation, 4)} < {MIN_SPEARMAN}"
    if speedup < MIN_SPEEDUP:
        return f"drop: {speedup:.2f}x, not faster"
    return "keep"


def ratio_verdict(ratio: float | None, goal: float = GOAL_RATIO) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "n/a"
    return "met" if ratio >= goal else "not met"


def limit_note(stages: Mapping[str, float]) -> str:
    """The stage that takes the largest share of a batch's time: where the limit is."""
    total = sum(max(0.0, seconds) for seconds in stages.values())
    if total <= 0:
        return "n/a"
    name, seconds = max(stages.items(), key=lambda item: item[1])
    return f"{name} {seconds / total:.0%}"


def fmt(value: Any, digits: int | None = None) -> str:
    """A number for a table: None empty, non-finite "n/a", else 3-4 significant figures."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return "n/a"
    if digits is None:
        size = abs(value)
        digits = 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 0.1 or size == 0 else 4
    return f"{value:,.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table: numbers formatted by ``fmt``, numeric columns right-aligned,
    '|' escaped, short rows padded with empty cells."""
    width = len(header)
    texts = [[fmt(cell).replace("|", "\\|") for cell in row] for row in rows]
    for row in texts:
        if len(row) > width:
            raise ValueError(f"a row of {len(row)} cells under {width} columns")
        row.extend([""] * (width - len(row)))

    def numeric(column: int) -> bool:
        cells = [row[column] for row in texts if row[column]]
        return bool(cells) and all(NUMBER.match(cell) for cell in cells)

    align = ["---:" if numeric(c) else "---" for c in range(width)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in texts]
    return "\n".join(lines)


def default_device(cuda_available: bool) -> str:
    return "cuda" if cuda_available else "cpu"


def default_out(environ: Mapping[str, str]) -> Path:
    """$OUT (what a device run hands back), else ./out/gpu_check (git-ignored)."""
    return Path(environ["OUT"]) if environ.get("OUT") else Path("out") / "gpu_check"


def parse_args(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cuda_available: bool | None = None,
) -> argparse.Namespace:
    environ = os.environ if environ is None else environ
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--out", type=Path, help="output folder (default: $OUT or out/gpu_check)")
    parser.add_argument("--images", type=Path, help="a folder of more photos")
    parser.add_argument("--quick", action="store_true", help="batches 1 and 8, lighter methods")
    parser.add_argument(
        "--weights",
        default=environ.get("SQUEEZENET_WEIGHTS") or None,
        help="SqueezeNet 1.1 state_dict (default: $SQUEEZENET_WEIGHTS, else a random init)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile lever")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: PyTorch's)")
    args = parser.parse_args(argv)
    args.device = args.device or default_device(cuda)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be cpu, cuda or cuda:N, not {args.device!r}")
    if args.device.startswith("cuda") and not cuda:
        parser.error(f"--device {args.device}: no CUDA device is visible to PyTorch here")
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder")
    args.out = args.out or default_out(environ)
    return args


def method_settings(method: str, mode: Mode, seed: int | None = SEED) -> dict[str, Any]:
    """The options a timed or compared request sends: a fixed seed, the mode's light settings."""
    if method in NOISY:
        settings: dict[str, Any] = {} if seed is None else {"seed": seed}
        return settings | ({"samples": mode.samples} if mode.samples else {})
    if method == "integrated_gradients" and mode.steps:
        return {"steps": mode.steps}
    return {}


def request_row(image: bytes, method: str, settings: Mapping[str, Any] | None = None) -> dict:
    """A request row as TorchServe hands JSON to the handler: ``{"body": dict}``."""
    body: dict[str, Any] = {"image": base64.b64encode(image).decode("ascii")}
    if method == PLAIN:
        body["saliency"] = False
    else:
        body.update(method=method, **(settings or {}))
    return {"body": body}


def answer_map(body: Mapping[str, Any]) -> np.ndarray:
    """The map an answer carries, back in its units: ``pixel / 255 * max``."""
    saliency = body["saliency"]
    png = Image.open(io.BytesIO(base64.b64decode(saliency["png"])))
    return np.asarray(png, dtype=np.float64) / 255.0 * float(saliency["max"])


def synthetic_photos(count: int = 3, size: tuple[int, int] = (320, 240)) -> dict[str, bytes]:
    """Structured stand-ins (rings, a checkerboard, blobs) as JPEGs, for a machine with neither
    scikit-image nor --images: edges and blobs give gradients structure, unlike flat images."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = x / width, y / height
    radius = np.hypot(x - 0.5, y - 0.5)
    blobs = np.zeros((height, width, 3))
    rng = np.random.default_rng(0)
    for _ in range(12):
        cx, cy, spread = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.03, 0.12)
        blobs += (
            rng.uniform(0, 1, 3) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / spread**2)[..., None]
        )
    pictures = {
        "synthetic_rings": np.stack(
            [0.5 + 0.5 * np.sin(40 * radius), 0.5 + 0.5 * np.cos(25 * radius), x], axis=-1
        ),
        "synthetic_checker": np.stack(
            [
                ((x * 13).astype(int) + (y * 10).astype(int)) % 2 * (0.3 + 0.7 * c)
                for c in (x, y, 1 - x)
            ],
            axis=-1,
        ),
        "synthetic_blobs": blobs / blobs.max(),
    }
    return {
        f"{name}.jpg": jpeg_bytes(np.round(255 * values).astype(np.uint8))
        for name, values in list(pictures.items())[:count]
    }


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# The service core, photos, weights, clocks


@functools.cache
def core() -> SimpleNamespace:
    """The service core (the installed ``saliency_service``), imported on first use."""
    from saliency_service import images
    from saliency_service.attribution import vanilla_saliency
    from saliency_service.attribution.smoothgrad import DEFAULT_SAMPLES
    from saliency_service.labels import Labels, torchvision_categories
    from saliency_service.methods import METHODS
    from saliency_service.model import build_model, load_state_dict
    from saliency_service.pipeline import SaliencyService, ServiceConfig

    return SimpleNamespace(
        images=images,
        vanilla_saliency=vanilla_saliency,
        DEFAULT_SAMPLES=DEFAULT_SAMPLES,
        Labels=Labels,
        torchvision_categories=torchvision_categories,
        METHODS=METHODS,
        build_model=build_model,
        load_state_dict=load_state_dict,
        SaliencyService=SaliencyService,
        ServiceConfig=ServiceConfig,
    )


def project_photos() -> dict[str, bytes]:
    """scikit-image's chelsea and coffee, the project's photos; none without scikit-image
    (imported here, not at the top: the device machine may not have it)."""
    try:
        from skimage import data
    except ImportError:
        return {}
    return {"chelsea.jpg": jpeg_bytes(data.chelsea()), "coffee.jpg": jpeg_bytes(data.coffee())}


def load_photos(folder: Path | None) -> tuple[dict[str, bytes], str]:
    photos = project_photos()
    source = "scikit-image's chelsea and coffee (JPEG q90)" if photos else ""
    if folder is not None:
        found = {
            path.name: path.read_bytes()
            for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        }
        photos.update(found)
        source = ", ".join(filter(None, [source, f"{len(found)} from {folder}"]))
    if not photos:
        return synthetic_photos(), "synthetic (no scikit-image and no --images)"
    return photos, source


def load_weights(path: str | None) -> tuple[dict[str, torch.Tensor] | None, str]:
    if path:
        return core().load_state_dict(path), str(path)
    return None, "random init (seed 0): no --weights or $SQUEEZENET_WEIGHTS; classes mean nothing"


def new_model(state: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same random init for every copy when no weights are given
        return core().build_model(state)


def new_service(
    state: dict[str, torch.Tensor] | None, labels: Any, device: torch.device, chunk: int = 0
) -> Any:
    c = core()
    config = c.ServiceConfig()
    if chunk:
        config = dataclasses.replace(config, max_gradient_batch=chunk)
    service = c.SaliencyService(new_model(state), labels, device, config)
    service.warm_up()
    return service


class Clock:
    """Seconds of a region: CUDA events on a GPU (its work is asynchronous, so the host's clock
    could stop before the device does), ``time.perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, work: Callable[[], Any]) -> tuple[float, Any]:
        if not self.cuda:
            start = time.perf_counter()
            result = work()
            return time.perf_counter() - start, result
        torch.cuda.synchronize()  # earlier work must not delay the start event
        start_event = torch.cuda.Event(enable_timing=True)
        end_event = torch.cuda.Event(enable_timing=True)
        start_event.record()
        result = work()
        end_event.record()
        end_event.synchronize()
        return start_event.elapsed_time(end_event) / 1000.0, result


class Log:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", file=sys.stderr, flush=True)


def prepared_batch(photos: Sequence[bytes], size: int) -> list[torch.Tensor]:
    """``size`` preprocessed CPU tensors, cycling through the photos."""
    images = core().images
    tensors = [images.preprocess(images.decode(photo)).tensor for photo in photos]
    return [tensors[n % len(tensors)] for n in range(size)]


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """TF32 for cuDNN convolutions and matmuls on or off (None: leave as is); restored after."""
    if enabled is None:
        yield
        return
    with warnings.catch_warnings():  # newer PyTorch warns about the legacy flags
        warnings.simplefilter("ignore")
        previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


# ---------------------------------------------------------------------------------------------
# 1. Equivalence: the device against the CPU


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Comparison:
    """One request answered by two services (or alone and in a batch)."""

    photo: str
    method: str
    classes: tuple[int, int]
    targets: tuple[int, int] | None
    pearson: float | None
    spearman: float | None
    score_difference: float | None  # |target score a - b| / max(|a|, 1)
    agree: bool
    note: str = ""


def compare_answers(photo: str, method: str, first: Any, second: Any) -> Comparison:
    if first.status != 200 or second.status != 200:
        note = f"statuses {first.status}/{second.status}: {first.body} / {second.body}"[:300]
        return Comparison(photo, method, (-1, -1), None, None, None, None, False, note)
    classes = (first.body["prediction"]["index"], second.body["prediction"]["index"])
    if method == PLAIN:
        return Comparison(photo, method, classes, None, None, None, None, classes[0] == classes[1])
    targets = (first.body["target"]["index"], second.body["target"]["index"])
    a, b = answer_map(first.body), answer_map(second.body)
    scores = first.body["target"]["score"], second.body["target"]["score"]
    difference = abs(scores[0] - scores[1]) / max(abs(scores[0]), 1.0)
    agree = classes[0] == classes[1] and targets[0] == targets[1] and maps_agree(a, b)
    return Comparison(
        photo,
        method,
        classes,
        targets,
        pearson(a, b),
        ranks.rank_correlation(a, b),
        difference,
        agree,
    )


def answer_alone(service: Any, photo: bytes, method: str, settings: Mapping[str, Any]) -> Any:
    return service.handle_batch([request_row(photo, method, settings)])[0]


def check_equivalence(
    cpu: Any, device: Any, photos: Mapping[str, bytes], mode: Mode, log: Log
) -> tuple[list[Check], list[Comparison]]:
    methods = [*core().METHODS, PLAIN]
    comparisons, alone, on_cpu = [], {}, {}
    for name, photo in photos.items():
        for method in methods:
            settings = method_settings(method, mode)
            on_cpu[name, method] = answer_alone(cpu, photo, method, settings)
            alone[name, method] = answer_alone(device, photo, method, settings)
            comparisons.append(
                compare_answers(name, method, on_cpu[name, method], alone[name, method])
            )
        log(f"equivalence: {name} done")
    checks = [summarise_devices(comparisons, device.device)]
    if device.device.type == "cuda":  # PyTorch lets cuDNN use TF32: is a failure its doing?
        with tf32(False):
            strict = [
                compare_answers(
                    n, m, on_cpu[n, m], answer_alone(device, photos[n], m, method_settings(m, mode))
                )
                for n, m in on_cpu
            ]
        checks.append(summarise_devices(strict, device.device, " with TF32 off"))
    checks.append(check_seeds(cpu, device, next(iter(photos.items())), mode))
    checks.append(check_mixed_batch(device, photos, methods, alone, mode))
    served = {a.body.get("serving", {}).get("device") for a in alone.values() if a.status == 200}
    checks.append(
        Check(
            "answers name the device (serving.device)",
            served == {str(device.device)},
            f"seen: {sorted(map(str, served))}",
        )
    )
    return checks, comparisons


def summarise_devices(
    comparisons: Sequence[Comparison], device: torch.device, condition: str = ""
) -> Check:
    mapped = [c for c in comparisons if c.pearson is not None]
    failed = [f"{c.photo}/{c.method}" for c in comparisons if not c.agree]
    lowest = min((c.pearson for c in mapped), default=math.nan)
    detail = (
        f"{len(comparisons) - len(failed)}/{len(comparisons)} answers agree (class, target and "
        f"map); lowest map Pearson {fmt(lowest, 5)}; lowest Spearman "
        f"{fmt(min((c.spearman for c in mapped if c.spearman is not None), default=math.nan), 4)}"
    )
    if failed:
        detail += f"; disagree: {', '.join(failed[:12])}"
    name = f"{device}{condition} answers as the CPU does (maps' Pearson >= {MIN_PEARSON})"
    return Check(name, not failed, detail)


def check_seeds(cpu: Any, device: Any, named_photo: tuple[str, bytes], mode: Mode) -> Check:
    """A seed drawn on the device, sent back to the CPU, gives the same map; another seed
    gives another map (so the comparison could fail)."""
    name, photo = named_photo
    problems, details = [], []
    for method in NOISY:
        drawn = answer_alone(device, photo, method, method_settings(method, mode, seed=None))
        if drawn.status != 200:
            problems.append(f"{method}: status {drawn.status}")
            continue
        seed = drawn.body["saliency"]["seed"]
        again = answer_alone(cpu, photo, method, method_settings(method, mode, seed=seed))
        other = answer_alone(device, photo, method, method_settings(method, mode, seed=seed ^ 1))
        same_r = pearson(answer_map(drawn.body), answer_map(again.body))
        other_r = pearson(answer_map(drawn.body), answer_map(other.body))
        details.append(f"{method}: seed {seed} same {fmt(same_r, 5)}, other {fmt(other_r, 3)}")
        if not maps_agree(answer_map(drawn.body), answer_map(again.body)):
            problems.append(f"{method}: CPU map differs")
        if not other_r < same_r:
            problems.append(f"{method}: another seed gives the same map")
    detail = f"{name}: " + "; ".join(details) + (f"; FAILED: {problems}" if problems else "")
    return Check("SmoothGrad-family seeds reproduce across devices", not problems, detail)


def check_mixed_batch(
    device: Any,
    photos: Mapping[str, bytes],
    methods: Sequence[str],
    alone: Mapping[tuple[str, str], Any],
    mode: Mode,
) -> Check:
    """Every photo with every method in one shuffled batch, against the same requests alone."""
    keys = [(name, method) for name in photos for method in methods]
    random.Random(SEED).shuffle(keys)
    rows = [request_row(photos[n], m, method_settings(m, mode)) for n, m in keys]
    answers = device.handle_batch(rows)
    results = [
        compare_answers(n, m, alone[n, m], a) for (n, m), a in zip(keys, answers, strict=True)
    ]
    failed = [f"{c.photo}/{c.method}" for c in results if not c.agree]
    lowest = min((c.pearson for c in results if c.pearson is not None), default=math.nan)
    detail = (
        f"batch of {len(rows)}: {len(rows) - len(failed)} agree; lowest Pearson {fmt(lowest, 5)}"
    )
    return Check(
        "a mixed batch answers as single requests do",
        not failed,
        detail + (f"; disagree: {', '.join(failed[:12])}" if failed else ""),
    )


# ---------------------------------------------------------------------------------------------
# 2. Speed: handle_batch per method and batch size, and plain classification


@dataclass
class Timing:
    method: str
    batch: int
    median_s: float
    best_s: float
    stages_s: dict[str, float]  # median per stage: decode, h2d, compute, encode, other
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median_s if self.median_s > 0 else math.nan


def time_h2d(
    tensors: list[torch.Tensor], device: torch.device, clock: Clock, repeats: int
) -> float:
    """The batch's copy to the device as ``model_input`` makes it (pageable memory); 0 on CPU."""
    if device.type != "cuda":
        return 0.0
    batch = torch.stack(tensors)
    batch.to(device)  # warm-up
    return median([clock(lambda: batch.to(device))[0] for _ in range(repeats)])


def time_batch(
    service: Any, rows: list[dict], clock: Clock, mode: Mode, h2d: float, method: str
) -> Timing:
    for _ in range(mode.warmup):
        service.handle_batch(rows)
    seconds, reports, statuses = [], [], set()
    for _ in range(mode.repeats):
        elapsed, answers = clock(lambda: service.handle_batch(rows))
        seconds.append(elapsed)
        reports.append(dict(service.last_report.seconds))
        statuses |= {answer.status for answer in answers}
    stage = {name: median([r[name] for r in reports]) for name in reports[0]}
    total = median(seconds)
    stages = {
        "decode": stage["decode"],
        "h2d": h2d,
        "compute": max(0.0, stage["forward_backward"] - h2d),  # the service's stage holds the copy
        "encode": stage["encode"],
        "other": max(0.0, total - sum(stage.values())),
    }
    note = "" if statuses == {200} else f"statuses {sorted(statuses)}"
    return Timing(method, len(rows), total, min(seconds), stages, note)


def measure_methods(
    service: Any, photos: Sequence[bytes], mode: Mode, clock: Clock, log: Log
) -> list[Timing]:
    h2d = {b: time_h2d(prepared_batch(photos, b), service.device, clock, 5) for b in mode.batches}
    timings = []
    for method in [PLAIN, *core().METHODS]:
        settings = method_settings(method, mode)
        for batch in mode.batches:
            rows = [request_row(photos[n % len(photos)], method, settings) for n in range(batch)]
            try:
                timings.append(time_batch(service, rows, clock, mode, h2d[batch], method))
            except Exception as exc:  # one failing cell (say out of memory) must not cost the rest
                timings.append(Timing(method, batch, math.nan, math.nan, {}, _failure(exc)))
            if service.device.type == "cuda":
                torch.cuda.empty_cache()
        log(f"speed: {method} done")
    return timings


@dataclass
class ModelRatio:
    """Forward alone vs forward + input gradient on device tensors: the compute-only ratio."""

    batch: int
    forward_s: float
    saliency_s: float


def measure_model_ratio(
    service: Any, photos: Sequence[bytes], mode: Mode, clock: Clock
) -> list[ModelRatio]:
    c, results = core(), []
    for batch in mode.batches:
        inputs = service.model_input(prepared_batch(photos, batch))

        def forward(inputs: torch.Tensor = inputs) -> torch.Tensor:
            with torch.inference_mode():
                return service.model(inputs)

        def saliency(inputs: torch.Tensor = inputs) -> Any:
            return c.vanilla_saliency(service.model, inputs)

        times = alternate({"forward": forward, "saliency": saliency}, clock, 2 * mode.repeats + 1)
        results.append(ModelRatio(batch, median(times["forward"][0]), median(times["saliency"][0])))
    return results


def noise_cost(samples: int) -> float:
    """Seconds per noisy copy for the noise the SmoothGrad family draws on the CPU (a seeded
    CPU generator, so that a seed gives the same map on every device): work no GPU takes over."""
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    shape = (3, core().images.CROP_TO, core().images.CROP_TO)
    torch.randn(shape, generator=generator)
    start = time.perf_counter()
    for _ in range(samples):
        torch.randn(shape, generator=generator, dtype=torch.float32)
    return (time.perf_counter() - start) / samples


# ---------------------------------------------------------------------------------------------
# Levers: variants of one step side by side, alternated


@dataclass
class LeverRow:
    group: str
    variant: str
    current: bool
    median_s: float | None
    best_s: float | None
    speedup: float | None
    spearman: float | None  # min over the photos, vs fp32; None: exact by construction
    top1: str
    verdict: str
    note: str = ""


def alternate(
    variants: Mapping[str, Callable[[], Any]], clock: Clock, repeats: int, warmup: int = 2
) -> dict[str, tuple[list[float], Any]]:
    """Time the variants in turn, the order rotating every round, so that a slow phase of a
    shared machine hits them all; the last result of each is kept for its maps."""
    results: dict[str, Any] = {}
    for name, work in variants.items():
        for _ in range(warmup):
            results[name] = work()
    names, times = list(variants), {name: [] for name in variants}
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            elapsed, results[name] = clock(variants[name])
            times[name].append(elapsed)
    return {name: (times[name], results[name]) for name in names}


@dataclass
class Bench:
    """What every lever group shares: the device, its batch of photos, the fp32 reference."""

    device: torch.device
    state: dict[str, torch.Tensor] | None
    photos: list[bytes]
    batch: int
    clock: Clock
    repeats: int
    model: torch.nn.Module = field(init=False)  # fp32, channels_last: the served model
    inputs: torch.Tensor = field(init=False)  # (batch, 3, 224, 224) channels_last, on device
    reference: torch.Tensor = field(init=False)  # fp32 maps (TF32 off) of the first photos
    reference_top1: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.inputs = self.to_device(torch.stack(prepared_batch(self.photos, self.batch)))
        self.model = self.model_in(torch.channels_last)
        result = self.fp32_saliency(self.inputs)
        self.reference, self.reference_top1 = self.distinct(result.maps), result.logits.argmax(1)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def to_device(self, batch: torch.Tensor, layout: Any = torch.channels_last) -> torch.Tensor:
        return batch.to(self.device).contiguous(memory_format=layout)

    def model_in(self, layout: Any) -> torch.nn.Module:
        return new_model(self.state).to(self.device, memory_format=layout)

    def distinct(self, maps: torch.Tensor) -> torch.Tensor:
        """The maps of the distinct photos (the batch cycles through them), on the CPU."""
        return maps[: min(len(self.photos), maps.shape[0])].detach().float().cpu()

    def rank_correlation(self, maps: torch.Tensor, reference: torch.Tensor | None = None) -> float:
        """The lowest Spearman over the distinct photos, against the fp32 maps by default."""
        reference = self.reference if reference is None else self.distinct(reference)
        pairs = zip(reference, self.distinct(maps), strict=True)
        return min(ranks.rank_correlation(a, b) for a, b in pairs)

    def top1(self, logits: torch.Tensor, reference: torch.Tensor | None = None) -> str:
        expected = self.reference_top1 if reference is None else reference.argmax(1)
        return f"{int((logits.argmax(1) == expected).sum())}/{len(expected)}"

    def fp32_saliency(self, inputs: torch.Tensor) -> Any:
        """The served model's maps of ``inputs`` in plain fp32 (TF32 off)."""
        with tf32(False if self.cuda else None):
            return self.saliency(self.model, inputs)

    def saliency(self, model: torch.nn.Module, inputs: torch.Tensor | None = None) -> Any:
        return core().vanilla_saliency(model, self.inputs if inputs is None else inputs)


def lever_rows(
    group: str,
    bench: Bench,
    variants: Mapping[str, Callable[[], Any]],
    notes: Mapping[str, str] | None = None,
    judge: Callable[[Any], tuple[float | None, str]] | None = None,
) -> list[LeverRow]:
    """Time ``variants`` (the first is the current code path) and judge each against it.

    A variant returns a ``SaliencyResult`` (maps judged against the fp32 reference) unless
    ``judge`` turns its result into (rank correlation, or None where the numbers are equal by
    construction; top-1 text).
    """
    notes = notes or {}
    timed = alternate(variants, bench.clock, bench.repeats)
    current = median(timed[next(iter(variants))][0])
    rows = []
    for n, (name, (times, result)) in enumerate(timed.items()):
        if judge is not None:
            correlation, top1 = judge(result)
        else:
            correlation, top1 = bench.rank_correlation(result.maps), bench.top1(result.logits)
        speedup = current / median(times)
        verdict = "current" if n == 0 else lever_verdict(speedup, correlation)
        if n == 0 and correlation is not None and not correlation >= MIN_SPEARMAN:
            verdict = f"current; maps' Spearman vs fp32 {fmt(correlation, 4)} < {MIN_SPEARMAN}!"
        rows.append(
            LeverRow(
                group,
                name + (" [current]" if n == 0 else ""),
                n == 0,
                median(times),
                min(times),
                speedup,
                correlation,
                top1,
                verdict,
                notes.get(name, ""),
            )
        )
    return rows


def skipped(group: str, variant: str, reason: str) -> LeverRow:
    return LeverRow(
        group, variant, False, None, None, None, None, "", lever_verdict(None, None, reason)
    )


def lever_layout(bench: Bench) -> list[LeverRow]:
    nchw = bench.model_in(torch.contiguous_format)
    inputs = bench.inputs.contiguous()
    return lever_rows(
        f"layout, forward + gradient, batch {bench.batch}",
        bench,
        {
            "channels_last": lambda: bench.saliency(bench.model),
            "contiguous (NCHW)": lambda: bench.saliency(nchw, inputs),
        },
    )


def lever_tf32(bench: Bench) -> list[LeverRow]:
    group = f"TF32 (cuDNN convolutions, matmuls), forward + gradient, batch {bench.batch}"
    if not bench.cuda:
        return [skipped(group, "TF32 on / off", "needs cuda")]
    default = "on" if torch.backends.cudnn.allow_tf32 else "off"
    other = "off" if default == "on" else "on"

    def run(enabled: bool) -> Callable[[], Any]:
        def work() -> Any:
            with tf32(enabled):
                return bench.saliency(bench.model)

        return work

    return lever_rows(
        group,
        bench,
        {
            f"TF32 {default} (this PyTorch's default)": run(default == "on"),
            f"TF32 {other}": run(other == "on"),
        },
    )


def lever_autocast(bench: Bench) -> list[LeverRow]:
    group = f"precision, forward + gradient, batch {bench.batch}"
    variants: dict[str, Callable[[], Any]] = {"fp32": lambda: bench.saliency(bench.model)}
    rows = []
    for name, dtype in (("bf16 autocast", torch.bfloat16), ("fp16 autocast", torch.float16)):
        if dtype == torch.float16 and not bench.cuda:
            rows.append(skipped(group, name, "needs cuda"))
            continue

        def work(dtype: torch.dtype = dtype) -> Any:
            with torch.autocast(bench.device.type, dtype=dtype):
                return bench.saliency(bench.model)

        variants[name] = work
    return lever_rows(group, bench, variants) + rows


def lever_cudnn_benchmark(bench: Bench) -> list[LeverRow]:
    group = f"cudnn.benchmark, forward + gradient, batch {bench.batch}"
    if not bench.cuda:
        return [skipped(group, "cudnn.benchmark=True", "needs cuda")]
    default = torch.backends.cudnn.benchmark

    def run(enabled: bool) -> Callable[[], Any]:
        def work() -> Any:
            with cudnn_benchmark(enabled):
                return bench.saliency(bench.model)

        return work

    return lever_rows(
        group,
        bench,
        {f"benchmark={default}": run(default), f"benchmark={not default}": run(not default)},
        notes={f"benchmark={not default}": "autotunes per input shape: one search per batch size"},
    )


def lever_compile(bench: Bench, skip: str) -> list[LeverRow]:
    group = f"torch.compile (inductor), forward + gradient, batch {bench.batch}"
    if skip:
        return [skipped(group, "compiled model", skip)]
    try:
        compiled = torch.compile(bench.model_in(torch.channels_last))
        setup, _ = bench.clock(lambda: bench.saliency(compiled))
        return lever_rows(
            group,
            bench,
            {
                "eager": lambda: bench.saliency(bench.model),
                "compiled": lambda: bench.saliency(compiled),
            },
            notes={
                "compiled": f"first call (compiling) {setup:.1f} s; a new batch size compiles again"
            },
        )
    except Exception as exc:
        return [skipped(group, "compiled model", f"failed: {_failure(exc)}")]


def lever_cuda_graph(bench: Bench) -> list[LeverRow]:
    """The service's own vanilla_saliency captured in one CUDA graph for a fixed batch size:
    ~100 small kernels per pass, so launch overhead may matter at small batches."""
    group = f"CUDA graph of forward + gradient, fixed batch {bench.batch}"
    if not bench.cuda:
        return [skipped(group, "graph replay", "needs cuda")]
    try:
        replay = capture_graph(bench)
        return lever_rows(
            group,
            bench,
            {"eager": lambda: bench.saliency(bench.model), "graph replay": replay},
            notes={
                "graph replay": "one graph per batch size: a server pads batches to a few sizes"
            },
        )
    except Exception as exc:
        return [skipped(group, "graph replay", f"failed: {_failure(exc)}")]


def capture_graph(bench: Bench) -> Callable[[], Any]:
    model = bench.model_in(torch.channels_last)
    static = bench.inputs.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            bench.saliency(model, static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = bench.saliency(model, static)

    def replay() -> Any:
        static.copy_(bench.inputs)
        graph.replay()
        return result

    return replay


def lever_decode(bench: Bench) -> list[LeverRow]:
    """PIL decode + preprocess on the CPU and a copy, against torchvision's decode_jpeg on the
    device (nvJPEG on a GPU) and the same resize, crop and normalisation as tensors there."""
    group = f"decode + preprocess + copy, {bench.batch} JPEGs"
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as exc:
        return [skipped(group, "torchvision.io.decode_jpeg", f"failed: {_failure(exc)}")]
    images = core().images
    jpegs = [
        photo if is_jpeg(photo) else jpeg_bytes(np.asarray(images.decode(photo)))
        for photo in bench.photos
    ]
    batch = [jpegs[n % len(jpegs)] for n in range(bench.batch)]

    def pil() -> torch.Tensor:
        tensors = [images.preprocess(images.decode(data)).tensor for data in batch]
        return bench.to_device(torch.stack(tensors))

    def tensors() -> torch.Tensor:
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in batch]
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=bench.device)
        return tensor_preprocess(decoded).contiguous(memory_format=torch.channels_last)

    # Judged against PIL's decode of the same JPEGs (--images may hold PNGs, re-encoded here).
    reference_inputs = pil()
    reference = bench.fp32_saliency(reference_inputs)
    std = torch.tensor(images.IMAGENET_STD, device=bench.device).view(1, 3, 1, 1)
    gaps: list[float] = []  # largest input difference, in 8-bit levels, per judged variant

    def judge(inputs: torch.Tensor) -> tuple[float | None, str]:
        gaps.append(float(((inputs - reference_inputs) * std * 255).abs().max()))
        result = bench.fp32_saliency(inputs)
        correlation = bench.rank_correlation(result.maps, reference.maps)
        return correlation, bench.top1(result.logits, reference.logits)

    where = "nvJPEG" if bench.cuda else "libjpeg-turbo via torchvision"
    try:
        rows = lever_rows(
            group,
            bench,
            {"PIL on the CPU": pil, f"decode_jpeg on {bench.device.type}": tensors},
            judge=judge,
        )
    except Exception as exc:
        return [skipped(group, f"decode_jpeg on {bench.device.type}", f"failed: {_failure(exc)}")]
    rows[1].note = (
        f"{where}; its input differs from PIL's by up to {gaps[-1]:.1f} of 255 levels; "
        "no EXIF rotation; JPEG only (other formats keep PIL)"
    )
    return rows


def tensor_preprocess(decoded: Sequence[torch.Tensor]) -> torch.Tensor:
    """The service's Resize(256) + CenterCrop(224) + normalise on (3, H, W) uint8 tensors where
    they lie: the service's crop geometry, bilinear antialiased resize rounded to 8 bits as PIL
    rounds it, then the ImageNet mean and std."""
    images = core().images
    crops = []
    for image in decoded:
        geometry = images.crop_geometry(image.shape[2], image.shape[1])
        (width, height), (left, top) = geometry.resized, geometry.offset
        resized = F.interpolate(
            image[None].float(),
            size=(height, width),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0]
        crop = resized[:, top : top + images.CROP_TO, left : left + images.CROP_TO]
        crops.append(crop.round().clamp(0, 255))
    batch = torch.stack(crops) / 255.0
    mean = torch.tensor(images.IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(images.IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


def lever_pinned(bench: Bench, batch: int) -> list[LeverRow]:
    group = f"host-to-device copy, batch {batch}"
    if not bench.cuda:
        return [skipped(group, "pinned memory", "needs cuda")]
    tensors = prepared_batch(bench.photos, batch)
    staging = torch.empty((batch, *tensors[0].shape)).pin_memory()
    expected = torch.stack(tensors)

    def judge(result: torch.Tensor) -> tuple[float | None, str]:
        equal = torch.equal(result.cpu(), expected)
        return (None if equal else math.nan), ("identical" if equal else "DIFFERENT")

    return lever_rows(
        group,
        bench,
        {
            "stack, pageable .to(device)": lambda: torch.stack(tensors).to(bench.device),
            "stack into a reused pinned buffer, non_blocking": lambda: torch.stack(
                tensors, out=staging
            ).to(bench.device, non_blocking=True),
            "stack, pin_memory(), non_blocking": lambda: (
                torch.stack(tensors).pin_memory().to(bench.device, non_blocking=True)
            ),
        },
        notes={
            "stack into a reused pinned buffer, non_blocking": "a server must wait for the copy "
            "(an event) before refilling the buffer"
        },
        judge=judge,
    )


def lever_chunk(bench: Bench, labels: Any, batch: int, log: Log) -> list[LeverRow]:
    """The sampled methods' passes are at most ``max_gradient_batch`` images: 32 suits 2 CPU
    cores; a GPU may want bigger passes. Judged through handle_batch: maps vs the served 32."""
    served = core().ServiceConfig().max_gradient_batch
    bigger, samples, photos = 256, core().DEFAULT_SAMPLES, bench.photos
    group = f"smoothgrad chunk (max_gradient_batch), batch {batch} x {samples} copies"
    services = {
        f"{served} (served)": new_service(bench.state, labels, bench.device),
        f"{bigger}": new_service(bench.state, labels, bench.device, chunk=bigger),
    }
    rows = [
        request_row(photos[n % len(photos)], "smoothgrad", {"seed": SEED, "samples": samples})
        for n in range(batch)
    ]
    variants = {
        name: functools.partial(service.handle_batch, rows) for name, service in services.items()
    }
    first: list[Any] = []

    def judge(answers: list[Any]) -> tuple[float | None, str]:
        if not first:
            first.extend(answers)
        correlation = min(
            ranks.rank_correlation(answer_map(a.body), answer_map(b.body))
            for a, b in zip(first, answers, strict=True)
        )
        same = sum(
            a.body["prediction"]["index"] == b.body["prediction"]["index"]
            for a, b in zip(first, answers, strict=True)
        )
        return correlation, f"{same}/{len(answers)}"

    log("levers: chunk size")
    result = lever_rows(group, bench, variants, judge=judge)
    result[0].note = "maps of this group judged against the served chunk size, not fp32"
    return result


def measure_levers(
    bench: Bench,
    args: argparse.Namespace,
    mode: Mode,
    labels: Any,
    log: Log,
    done: Callable[[list[LeverRow]], None],
) -> list[LeverRow]:
    """Every lever group in turn; ``done`` sees the rows so far after each (for saving)."""
    compile_skip = "--no-compile" if args.no_compile else ""
    if not compile_skip and not bench.cuda and args.quick:
        compile_skip = "--quick on cpu: compiling takes tens of seconds here (docs/benchmarks.md)"
    chunk_batch = bench.batch if bench.cuda else 2  # 2 x 25 copies: two passes of 32 or one
    steps: list[tuple[str, Callable[[], list[LeverRow]]]] = [
        ("layout", lambda: lever_layout(bench)),
        ("tf32", lambda: lever_tf32(bench)),
        ("autocast", lambda: lever_autocast(bench)),
        ("cudnn.benchmark", lambda: lever_cudnn_benchmark(bench)),
        ("cuda graph", lambda: lever_cuda_graph(bench)),
        ("decode", lambda: lever_decode(bench)),
        ("pinned", lambda: lever_pinned(bench, max(mode.batches))),
        ("chunk", lambda: lever_chunk(bench, labels, chunk_batch, log)),
        ("compile", lambda: lever_compile(bench, compile_skip)),  # last: the slowest to set up
    ]
    rows: list[LeverRow] = []
    for name, step in steps:
        try:
            rows += step()
        except Exception as exc:  # a lever that breaks is reported, the others still run
            rows.append(skipped(name, name, f"failed: {_failure(exc)}"))
        log(f"levers: {name} done")
        done(rows)
    return rows


def _failure(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160] if lines else ''}"


# ---------------------------------------------------------------------------------------------
# The report


def environment(device: torch.device) -> dict[str, Any]:
    import PIL
    import torchvision

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "java": shutil.which("java") or "none",
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    return info


PER_METHOD_HEADER = (
    "method",
    "answers agree",
    "classes equal",
    "lowest Pearson",
    "lowest Spearman",
    "largest score difference",
)
TIMING_HEADER = (
    "method",
    "batch",
    "images/s",
    "latency ms",
    "best ms",
    "decode",
    "H2D",
    "fwd+bwd",
    "encode",
    "other",
    "limit",
    "note",
)
RATIO_HEADER = (
    "batch",
    "plain images/s",
    "saliency images/s",
    "ratio",
    f"goal >= {GOAL_RATIO}",
    "model only: forward ms",
    "forward + gradient ms",
    "ratio",
    "saliency's limit",
)
LEVER_HEADER = (
    "step",
    "variant",
    "median ms",
    "best ms",
    "speed-up",
    "Spearman vs fp32",
    "top-1",
    "verdict",
    "note",
)


def render(report: Mapping[str, Any]) -> str:
    """The whole report as Markdown (headings at level 3, to sit inside docs/benchmarks.md)."""
    lines = [*render_header(report), "**1. Same answers on the device as on the CPU**", ""]
    checks = [[c["name"], c["passed"], c["detail"]] for c in report["checks"]]
    lines += [markdown_table(("check", "passed", "detail"), checks), ""]
    lines += ["Per method, over the photos:", ""]
    lines += [markdown_table(PER_METHOD_HEADER, per_method(report["comparisons"])), ""]
    lines += [
        f"**2. Throughput and latency, in process** (`SaliencyService.handle_batch`, median of "
        f"{report['repeats']} timed calls after {report['warmup']} warm-up; latency and stages "
        "in ms per batch; fwd+bwd is the service's forward_backward stage less H2D)",
        "",
        markdown_table(TIMING_HEADER, [timing_row(t) for t in report["timings"]]),
        "",
        "Saliency (vanilla, the default method) vs plain classification (`saliency=false`):",
        "",
        markdown_table(RATIO_HEADER, ratio_rows(report)),
        "",
        report["noise_note"],
        "",
        f"**Levers** (median of {report['lever_repeats']} alternated runs, ms per batch; kept "
        f"only if >= {MIN_SPEEDUP}x faster and, where the arithmetic changes, with maps' "
        f"Spearman >= {MIN_SPEARMAN} against fp32 on every photo)",
        "",
        markdown_table(LEVER_HEADER, [lever_row(r) for r in report["levers"]]),
    ]
    if report["errors"]:
        lines += ["", "Errors: " + "; ".join(report["errors"])]
    lines += ["", f"Total run time: {report['run_time_s'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def render_header(report: Mapping[str, Any]) -> list[str]:
    env = report["environment"]
    device = env["device"]
    machine = "the CPU only"
    if "gpu" in env:
        machine = f"{env['gpu']} (sm {env['capability']}, {env['gpu_memory_gib']} GiB)"
    software = ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "torchvision", "pillow"))
    if "cuda" in env:
        software += f", CUDA {env['cuda']}, cuDNN {env['cudnn']}, TF32 convolutions "
        software += f"{env['tf32_cudnn']}, cudnn.benchmark {env['cudnn_benchmark']}"
    lines = [
        f"### GPU check on {device}: {machine}",
        "",
        f"Command: `{report['command']}` ({report['mode']} mode)  ",
        f"Date: {report['date']}  ",
        f"Software: {software}; CPU {env['cpu']}, torch threads {env['torch_threads']}  ",
        # The file's name only: a path of the machine that ran it means nothing to a reader.
        f"Weights: {Path(str(report['weights'])).name}  ",
        f"Photos: {report['photos']}  ",
        f"Requests: {report['settings']}  ",
        TORCHSERVE_NOTE,
        "",
    ]
    if device == "cpu":
        lines += [
            "**The device is the CPU**: part 1 compares two CPU services (a self-test of the "
            "script, not a GPU proof), and the levers that need CUDA are skipped.",
            "",
        ]
    return lines


def lever_row(row: Mapping[str, Any]) -> list[Any]:
    speedup, correlation = row["speedup"], row["spearman"]
    return [
        row["group"],
        row["variant"],
        _ms(row["median_s"]),
        _ms(row["best_s"]),
        None if speedup is None else f"{speedup:.2f}x",
        None if correlation is None else fmt(correlation, 4),
        row["top1"],
        row["verdict"],
        row["note"],
    ]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def per_method(comparisons: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """One row per method: how many answers agree, the worst correlation and score gap."""
    rows = []
    for method in dict.fromkeys(c["method"] for c in comparisons):
        mine = [c for c in comparisons if c["method"] == method]
        pearsons = [c["pearson"] for c in mine if c["pearson"] is not None]
        spearmans = [c["spearman"] for c in mine if c["spearman"] is not None]
        gaps = [c["score_difference"] for c in mine if c["score_difference"] is not None]
        classes = sum(c["classes"][0] == c["classes"][1] for c in mine)
        rows.append(
            [
                method,
                f"{sum(c['agree'] for c in mine)}/{len(mine)}",
                f"{classes}/{len(mine)}",
                fmt(min(pearsons), 5) if pearsons else None,
                fmt(min(spearmans), 4) if spearmans else None,
                f"{max(gaps):.1e}" if gaps else None,
            ]
        )
    return rows


def timing_row(timing: Mapping[str, Any]) -> list[Any]:
    stages = timing["stages_s"]
    cells = [_ms(stages.get(name)) for name in ("decode", "h2d", "compute", "encode", "other")]
    return [
        timing["method"],
        timing["batch"],
        timing["images_per_s"],
        _ms(timing["median_s"]),
        _ms(timing["best_s"]),
        *cells,
        limit_note(stages) if stages else None,
        timing["note"],
    ]


def ratio_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """Per batch: plain and vanilla throughput through handle_batch, their ratio, and the same
    ratio for the model alone (forward vs forward + input gradient on device tensors)."""
    found = {(t["method"], t["batch"]): t for t in report["timings"]}
    model = {r["batch"]: r for r in report["model_ratios"]}
    rows = []
    for batch in report["batches"]:
        plain, vanilla = found.get((PLAIN, batch)), found.get(("vanilla", batch))
        if plain is None or vanilla is None:
            continue
        ratio = _divide(vanilla["images_per_s"], plain["images_per_s"])
        alone = model.get(batch)
        rows.append(
            [
                batch,
                plain["images_per_s"],
                vanilla["images_per_s"],
                ratio,
                ratio_verdict(ratio),
                _ms(alone["forward_s"]) if alone else None,
                _ms(alone["saliency_s"]) if alone else None,
                _divide(alone["forward_s"], alone["saliency_s"]) if alone else None,
                limit_note(vanilla["stages_s"]) if vanilla["stages_s"] else None,
            ]
        )
    return rows


def _divide(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def timing_dict(timing: Timing) -> dict[str, Any]:
    return dataclasses.asdict(timing) | {"images_per_s": timing.images_per_s}


def save(report: Mapping[str, Any], out: Path) -> str:
    """JSON and Markdown, written after every phase and lever, so that a run cut short still
    hands back what it measured; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    safe = finite_or_none(report)
    text = json.dumps(safe, indent=2, allow_nan=False, default=str)
    (out / JSON_NAME).write_text(text + "\n", encoding="utf-8")
    markdown = render(safe)
    (out / MARKDOWN_NAME).write_text(markdown, encoding="utf-8")
    return markdown


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    log, device = Log(), torch.device(args.device)
    if args.threads:  # a busy shared CPU thrashes with more OpenMP threads than free cores
        torch.set_num_threads(args.threads)
    mode = QUICK if args.quick else FULL
    c = core()
    photos, source = load_photos(args.images)
    state, weights = load_weights(args.weights)
    labels = c.Labels(c.torchvision_categories())
    clock = Clock(device)
    samples = mode.samples or c.DEFAULT_SAMPLES
    report: dict[str, Any] = {
        "command": " ".join(["python scripts/gpu_check.py", *arguments]),
        "mode": mode.name,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": environment(device),
        "weights": weights,
        "photos": f"{source}: " + ", ".join(_describe_photo(n, p) for n, p in photos.items()),
        "settings": f"smoothgrad family {samples} copies (seed {SEED}), integrated_gradients "
        f"{mode.steps or 32} steps, every other option at its default",
        "batches": list(mode.batches),
        "repeats": mode.repeats,
        "warmup": mode.warmup,
        "lever_repeats": mode.lever_repeats,
        "torchserve": TORCHSERVE_NOTE,
        "checks": [],
        "comparisons": [],
        "timings": [],
        "model_ratios": [],
        "noise_note": "",
        "levers": [],
        "errors": [],
        "run_time_s": 0.0,
    }
    log(f"{device}, {mode.name} mode, {len(photos)} photos; weights: {weights}")
    cpu_service = new_service(state, labels, torch.device("cpu"))
    device_service = new_service(state, labels, device)
    photo_list = list(photos.values())
    phases: list[tuple[str, Callable[[], None]]] = [
        (
            "equivalence",
            lambda: _equivalence(report, cpu_service, device_service, photos, mode, log),
        ),
        ("speed", lambda: _speed(report, device_service, photo_list, mode, clock, log, samples)),
        ("levers", lambda: _levers(report, device, state, photo_list, mode, args, labels, log)),
    ]
    markdown = ""
    for name, phase in phases:
        try:
            phase()
        except Exception:  # report what broke and keep the other phases' figures
            report["errors"].append(f"{name}: {traceback.format_exc(limit=3)[-600:]}")
            log(f"{name} failed:\n{traceback.format_exc()}")
        report["run_time_s"] = time.perf_counter() - log.start
        markdown = save(report, args.out)
    print(markdown)
    log(f"wrote {args.out / JSON_NAME} and {args.out / MARKDOWN_NAME}")
    passed = bool(report["checks"]) and all(check["passed"] for check in report["checks"])
    return 0 if passed and not report["errors"] else 1


def _describe_photo(name: str, data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return f"{name} {image.width}x{image.height}"


def _equivalence(
    report: dict, cpu: Any, device: Any, photos: Mapping[str, bytes], mode: Mode, log: Log
) -> None:
    checks, comparisons = check_equivalence(cpu, device, photos, mode, log)
    report["checks"] = [dataclasses.asdict(check) for check in checks]
    report["comparisons"] = [dataclasses.asdict(comparison) for comparison in comparisons]


def _speed(
    report: dict,
    service: Any,
    photos: list[bytes],
    mode: Mode,
    clock: Clock,
    log: Log,
    samples: int,
) -> None:
    report["timings"] = [timing_dict(t) for t in measure_methods(service, photos, mode, clock, log)]
    ratios = measure_model_ratio(service, photos, mode, clock)
    report["model_ratios"] = [dataclasses.asdict(r) for r in ratios]
    per_copy = noise_cost(64)
    report["noise_note"] = (
        f"The SmoothGrad family draws its noise on the CPU (seeded, so that a seed gives one map "
        f"on every device): {per_copy * 1000:.2f} ms per copy here, "
        f"{per_copy * samples * 1000:.1f} ms per image at {samples} copies, a floor of "
        f"{1 / (per_copy * samples):.0f} images/s that no GPU lifts (inside fwd+bwd above)."
    )


def _levers(
    report: dict,
    device: torch.device,
    state: dict[str, torch.Tensor] | None,
    photos: list[bytes],
    mode: Mode,
    args: argparse.Namespace,
    labels: Any,
    log: Log,
) -> None:
    batch = max(b for b in mode.batches if b <= 32)
    bench = Bench(device, state, photos, batch, Clock(device), mode.lever_repeats)

    def done(rows: list[LeverRow]) -> None:
        report["levers"] = [dataclasses.asdict(row) for row in rows]
        save(report, args.out)

    measure_levers(bench, args, mode, labels, log, done)


if __name__ == "__main__":
    sys.exit(main())
