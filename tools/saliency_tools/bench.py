"""Benchmark squeezenet_saliency against the stock TorchServe paths, end to end and in process.

    .venv/bin/python scripts/bench.py [--quick] [--images DIR] [--output docs/benchmarks.md]
    .venv/bin/python scripts/bench.py --arch resnet50 [ARCH ...] [--concurrency 8] [--seconds 20]

``--arch``: for each torchvision architecture, an archive of random weights (built by
build_mar.py in a temp dir) alone on a TorchServe; ours with ``saliency=false`` and with the
default map alternated at one concurrency; req/s, their ratio and the worker's VmRSS/VmHWM printed.

One run, one TorchServe (the production config.properties on free ports) serving two models with
the same batch settings (batchSize 8, maxBatchDelay 20 ms, 1 worker):

- ``squeezenet_stock``: TorchServe's stock ``image_classifier`` handler with the same SqueezeNet 1.1
  weights, archived here in a temp dir (it imports captum);
- ``squeezenet_saliency``: this project's archive, built from the working tree.

Contenders, alternated round-robin (the order rotates every round) at concurrency 1, 8 and 32:
(a) plain classification: the stock handler, and ours with ``saliency=false``; (b) ours with
default options (class + vanilla-gradient map); (c) the stock handler's ``/explanations`` (Captum
IntegratedGradients, 15 steps), with far fewer requests since each takes seconds.

Then, in process (server stopped): seconds per stage at batch 1, 8 and 32, the ratio
forward + input gradient / forward alone at batch 8, and the optimisation levers.

The results are printed as Markdown and written between the markers of --output; the text
around the markers is kept. The load generator runs on the same cores as the server.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import functools
import http.client
import io
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from saliency_service import images, rendering
from saliency_service.attribution import vanilla_saliency
from saliency_service.labels import Labels, torchvision_categories
from saliency_service.model import load_model
from saliency_service.pipeline import SaliencyService
from saliency_tools import MODEL_NAME, ROOT
from saliency_tools.server import Server, pid_alive, wait_ready
from saliency_tools.weights import WeightsError, resolve_weights

OURS = MODEL_NAME
STOCK = "squeezenet_stock"
CONCURRENCY = (1, 8, 32)
BATCHES = (1, 8, 32)
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# The stock handler's model: torchvision's SqueezeNet 1.1, built by a class TorchServe can load.
STOCK_MODEL_FILE = '''"""TorchServe's loader wants the model file's one class: it builds the net."""
from torchvision.models.squeezenet import SqueezeNet


class StockSqueezeNet(SqueezeNet):
    def __init__(self):
        super().__init__(version="1_1")
'''
# The same batching and worker settings as handler/model-config.yaml; a longer responseTimeout,
# since a batch of 8 Captum explanations takes seconds per image.
STOCK_MODEL_CONFIG = """minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 20
responseTimeout: 600
startupTimeout: 120
"""


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # round-robin rounds of the fast contenders per concurrency
    requests: dict[int, int]  # per slice (one contender, one round), by concurrency
    captum_requests: dict[int, int]  # one slice per concurrency; 0 = not measured
    repeats: int  # in-process repetitions
    compile: bool
    server_levers: bool  # the extra servers of VARIANTS


QUICK = Mode("quick", 2, {1: 8, 8: 32, 32: 64}, {1: 1, 8: 8, 32: 0}, 2, False, False)
FULL = Mode("full", 4, {1: 32, 8: 128, 32: 160}, {1: 3, 8: 16, 32: 32}, 7, True, True)


# ---------------------------------------------------------------------------------------------
# Photos


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes  # what is POSTed
    size: tuple[int, int]


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def load_photos(folder: Path | None) -> list[Photo]:
    """scikit-image's real photos of several sizes as JPEG, or every image file in ``folder``."""
    if folder is not None:
        found = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}:
                with Image.open(path) as image:
                    found.append(Photo(path.name, path.read_bytes(), image.size))
        if not found:
            raise SystemExit(f"error: no images in {folder}")
        return found
    from skimage import data

    arrays = {
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "astronaut": data.astronaut,
        "rocket": data.rocket,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "hubble_deep_field": data.hubble_deep_field,
    }
    photos = []
    for name, make in arrays.items():
        array = make()
        photos.append(Photo(f"{name}.jpg", jpeg(array), (array.shape[1], array.shape[0])))
    return photos


# ---------------------------------------------------------------------------------------------
# Archives and server


def build_stock_mar(weights: Path, store: Path, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.py").write_text(STOCK_MODEL_FILE)
    (work / "model-config.yaml").write_text(STOCK_MODEL_CONFIG)
    labels = {str(i): name for i, name in enumerate(torchvision_categories())}
    (work / "index_to_name.json").write_text(json.dumps(labels))
    subprocess.run(
        [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            *("--model-name", STOCK, "--version", "1.0"),
            *("--model-file", str(work / "model.py")),
            *("--serialized-file", str(weights)),
            *("--handler", "image_classifier"),
            *("--extra-files", str(work / "index_to_name.json")),
            *("--config-file", str(work / "model-config.yaml")),
            *("--export-path", str(store), "--force"),
        ],
        check=True,
    )
    return store / f"{STOCK}.mar"


def describe(server: Server, model: str) -> dict:
    from saliency_tools.server import http_json

    return http_json(f"{server.url('management')}/models/{model}", server.keys["management"])[0]


def worker_pids(server: Server, model: str) -> list[int]:
    with contextlib.suppress(Exception):
        return [int(w["pid"]) for w in describe(server, model)["workers"] if w.get("pid")]
    return []


# ---------------------------------------------------------------------------------------------
# Load generation


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    path: str
    bodies: list[tuple[bytes, str]]  # (body, content type), one per photo


@dataclass
class Slice:
    latencies: list[float]
    sizes: list[int]
    errors: int
    elapsed: float


@dataclass
class Cell:
    """Every slice of one contender at one concurrency."""

    slices: list[Slice] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(s.latencies) + s.errors for s in self.slices)

    @property
    def rate(self) -> float:
        elapsed = sum(s.elapsed for s in self.slices)
        return sum(len(s.latencies) for s in self.slices) / elapsed if elapsed else 0.0

    @property
    def rates(self) -> list[float]:
        return [len(s.latencies) / s.elapsed for s in self.slices if s.elapsed]

    def percentile(self, q: float) -> float:
        values = [v for s in self.slices for v in s.latencies]
        return float(np.percentile(values, q)) * 1000 if values else math.nan

    @property
    def mean_bytes(self) -> float:
        values = [v for s in self.slices for v in s.sizes]
        return float(np.mean(values)) if values else math.nan

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.slices)


def multipart(fields: dict[str, tuple[bytes, str | None]]) -> tuple[bytes, str]:
    """A multipart/form-data body: name -> (value, filename or None)."""
    boundary = "bench" + os.urandom(8).hex()
    parts = []
    for name, (value, filename) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "application/octet-stream" if filename else "text/plain"
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n"
        parts.append(head.encode() + value + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(connection: http.client.HTTPConnection, contender: Contender, index: int, key: str):
    body, kind = contender.bodies[index % len(contender.bodies)]
    headers = {"Content-Type": kind, "Authorization": f"Bearer {key}"}
    connection.request("POST", contender.path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def run_slice(port: int, key: str, contender: Contender, concurrency: int, count: int) -> Slice:
    """``count`` requests from ``concurrency`` closed-loop threads, each with a kept-alive link."""
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    sizes: list[int] = []
    errors = [0]

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
        try:
            while True:
                with lock:
                    index = issued[0]
                    if index >= count:
                        return
                    issued[0] += 1
                start = time.perf_counter()
                try:
                    status, data = post(connection, contender, index, key)
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
                    status, data = 0, b""
                elapsed = time.perf_counter() - start
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                        sizes.append(len(data))
                    else:
                        errors[0] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Slice(latencies, sizes, errors[0], time.perf_counter() - start)


@dataclass(frozen=True)
class Variant:
    """A server setting besides the production one, measured for (a) and (b) at one concurrency."""

    key: str
    label: str
    env: dict[str, str]  # of TorchServe and so of its workers
    workers: int = 1
    batching: dict[str, int] = field(default_factory=dict)  # model-config.yaml overrides
    concurrencies: tuple[int, ...] = (8,)  # where the setting matters

    @property
    def model_config(self) -> dict[str, int]:
        return {"minWorkers": self.workers, "maxWorkers": self.workers, **self.batching}


# The worker's OpenMP settings come from TorchServe's environment; these are the variables the
# variants set, removed from the benchmark's own environment so that each server gets exactly its
# variant's (libgomp reads them when torch loads, so the handler cannot set them itself).
OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
# As served: scripts/serve.sh and the Dockerfile export OMP_WAIT_POLICY=PASSIVE.
MAIN = Variant("", "as served: 1 worker, 2 threads, OMP_WAIT_POLICY=PASSIVE", PASSIVE)
ONE_THREAD = {"OMP_NUM_THREADS": "1", **PASSIVE}
VARIANTS = (
    MAIN,
    Variant("spin", "1 worker, 2 threads, OpenMP's default (spinning) waits", {}),
    Variant("t1", "1 worker, OMP_NUM_THREADS=1", ONE_THREAD),
    Variant("w2", "2 workers, OMP_NUM_THREADS=1", ONE_THREAD, workers=2),
    # A lone request waits maxBatchDelay for company: the delay is a latency cost at low load.
    Variant(
        "d5", "maxBatchDelay 5 ms", PASSIVE, batching={"maxBatchDelay": 5}, concurrencies=(1, 8)
    ),
    Variant("b16", "batchSize 16", PASSIVE, batching={"batchSize": 16}, concurrencies=(32,)),
)


def http_benchmark(
    photos: list[Photo], weights: Path, mode: Mode, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    from saliency_tools.archive import build, variant_archive

    store = work / "store"
    log("building the archives")
    build(weights, store)
    build_stock_mar(weights, store, work / "stock")
    servers: dict[str, Server] = {}
    stock_workers: list[int] = []
    try:
        for variant in VARIANTS if mode.server_levers else (MAIN,):
            variant_store = store
            if variant.model_config != MAIN.model_config:
                variant_store = work / f"store-{variant.key}"
                for model in (OURS, STOCK):
                    mar = store / f"{model}.mar"
                    variant_archive(variant_store, mar, **variant.model_config)
            server = Server(
                workdir=work / f"server-{variant.key or 'main'}",
                model_store=variant_store,
                extra_config=f"load_models={OURS}={OURS}.mar,{STOCK}={STOCK}.mar",
                env=dict(variant.env),
            )
            log(f"starting TorchServe ({variant.label})")
            servers[variant.key] = server.start()
            wait_ready(server.workdir, server.url("management"), server.pid_file, 180, STOCK)
            stock_workers += worker_pids(server, STOCK)
        main = servers[MAIN.key]
        settings = {}
        for model in (OURS, STOCK):
            described = describe(main, model)
            settings[model] = {k: described[k] for k in ("batchSize", "maxBatchDelay")}
            settings[model]["workers"] = len(described["workers"])
        return {"settings": settings, **drive(servers, photos, mode, log)}
    finally:
        log("stopping TorchServe")
        threads = {}
        for key, server in servers.items():
            server.stop()
            found = re.findall(
                r"squeezenet_saliency ready on .*?(\d+) torch threads", server.log_text()
            )
            threads[key] = found[-1] if found else "?"
        for pid in stock_workers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        log(f"torch threads per worker (from our handler's log): {threads}")


def contenders(photos: list[Photo]) -> dict[str, Contender]:
    raw = [(p.data, "application/octet-stream") for p in photos]
    no_map = [multipart({"image": (p.data, p.name), "saliency": (b"false", None)}) for p in photos]
    return {
        "a_stock": Contender("a_stock", "(a) stock image_classifier", f"/predictions/{STOCK}", raw),
        "a_ours": Contender("a_ours", "(a) ours, saliency=false", f"/predictions/{OURS}", no_map),
        "b": Contender("b", "(b) ours, class + saliency map", f"/predictions/{OURS}", raw),
        "c": Contender("c", "(c) stock /explanations (Captum IG)", f"/explanations/{STOCK}", raw),
    }


def sanity_check(port: int, key: str, photos: list[Photo], pool: dict[str, Contender]) -> dict:
    """Same weights, same top-1 class from both handlers; the answers have the expected shape."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    agree, details = 0, []
    try:
        for index, photo in enumerate(photos):
            status_s, stock = post(connection, pool["a_stock"], index, key)
            status_o, ours = post(connection, pool["b"], index, key)
            if status_s != 200 or status_o != 200:
                raise RuntimeError(f"{photo.name}: HTTP {status_s} / {status_o}")
            stock_top = max(json.loads(stock).items(), key=lambda kv: kv[1])[0]
            answer = json.loads(ours)
            if "saliency" not in answer or "png" not in answer["saliency"]:
                raise RuntimeError(f"{photo.name}: our answer has no saliency map")
            ours_top = answer["prediction"]["label"]
            agree += stock_top == ours_top
            details.append(f"{photo.name} {photo.size[0]}x{photo.size[1]}: {ours_top}")
        status, explained = post(connection, pool["c"], 0, key)
        if status != 200:
            raise RuntimeError(f"/explanations answered HTTP {status}")
        shape = np.asarray(json.loads(explained)).shape
    finally:
        connection.close()
    return {"agree": agree, "photos": details, "captum_shape": shape}


def drive(
    servers: dict[str, Server], photos: list[Photo], mode: Mode, log: Callable[[str], None]
) -> dict:
    """Every slice, round-robin; Captum once per concurrency, in the middle of the rounds."""
    pool = contenders(photos)
    main = servers[MAIN.key]
    check = sanity_check(main.ports["inference_address"], main.keys["inference"], photos, pool)
    log(f"top-1 agreement stock vs ours: {check['agree']}/{len(photos)}")

    def run(key: str, concurrency: int, count: int) -> Slice:
        name, _, variant = key.partition("@")
        server = servers[variant]
        port, token = server.ports["inference_address"], server.keys["inference"]
        return run_slice(port, token, pool[name], concurrency, count)

    fast = ["a_stock", "a_ours", "b"]
    levers = {
        f"{n}@{v.key}": v.concurrencies
        for v in VARIANTS
        if v.key in servers and v.key
        for n in ("a_stock", "b")
    }
    for key in fast + list(levers):  # every batch size up to 8 once: lazy set-up is paid before
        run(key, 8, 24)
    cells: dict[tuple[str, int], Cell] = {}
    for concurrency in CONCURRENCY:
        names = fast + [key for key, at in levers.items() if concurrency in at]
        for round_ in range(mode.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                piece = run(name, concurrency, mode.requests[concurrency])
                cells.setdefault((name, concurrency), Cell()).slices.append(piece)
                log(
                    f"c={concurrency:<2} round {round_ + 1}/{mode.rounds} {name:<10} "
                    f"{len(piece.latencies) / piece.elapsed:6.1f} req/s"
                )
            captum = mode.captum_requests[concurrency]
            if round_ == (mode.rounds - 1) // 2 and captum:
                piece = run("c", concurrency, captum)
                cells.setdefault(("c", concurrency), Cell()).slices.append(piece)
                log(f"c={concurrency:<2} captum {len(piece.latencies) / piece.elapsed:6.2f} req/s")
    labels = {k: c.label for k, c in pool.items()}
    return {"cells": cells, "labels": labels, "check": check}


# ---------------------------------------------------------------------------------------------
# In process


def alternate(funcs: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, list[float]]:
    """Seconds per call of each function, called in rotating order (one warm-up call each)."""
    for func in funcs.values():
        func()
    names = list(funcs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            funcs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def med(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def best(values: Sequence[float]) -> float:
    return min(values) * 1000


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [v.flatten().argsort().argsort().double() for v in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def saliency(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return vanilla_saliency(model, x).maps


def split_gradient(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """vanilla_saliency's two halves timed apart: forward recording autograd, backward to input."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        logits = model(leaf)
        middle = time.perf_counter()
        targets = logits.argmax(dim=1)
        score = logits.gather(1, targets[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, leaf)
        maps = gradients.abs().amax(dim=1)
        end = time.perf_counter()
    return middle - start, end - middle, maps


def batch_rows(photos: list[Photo], size: int) -> list[bytes]:
    return [photos[i % len(photos)].data for i in range(size)]


def add(name: str, seconds: float, into: dict[str, list[float]]) -> None:
    into.setdefault(name, []).append(seconds)


def stage_breakdown(service: SaliencyService, photos: list[Photo], repeats: int) -> list[dict]:
    """Seconds per stage of the saliency path (and the classification forward) per batch size."""
    model = service.model
    results = []
    for size in BATCHES:
        data = batch_rows(photos, size)
        stages: dict[str, list[float]] = {}
        report: dict[str, list[float]] = {}

        for r in range(repeats + 1):  # the first repetition is a warm-up
            start = time.perf_counter()
            decoded = [images.decode(d) for d in data]
            t1 = time.perf_counter()
            prepared = [images.preprocess(image) for image in decoded]
            x = service.model_input([p.tensor for p in prepared])
            t2 = time.perf_counter()
            forward(model, x)
            t3 = time.perf_counter()
            fwd_grad, backward, maps = split_gradient(model, x)
            t4 = time.perf_counter()
            pixels, _ = rendering.quantise(maps)
            pngs = [rendering.png_base64(p) for p in pixels]
            t5 = time.perf_counter()
            answers = service.handle_batch([{"body": d} for d in data])
            t6 = time.perf_counter()
            [json.dumps(a.body, separators=(",", ":")).encode() for a in answers]
            t7 = time.perf_counter()
            if r == 0:
                assert all(a.status == 200 for a in answers) and len(pngs) == size
                continue
            add("decode", t1 - start, stages)
            add("preprocess", t2 - t1, stages)
            add("forward", t3 - t2, stages)
            add("forward_autograd", fwd_grad, stages)
            add("backward", backward, stages)
            add("png", t5 - t4, stages)
            add("json", t7 - t6, stages)
            add("handle_batch", t6 - t5, stages)
            for stage, seconds in service.last_report.seconds.items():
                add(stage, seconds, report)
        results.append({"batch": size, "stages": stages, "report": report})
    return results


def gradient_ratio(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Forward + input gradient / forward, both in the served layout; and / an NCHW forward."""
    nchw, x_nchw = contiguous_copy(model), x.contiguous()
    times = alternate(
        {
            "forward": lambda: forward(model, x),
            "fwd_grad": lambda: saliency(model, x),
            "forward_nchw": lambda: forward(nchw, x_nchw),
        },
        repeats,
    )
    pairs = [g / f for f, g in zip(times["forward"], times["fwd_grad"], strict=True)]
    return {
        "times": times,
        "median_ratio": med(times["fwd_grad"]) / med(times["forward"]),
        "best_ratio": best(times["fwd_grad"]) / best(times["forward"]),
        "paired_median": statistics.median(pairs),
        "vs_nchw_forward": med(times["fwd_grad"]) / med(times["forward_nchw"]),
    }


def contiguous_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model in PyTorch's default (NCHW) layout, as the stock handler runs it."""
    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


# What the profiler's operator names are, for the table of where the saliency pass spends its time.
OPERATORS = {
    "aten::mkldnn_convolution": "convolutions, forward",
    "aten::convolution_backward": "convolutions, input gradient (transposed convolutions)",
    "aten::threshold_backward": "ReLU backward (gradient times the ReLU mask)",
    "aten::max_pool2d_with_indices": "max pooling, forward (keeps the argmax indices)",
    "aten::max_pool2d_with_indices_backward": "max pooling, backward (scatter to the argmax)",
    "aten::cat": "Fire modules' concatenation, forward",
    "aten::clamp_min_": "ReLU, forward",
    "aten::fill_": "zero-filling gradient buffers (max pooling backward)",
    "aten::abs": "saliency map: absolute value",
    "aten::amax": "saliency map: max over colour channels",
}


def op_profile(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Self CPU time per operator of the saliency pass, ms per batch (with profiler overhead)."""
    from torch.profiler import ProfilerActivity, profile

    saliency(model, x)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            saliency(model, x)
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1000 / repeats
    top = [(e.key, e.self_cpu_time_total / 1000 / repeats) for e in events[:9]]
    return {"total_ms": total, "top": top}


def naive_backward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a textbook saliency does: trainable parameters, loss.backward(), x.grad."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        logits = model(leaf)
        logits.gather(1, logits.argmax(dim=1)[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)
        return leaf.grad.abs().amax(dim=1)


def photo_batch(photos: list[Photo], size: int) -> torch.Tensor:
    """A preprocessed batch in the served (channels_last) layout; ``.contiguous()`` gives NCHW."""
    decoded = [images.decode(d) for d in batch_rows(photos, size)]
    stacked = torch.stack([images.preprocess(image).tensor for image in decoded])
    return stacked.contiguous(memory_format=torch.channels_last)


def levers(
    service: SaliencyService, photos: list[Photo], repeats: int, compile_: bool, log
) -> list[dict]:
    """Each lever timed against its baseline, alternated, at batch 8 unless said otherwise."""
    model = service.model  # channels_last, as served
    x = photo_batch(photos, 8)
    rows: list[dict] = []

    def timed_rows(funcs: dict[tuple[str, str], Callable[[], Any]], notes=None) -> dict:
        """Time (group, variant) functions alternated; the first variant of a group is its base."""
        times = alternate(funcs, repeats)
        bases: dict[str, float] = {}
        for (group, variant), values in times.items():
            base = bases.setdefault(group, med(values))
            rows.append(
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

    def timed_row(group: str, funcs: dict[str, Callable[[], Any]], note: str = "") -> None:
        last = list(funcs)[-1]
        timed_rows({(group, k): f for k, f in funcs.items()}, {(group, last): note})

    log("lever: input-only gradient vs trainable parameters")
    trainable = copy.deepcopy(model).requires_grad_(True)
    timed_row(
        "gradient (batch 8)",
        {
            "frozen params, autograd.grad(x) [current]": lambda: saliency(model, x),
            "trainable params, autograd.grad(x)": lambda: saliency(trainable, x),
            "trainable params, loss.backward()": lambda: naive_backward(trainable, x),
        },
    )

    log("lever: channels_last and bf16 autocast")
    nchw, x_nchw = contiguous_copy(model), x.contiguous()

    def bf16(func: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return func()

        return run

    reference = saliency(nchw, x_nchw)  # fp32 in PyTorch's default layout
    corr_bf16 = [
        spearman(a, b) for a, b in zip(reference, bf16(lambda: saliency(model, x))(), strict=True)
    ]
    corr_last = [spearman(a, b) for a, b in zip(reference, saliency(model, x), strict=True)]
    top_bf16 = (bf16(lambda: forward(model, x))().argmax(1) == forward(model, x).argmax(1)).sum()

    def paired(label: str, variants: dict[str, tuple[Callable, Callable]]) -> None:
        """Forward and forward + gradient of every variant in one alternated group."""
        fwd_group, grad_group = f"forward, {label}", f"forward + gradient, {label}"
        funcs = {(fwd_group, name): pair[0] for name, pair in variants.items()}
        funcs |= {(grad_group, name): pair[1] for name, pair in variants.items()}
        times = timed_rows(funcs)
        for row in rows:
            if row["group"] == grad_group:
                ratio = row["median_ms"] / med(times[(fwd_group, row["variant"])])
                row["note"] = f"/ forward: {ratio:.2f}"

    paired(
        "batch 8, layout and precision",
        {
            "fp32 channels_last [current]": (
                lambda: forward(model, x),
                lambda: saliency(model, x),
            ),
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
    rows[-1]["note"] += (
        f"; map rank corr. vs fp32 NCHW: channels_last >= {min(corr_last):.4f}, "
        f"bf16 >= {min(corr_bf16):.3f}; bf16 top-1 agrees on {int(top_bf16)}/8"
    )

    log("lever: torch threads")
    threads = torch.get_num_threads()

    def with_threads(n: int, step: Callable) -> Callable[[], Any]:
        def run() -> Any:
            torch.set_num_threads(n)
            try:
                return step(model, x)
            finally:
                torch.set_num_threads(threads)

        return run

    paired(
        "batch 8, torch threads",
        {
            f"{n} thread(s)" + (" [current]" if n == threads else ""): (
                with_threads(n, forward),
                with_threads(n, saliency),
            )
            for n in sorted({1, threads}, key=lambda n: n != threads)
        },
    )

    log("lever: preprocessing and decoding")
    decoded = [images.decode(d) for d in batch_rows(photos, 8)]
    reference_x = photo_batch(photos, 8)
    timed_row(
        "preprocess 8 images",
        {
            "per image, then stack [current]": lambda: service.model_input(
                [images.preprocess(i).tensor for i in decoded]
            ),
            "PIL crop per image, one batched normalise": lambda: batched_preprocess(decoded),
        },
        f"max abs diff {float((batched_preprocess(decoded) - reference_x).abs().max()):.1e}",
    )
    large = [p for p in photos if p.data[:2] == b"\xff\xd8"]
    if large:
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
            timed_row(
                f"decode + preprocess, {label}",
                {
                    "PIL full decode [current]": lambda d=data: images.preprocess(images.decode(d)),
                    "PIL JPEG draft (DCT downscale)": lambda d=data: images.preprocess(
                        draft_decode(d)
                    ),
                },
                f"draft changes pixels by up to ~{diff:.0f}/255",
            )

    log("lever: PNG encoding")
    pixels, _ = rendering.quantise(reference)
    coloured = {
        "gray": list(pixels),
        "hot": [rendering.colorize(p, "hot") for p in pixels],
    }
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
    png_rows = [
        {
            "encoder": name,
            "colour": colour,
            "ms_per_map": med(values) / len(pixels),
            "bytes": statistics.mean(len(encoders[name](a)) for a in coloured[colour]),
        }
        for (name, colour), values in alternate(funcs, repeats).items()
    ]
    rows.append({"group": "png", "rows": png_rows})

    if compile_:
        log("lever: torch.compile of forward + backward (minutes)")
        rows.append(compile_lever(model, photos, repeats))
    return rows


SERVED_GRAY_ENCODER = "unfiltered rows, zlib RLE (rendering.gray_png)"


def png(array: np.ndarray, level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


MEAN = torch.tensor(images.IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(images.IMAGENET_STD).view(1, 3, 1, 1)


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


def compile_lever(model: torch.nn.Module, photos: list[Photo], repeats: int) -> dict:
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
                    pairs = zip(maps, saliency(model, x), strict=True)
                    corr = min(spearman(a, b) for a, b in pairs)
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


def in_process(weights: Path, photos: list[Photo], mode: Mode, log: Callable[[str], None]) -> dict:
    """The in-process half: stage breakdown, gradient ratio and its operators, levers."""
    log("in process: stage breakdown")
    service = SaliencyService(load_model(weights), Labels(torchvision_categories()))
    service.warm_up()
    stages = stage_breakdown(service, photos, mode.repeats)
    log("in process: forward + gradient / forward at batch 8, and its operators")
    x8 = photo_batch(photos, 8)
    ratio = gradient_ratio(service.model, x8, mode.repeats * 3)
    ratio["profile"] = op_profile(service.model, x8, mode.repeats)
    lever_rows = levers(service, photos, mode.repeats, mode.compile, log)
    return {"stages": stages, "ratio": ratio, "levers": lever_rows}


# ---------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "torchvision", "torchserve", "captum", "pillow"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[package] = md.version(package)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "threads": f"{torch.get_num_threads()} intra-op, "
        f"{torch.get_num_interop_threads()} inter-op",
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def render(
    command: str,
    mode: Mode,
    info: dict,
    served: dict | None,
    process: dict | None,
    note: str,
) -> str:
    out: list[str] = []
    w = out.append
    w(f"Command: `{command}` ({mode.name} mode)  ")
    w(f"Date: {info['date']}  ")
    w(
        f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores "
        f"(CPU capability {info['machine']['capability']}); Python {info['machine']['python']}; "
        f"{info['machine']['versions']}; torch threads {info['machine']['threads']}  "
    )
    w(f"Load average (1/5/15 min) at start: {info['load_start']}; at end: {info['load_end']}  ")
    w(f"Photos: {', '.join(info['photos'])}  ")
    if note:
        w(f"Note: {note}  ")
    w(
        "The load generator (Python threads, http.client, kept-alive connections) runs on the "
        "same cores as TorchServe's front end and worker, so every end-to-end number includes "
        "its cost."
    )
    w("")
    if served:
        cells = served["cells"]
        labels = served["labels"]
        settings = served["settings"]
        w("### End to end (all contenders on one TorchServe, production config)")
        w("")
        w(
            "Batch settings as served: "
            + "; ".join(
                f"{m}: batchSize {s['batchSize']}, maxBatchDelay {s['maxBatchDelay']} ms, "
                f"{s['workers']} worker"
                for m, s in settings.items()
            )
            + f". Top-1 class agreement stock vs ours: {served['check']['agree']}/"
            f"{len(served['check']['photos'])} photos."
        )
        w("")
        w(
            "| contender | concurrency | requests | req/s (per-round range) | p50 ms | p95 ms "
            "| p99 ms | mean response bytes | errors |"
        )
        w("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for concurrency in CONCURRENCY:
            for key in ("a_stock", "a_ours", "b", "c"):
                cell = cells.get((key, concurrency))
                if cell is None:
                    if key == "c":
                        w(
                            f"| {labels[key]} | {concurrency} | 0 | not measured in this mode "
                            "| | | | | |"
                        )
                    continue
                spread = (
                    f" ({fmt(min(cell.rates))}-{fmt(max(cell.rates))})"
                    if len(cell.rates) > 1
                    else ""
                )
                digits = 2 if key == "c" else 1
                w(
                    f"| {labels[key]} | {concurrency} | {cell.requests} | "
                    f"{fmt(cell.rate, digits)}{spread} | {fmt(cell.percentile(50), 0)} | "
                    f"{fmt(cell.percentile(95), 0)} | {fmt(cell.percentile(99), 0)} | "
                    f"{fmt(cell.mean_bytes, 0)} | {cell.errors} |"
                )
        w("")
        w("Ratios (throughput and mean response size):")
        w("")
        w(
            "| concurrency | b/a throughput (stock) | b/a throughput (ours, no map) | "
            "b/c throughput | c/b response size | b/a response size (stock) |"
        )
        w("|---:|---:|---:|---:|---:|---:|")
        for concurrency in CONCURRENCY:
            b = cells[("b", concurrency)]
            a = cells[("a_stock", concurrency)]
            o = cells[("a_ours", concurrency)]
            c = cells.get(("c", concurrency))
            w(
                f"| {concurrency} | {fmt(b.rate / a.rate, 2)} | {fmt(b.rate / o.rate, 2)} | "
                f"{fmt(b.rate / c.rate, 0) + 'x' if c else 'n/a'} | "
                f"{fmt(c.mean_bytes / b.mean_bytes, 0) + 'x' if c else 'n/a'} | "
                f"{fmt(b.mean_bytes / a.mean_bytes, 0)}x |"
            )
        w("")
    if served and any("@" in key for key, _ in served["cells"]):
        w(
            "Server settings as a lever (both contenders of a row on one server, in the same "
            "round-robin as the main table; each setting at the concurrency where it matters, "
            "after the production server's row at that concurrency):"
        )
        w("")
        w(
            "| server setting | concurrency | (a) stock req/s | (b) ours req/s | b/a | (a) p50 ms "
            "| (b) p50 ms | (b) p95 ms |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for concurrency in sorted({c for v in VARIANTS[1:] for c in v.concurrencies}):
            for variant in VARIANTS:
                if variant.key and concurrency not in variant.concurrencies:
                    continue
                suffix = f"@{variant.key}" if variant.key else ""
                a = cells.get((f"a_stock{suffix}", concurrency))
                b = cells.get((f"b{suffix}", concurrency))
                if a is None or b is None:
                    continue
                w(
                    f"| {variant.label} | {concurrency} | {fmt(a.rate)} | {fmt(b.rate)} | "
                    f"{fmt(b.rate / a.rate, 2)} | {fmt(a.percentile(50), 0)} | "
                    f"{fmt(b.percentile(50), 0)} | {fmt(b.percentile(95), 0)} |"
                )
        w("")
    if process:
        w(f"### In process (server stopped): milliseconds per batch, median of {mode.repeats} runs")
        w("")
        w(
            "| batch | decode | preprocess | forward (inference) | forward (recording autograd) | "
            "backward to input | PNG encode | JSON | saliency path per image | "
            "classification path per image | handle_batch per image (decode / fwd+bwd / encode) |"
        )
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for entry in process["stages"]:
            s = {k: med(v) for k, v in entry["stages"].items()}
            r = {k: med(v) for k, v in entry["report"].items()}
            n = entry["batch"]
            sal = s["decode"] + s["preprocess"] + s["forward_autograd"] + s["backward"]
            sal += s["png"] + s["json"]
            cls = s["decode"] + s["preprocess"] + s["forward"]
            w(
                f"| {n} | {fmt(s['decode'])} | {fmt(s['preprocess'])} | {fmt(s['forward'])} | "
                f"{fmt(s['forward_autograd'])} | {fmt(s['backward'])} | {fmt(s['png'])} | "
                f"{fmt(s['json'])} | {fmt(sal / n)} | {fmt(cls / n)} | "
                f"{fmt(s['handle_batch'] / n)} ({fmt(r['decode'] / n)} / "
                f"{fmt(r['forward_backward'] / n)} / {fmt(r['encode'] / n)}) |"
            )
        ratio = process["ratio"]
        w("")
        w(
            "Forward + input gradient (`vanilla_saliency`) / forward alone (inference mode), "
            f"batch 8, served channels_last layout, {mode.repeats * 3} alternated runs: median "
            f"{fmt(ratio['median_ratio'], 2)} (best-of {fmt(ratio['best_ratio'], 2)}, median of "
            f"paired runs {fmt(ratio['paired_median'], 2)}); forward "
            f"{fmt(med(ratio['times']['forward']))} ms, forward + gradient "
            f"{fmt(med(ratio['times']['fwd_grad']))} ms. The same forward in PyTorch's default "
            f"NCHW layout (what the stock handler runs): "
            f"{fmt(med(ratio['times']['forward_nchw']))} ms, so our forward + gradient costs "
            f"{fmt(ratio['vs_nchw_forward'], 2)} x the stock handler's forward."
        )
        w("")
        profile = ratio["profile"]
        w(
            "Where the saliency pass (batch 8, channels_last) spends its time: self CPU time per "
            f"operator from `torch.profiler`, {fmt(profile['total_ms'])} ms per batch in all "
            "(profiler overhead included):"
        )
        w("")
        w("| operator | what it is | ms per batch | share |")
        w("|---|---|---:|---:|")
        for name, ms in profile["top"]:
            w(
                f"| `{name}` | {OPERATORS.get(name, '')} | {fmt(ms)} | "
                f"{100 * ms / profile['total_ms']:.0f}% |"
            )
        w("")
        w("### Levers, in process (median ms over alternated runs; best-of in brackets)")
        w("")
        w("| what | variant | median ms | best ms | vs current | note |")
        w("|---|---|---:|---:|---:|---|")
        extra = []
        for row in process["levers"]:
            if row["group"] == "png":
                extra.append(row)
                continue
            if row["group"] == "compile":
                extra.append(row)
                continue
            w(
                f"| {row['group']} | {row['variant']} | {fmt(row['median_ms'])} | "
                f"{fmt(row['best_ms'])} | {fmt(row['vs_base'], 2)} | {row['note']} |"
            )
        for row in extra:
            if row["group"] == "png":
                w("")
                w("PNG encoding of the 224x224 maps (ms per map, bytes per PNG before base64):")
                w("")
                w("| encoder | gray map ms | gray bytes | hot RGB ms | hot RGB bytes |")
                w("|---|---:|---:|---:|---:|")
                by = {(p["encoder"], p["colour"]): p for p in row["rows"]}
                for name in dict.fromkeys(p["encoder"] for p in row["rows"]):
                    columns = []
                    for colour in ("gray", "hot"):
                        found = by.get((name, colour))
                        is_current = (
                            name == SERVED_GRAY_ENCODER
                            if colour == "gray"
                            else name == f"Pillow, level {rendering.PNG_COMPRESS_LEVEL}"
                        )
                        mark = " [current]" if is_current else ""
                        columns += (
                            [f"{fmt(found['ms_per_map'], 2)}{mark}", fmt(found["bytes"], 0)]
                            if found
                            else ["", ""]
                        )
                    w(f"| {name} | " + " | ".join(columns) + " |")
            else:
                firsts = row["firsts"]
                w("")
                w(
                    "torch.compile (inductor, default mode) of the model, forward + input "
                    "gradient: time to first answer "
                    + ", ".join(f"batch {k}: {fmt(v, 1)} s" for k, v in firsts.items())
                    + ", in this order, cold inductor cache (a first call that takes about a "
                    "second reused a graph; one that takes tens of seconds compiled one). Steady "
                    "state at batch 8: eager "
                    f"{fmt(med(row['times']['eager']))} ms, compiled "
                    f"{fmt(med(row['times']['compiled']))} ms; forward alone eager "
                    f"{fmt(med(row['forward']['eager']))} ms, compiled "
                    f"{fmt(med(row['forward']['compiled']))} ms; map rank correlation compiled "
                    f"vs eager >= {row['corr']:.4f}."
                )
        w("")
    if served and process:
        w("### Targets (CPU)")
        w("")
        b8, a8 = cells[("b", 8)], cells[("a_stock", 8)]
        c8 = cells.get(("c", 8))
        measured = process["ratio"]
        ratio = measured["median_ratio"]
        rows = [
            (
                "saliency throughput >= 0.70 x plain classification (batch 8, conc. 8)",
                f"{b8.rate / a8.rate:.2f} x stock; "
                f"{b8.rate / cells[('a_ours', 8)].rate:.2f} x ours without map",
                b8.rate / a8.rate >= 0.70,
            ),
        ]
        if c8:
            rows.append(
                (
                    "throughput >= 40 x Captum /explanations (conc. 8)",
                    f"{b8.rate / c8.rate:.0f} x",
                    b8.rate / c8.rate >= 40,
                )
            )
            rows.append(
                (
                    "response >= 50 x smaller than Captum's",
                    f"{c8.mean_bytes / b8.mean_bytes:.0f} x",
                    c8.mean_bytes / b8.mean_bytes >= 50,
                )
            )
        rows.append(
            (
                "in process: forward + input gradient <= 1.4 x forward (batch 8)",
                f"{ratio:.2f} x (both channels_last); "
                f"{measured['vs_nchw_forward']:.2f} x the NCHW forward",
                ratio <= 1.4,
            )
        )
        w("| target | measured | met |")
        w("|---|---|---|")
        for name, value, met in rows:
            w(f"| {name} | {value} | {'yes' if met else 'no'} |")
        w("")
    return "\n".join(out)


def write_doc(path: Path, block: str) -> None:
    text = path.read_text() if path.is_file() else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


# ---------------------------------------------------------------------------------------------
# Any architecture (--arch): saliency vs plain classification for one archive of random weights


def slice_requests(rate: float, seconds: float, concurrency: int) -> int:
    """Requests for a slice of about ``seconds`` at ``rate`` req/s, at least 2 per thread."""
    if not math.isfinite(rate) or rate <= 0:
        return 2 * concurrency
    return max(2 * concurrency, round(rate * seconds))


def memory_kib(status: str) -> dict[str, int]:
    """VmHWM (peak resident) and VmRSS (resident now), in KiB, of a /proc/PID/status text."""
    found = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS") and value.split():
            found[key] = int(value.split()[0])
    return found


def build_arch_mar(arch: str, classes: int, store: Path) -> tuple[Path, int]:
    """(archive, parameter count) of ``arch`` with seeded random weights, by build_mar.py."""
    import torchvision

    from saliency_tools import archive as build_mar

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    store.mkdir(parents=True, exist_ok=True)
    weights = store.parent / f"{arch}.pth"
    torch.save(model.state_dict(), weights)
    name = f"{arch}_bench"
    argv = ["--arch", arch, "--weights", str(weights), "--name", name]
    if build_mar.main([*argv, "--export-path", str(store)]) != 0:
        raise RuntimeError(f"build_mar.py could not archive {arch}")
    return store / f"{name}.mar", sum(p.numel() for p in model.parameters())


def arch_benchmark(
    arch: str,
    photos: list[Photo],
    args: argparse.Namespace,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One TorchServe (as served: OMP_WAIT_POLICY=PASSIVE) with ``arch``'s archive; its plain
    and saliency contenders alternated (the order rotates every round), then the worker's memory."""
    log(f"{arch}: building the archive")
    mar, params = build_arch_mar(arch, args.num_classes, work / "store")
    name = mar.stem
    server = Server(
        workdir=work / "server",
        model_store=mar.parent,
        models_arg=[f"{name}={mar.name}"],  # no _sampled registration: not measured
        env=dict(PASSIVE),
    )
    pool = contenders(photos)
    path = f"/predictions/{name}"
    pool = {"plain": replace(pool["a_ours"], path=path), "saliency": replace(pool["b"], path=path)}
    log(f"{arch}: starting TorchServe")
    server.start()
    try:
        port, key = server.ports["inference_address"], server.keys["inference"]
        warm = {
            k: run_slice(port, key, c, args.concurrency, 3 * args.concurrency)
            for k, c in pool.items()
        }
        cells = {k: Cell() for k in pool}
        for round_ in range(args.rounds):
            names = list(pool)[round_ % 2 :] + list(pool)[: round_ % 2]
            for key_ in names:
                cell = cells[key_]
                rate = cell.rate if cell.slices else len(warm[key_].latencies) / warm[key_].elapsed
                count = slice_requests(rate, args.seconds / args.rounds, args.concurrency)
                piece = run_slice(port, key, pool[key_], args.concurrency, count)
                cell.slices.append(piece)
                log(
                    f"{arch} round {round_ + 1}/{args.rounds} {key_:<8} "
                    f"{len(piece.latencies) / piece.elapsed:6.1f} req/s"
                )
        memory: dict[str, int] = {}
        for pid in server.worker_pids(name):
            with contextlib.suppress(OSError):
                memory = memory_kib(Path(f"/proc/{pid}/status").read_text())
        described = describe(server, name)
    finally:
        server.stop()
    return {
        "arch": arch,
        "params": params,
        "cells": cells,
        "memory": memory,
        "batching": f"batchSize {described['batchSize']}, maxBatchDelay "
        f"{described['maxBatchDelay']} ms, {len(described['workers'])} worker",
    }


def rate_range(cell: Cell) -> str:
    """req/s over all slices, and the per-slice range."""
    spread = f" ({fmt(min(cell.rates))}-{fmt(max(cell.rates))})" if cell.rates else ""
    return fmt(cell.rate) + spread


def render_arch(command: str, info: dict, results: list[dict], concurrency: int) -> str:
    """A Markdown table: one row per architecture, saliency / plain req/s and worker memory."""
    out = [
        f"Command: `{command}`; {info['date']}; {info['machine']['cpu']}, "
        f"{info['machine']['cores']} cores; load average {info['load_start']} -> "
        f"{info['load_end']}; concurrency {concurrency}; random weights, "
        f"{results[0]['batching'] if results else ''}.",
        "",
        "| model | parameters | plain req/s (per-slice range) | saliency req/s (per-slice range) "
        "| saliency / plain | p50 ms plain / saliency | worker VmRSS / VmHWM MiB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        plain, maps = row["cells"]["plain"], row["cells"]["saliency"]
        mib = {k: v / 1024 for k, v in row["memory"].items()}
        out.append(
            f"| {row['arch']} | {row['params'] / 1e6:.1f} M | {rate_range(plain)} | "
            f"{rate_range(maps)} | "
            f"{fmt(maps.rate / plain.rate if plain.rate else math.nan, 2)} | "
            f"{fmt(plain.percentile(50), 0)} / {fmt(maps.percentile(50), 0)} | "
            f"{fmt(mib.get('VmRSS', math.nan), 0)} / {fmt(mib.get('VmHWM', math.nan), 0)} | "
            f"{plain.errors + maps.errors} |"
        )
    return "\n".join(out) + "\n"


def arch_main(args: argparse.Namespace, argv: list[str], log: Callable[[str], None]) -> int:
    """--arch: each architecture on its own server, one after the other; prints the table."""
    photos = load_photos(args.images)
    info = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "load_start": loadavg(),
    }
    results = []
    for arch in args.arch:
        with tempfile.TemporaryDirectory(prefix="bench-arch-") as work:
            results.append(arch_benchmark(arch, photos, args, Path(work), log))
    info["load_end"] = loadavg()
    command = shlex.join([".venv/bin/python", "scripts/bench.py", *argv])
    print(render_arch(command, info, results, args.concurrency))
    return 0


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats")
    parser.add_argument("--images", type=Path, help="a folder of photos instead of skimage's")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--no-server", action="store_true", help="in-process part only")
    parser.add_argument("--no-inprocess", action="store_true", help="end-to-end part only")
    parser.add_argument(
        "--compile",
        dest="compile_",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile lever (default: full mode only)",
    )
    parser.add_argument(
        "--server-levers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="extra servers: OpenMP, workers, batching (default: full mode only)",
    )
    parser.add_argument("--note", default="", help="a remark printed with the results")
    arch = parser.add_argument_group(
        "any architecture", "--arch: saliency vs saliency=false for archives of random weights"
    )
    arch.add_argument("--arch", nargs="+", help="torchvision.models builders, e.g. resnet50")
    arch.add_argument("--num-classes", type=int, default=1000)
    arch.add_argument("--concurrency", type=int, default=8)
    arch.add_argument("--seconds", type=float, default=20.0, help="per contender, about")
    arch.add_argument("--rounds", type=int, default=4, help="alternated slices per contender")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.compile_ is not None:
        mode = Mode(**{**mode.__dict__, "compile": args.compile_})
    if args.server_levers is not None:
        mode = Mode(**{**mode.__dict__, "server_levers": args.server_levers})

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks stop TorchServe
    for name in OPENMP_VARIABLES:  # every server gets exactly its variant's settings
        os.environ.pop(name, None)
    if args.arch:
        return arch_main(args, list(argv if argv is not None else sys.argv[1:]), log)
    try:
        weights = resolve_weights(ROOT / ".cache")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    photos = load_photos(args.images)
    info = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "load_start": loadavg(),
        "photos": [f"{p.name} {p.size[0]}x{p.size[1]} ({len(p.data) // 1024} KiB)" for p in photos],
    }
    started = time.monotonic()
    served = process = None
    if not args.no_server:
        with tempfile.TemporaryDirectory(prefix="bench-") as work:
            served = http_benchmark(photos, weights, mode, Path(work), log)
    if not args.no_inprocess:
        process = in_process(weights, photos, mode, log)
    info["load_end"] = loadavg()
    flags = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-write"]
    command = shlex.join([".venv/bin/python", "scripts/bench.py", *flags])
    block = render(command, mode, info, served, process, args.note)
    block += f"\nTotal run time: {(time.monotonic() - started) / 60:.1f} min.\n"
    print(block)
    if not args.no_write:
        write_doc(args.output, block)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
