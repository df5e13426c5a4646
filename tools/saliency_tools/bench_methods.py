"""Benchmark the explanation methods: our Integrated Gradients against the stock Captum
``/explanations``, Grad-CAM against classification, and every method's cost per image.

    .venv/bin/python scripts/bench_methods.py [--quick] [--images DIR] [--output FILE]
        [--no-write] [--no-server] [--no-inprocess]

One TorchServe (the production config.properties on free ports, OMP_WAIT_POLICY=PASSIVE as
served) serves ``squeezenet_saliency`` (model_store's archive if it matches the working tree and
the weights, else one built from the working tree in a temp dir) and TorchServe's stock
``image_classifier`` with the same weights (``bench.build_stock_mar``). Then:

- maps: every photo explained one request at a time by our ``integrated_gradients`` (steps 15,
  zero baseline: the stock handler's settings) and by the stock ``/explanations`` (Captum
  IntegratedGradients, 15 steps), for the same class; Spearman rank correlation of the maps;
- load, round-robin with the order rotating every round, at concurrency 8 and 1: (i) those two;
  (ii) ours ``gradcam``, ``saliency=false`` and ``vanilla``, all three as multipart forms;
- in process (server stopped): seconds per image of ``SaliencyService.handle_batch`` at batch 8
  for every method at its defaults.

The Markdown report is printed and written between the markers of --output (the rest of the file
is kept). It reports numbers and ratios only: the goals they are read against are in the docs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import http.client
import io
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from saliency_service import images, rendering
from saliency_service.labels import Labels, torchvision_categories
from saliency_service.methods import METHODS
from saliency_service.model import load_model
from saliency_service.pipeline import SaliencyService, ServiceConfig
from saliency_tools import ROOT, bench
from saliency_tools.bench import OURS, STOCK, Cell, Contender, Photo, fmt, multipart, run_slice
from saliency_tools.server import Server, pid_alive, wait_ready
from saliency_tools.weights import WeightsError, resolve_weights

HEADING = "## Explanation methods"
BEGIN, END = "<!-- bench-methods:begin -->", "<!-- bench-methods:end -->"
MAR = ROOT / "model_store" / f"{OURS}.mar"
SAMPLED = f"{OURS}_sampled"  # the second registration, for expensive methods (config.properties)
CONCURRENCY = (8, 1)
BATCH = 8  # in process: the served batchSize
# The stock handler's get_insights: IntegratedGradients(model).attribute(x, target, n_steps=15),
# Captum's default zero baseline and Gauss-Legendre rule.
STOCK_IG = {"method": "integrated_gradients", "steps": "15", "baseline": "zero"}
IG_PAIR = ("ig_ours", "ig_captum")
MAP_TRIO = ("classify", "gradcam", "vanilla")
SERVED_METHOD = {"ig_ours": "integrated_gradients", "gradcam": "gradcam", "vanilla": "vanilla"}
# Slice sizes follow what one request costs: ~0.02 s, ~0.3 s (IG, 15 gradients), ~1.5 s (Captum).
GROUPS = {
    "ig_ours": "ig",
    "ig_captum": "captum",
    "classify": "fast",
    "gradcam": "fast",
    "vanilla": "fast",
}


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # round-robin rounds per concurrency
    requests: dict[str, dict[int, int]]  # per slice: by group, then concurrency
    repeats: int  # in process: timed calls per method, after one warm-up call
    targets: tuple[str, ...]  # which classes the map comparison explains


QUICK = Mode(
    "quick",
    2,
    {"fast": {8: 32, 1: 8}, "ig": {8: 16, 1: 4}, "captum": {8: 8, 1: 2}},
    1,
    ("predicted",),
)
FULL = Mode(
    "full",
    3,
    {"fast": {8: 96, 1: 24}, "ig": {8: 32, 1: 8}, "captum": {8: 16, 1: 3}},
    3,
    ("predicted", "0"),
)


# ---------------------------------------------------------------------------------------------
# Maps: the stock answer reduced like ours, and rank correlation with ties


def captum_map(answer: Any) -> np.ndarray:
    """|sum over colour channels| of a stock /explanations answer (nested float lists).

    The stock handler answers each request with ``attributions[i].tolist()``, (C, H, W); a
    leading batch axis of 1 and a channels-last layout are accepted too.
    """
    attributions = np.asarray(answer, dtype=np.float64)
    while attributions.ndim > 3 and attributions.shape[0] == 1:
        attributions = attributions[0]
    if attributions.ndim != 3:
        raise ValueError(f"expected (C, H, W) attributions, got shape {attributions.shape}")
    if attributions.shape[0] == 3:
        channel_axis = 0
    elif attributions.shape[-1] == 3:
        channel_axis = -1
    else:
        raise ValueError(f"no colour axis of 3 in shape {attributions.shape}")
    return np.abs(attributions.sum(axis=channel_axis))


def served_map(answer: Mapping[str, Any]) -> np.ndarray:
    """Our answer's map as 8-bit levels (round(255 s / max): ranks are those of s)."""
    png = base64.b64decode(answer["saliency"]["png"])
    with Image.open(io.BytesIO(png)) as picture:
        return np.asarray(picture, dtype=np.float64)


def as_8bit(values: np.ndarray) -> np.ndarray:
    """The service's own quantisation, for a like-with-like comparison."""
    pixels, _ = rendering.quantise(torch.from_numpy(np.asarray(values, dtype=np.float64))[None])
    return pixels[0].astype(np.float64)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (8-bit maps tie a lot)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ordered)) + 1))
    ends = np.concatenate((starts[1:], [flat.size]))
    ranks = np.empty(flat.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho with ties: Pearson's r of the average ranks; NaN if either is constant."""
    if np.size(a) != np.size(b):
        raise ValueError(f"sizes differ: {np.size(a)} vs {np.size(b)}")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator else float("nan")


@dataclass(frozen=True)
class MapAgreement:
    photo: str
    target: int
    label: str
    served: float  # our 8-bit PNG vs Captum's float map: the figure the goal is about
    ceiling: float  # Captum's own map quantised like ours vs its float map
    both_8bit: float  # ours vs Captum's, both quantised
    input_diff: float  # max |our model input - the stock transform's|
    delta: float  # our answer's convergence delta


def agreement(photo: str, ours: Mapping[str, Any], stock: Any, input_diff: float) -> MapAgreement:
    mine, theirs = served_map(ours), captum_map(stock)
    return MapAgreement(
        photo,
        ours["target"]["index"],
        ours["target"]["label"],
        spearman(mine, theirs),
        spearman(as_8bit(theirs), theirs),
        spearman(mine, as_8bit(theirs)),
        input_diff,
        float(ours["saliency"].get("delta", float("nan"))),
    )


def input_difference(data: bytes) -> float:
    """Our preprocessing against the stock handler's transform (Resize 256, CenterCrop 224,
    ToTensor, Normalize, no EXIF rotation), on the same bytes."""
    from ts.torch_handler.image_classifier import ImageClassifier

    ours = images.preprocess(images.decode(data)).tensor
    with Image.open(io.BytesIO(data)) as image:
        theirs = ImageClassifier.image_processing(image)
    if ours.shape != theirs.shape:
        return float("inf")
    return float((ours - theirs).abs().max())


# ---------------------------------------------------------------------------------------------
# Requests and load


def form(parts: Sequence[tuple[str, bytes, str, str | None]]) -> tuple[bytes, str]:
    """multipart/form-data from (name, value, content type, filename or None) parts.

    The stock handler reads an explanation's ``target`` from the request row: TorchServe's
    worker json-decodes a file part typed application/json, so ``target`` arrives as an int.
    """
    boundary = "methods" + os.urandom(8).hex()
    chunks = []
    for name, value, kind, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n"
        chunks.append(head.encode() + value + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def ours_body(photo: Photo, options: Mapping[str, str]) -> tuple[bytes, str]:
    fields = {"image": (photo.data, photo.name)}
    fields.update({name: (value.encode(), None) for name, value in options.items()})
    return multipart(fields)


def stock_body(photo: Photo, target: int | None) -> tuple[bytes, str]:
    """A raw POST (the handler explains class 0), or a form that names the class."""
    if target is None:
        return photo.data, "application/octet-stream"
    return form(
        [
            ("data", photo.data, "application/octet-stream", photo.name),
            ("target", str(target).encode(), "application/json", "target.json"),
        ]
    )


def contenders(photos: list[Photo]) -> dict[str, Contender]:
    def ours(key: str, label: str, options: Mapping[str, str], model: str = OURS) -> Contender:
        bodies = [ours_body(photo, options) for photo in photos]
        return Contender(key, label, f"/predictions/{model}", bodies)

    return {
        # IG's path points are expensive: the interactive model would redirect them (307).
        "ig_ours": ours(
            "ig_ours", "ours, integrated_gradients (steps 15, zero)", STOCK_IG, SAMPLED
        ),
        "ig_captum": Contender(
            "ig_captum",
            "stock /explanations (Captum IG, 15 steps)",
            f"/explanations/{STOCK}",
            [stock_body(photo, None) for photo in photos],
        ),
        "classify": ours("classify", "ours, saliency=false", {"saliency": "false"}),
        "gradcam": ours("gradcam", "ours, gradcam", {"method": "gradcam"}),
        "vanilla": ours("vanilla", "ours, vanilla", {"method": "vanilla"}),
    }


def request(port: int, key: str, path: str, body: tuple[bytes, str]) -> Any:
    """One POST; the decoded JSON answer, or RuntimeError naming the status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        headers = {"Content-Type": body[1], "Authorization": f"Bearer {key}"}
        connection.request("POST", path, body=body[0], headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"POST {path}: HTTP {response.status}: {data[:300]!r}")
    return json.loads(data)


def compare_maps(
    port: int, key: str, photos: list[Photo], targets: Sequence[str], log: Callable[[str], None]
) -> list[MapAgreement]:
    """Both IG paths on every photo, one request at a time (a stock batch would explain its
    first request's target for every image), for the predicted class and/or class 0."""
    rows = []
    for photo in photos:
        difference = input_difference(photo.data)
        for which in targets:
            options = dict(STOCK_IG) if which == "predicted" else {**STOCK_IG, "target": which}
            ours = request(port, key, f"/predictions/{SAMPLED}", ours_body(photo, options))
            target = ours["target"]["index"]
            stock = request(port, key, f"/explanations/{STOCK}", stock_body(photo, target))
            rows.append(agreement(photo.name, ours, stock, difference))
            log(f"maps {photo.name} class {target}: Spearman {rows[-1].served:.4f}")
    return rows


def check_answers(port: int, key: str, pool: Mapping[str, Contender]) -> None:
    """Every contender answers what it should before its speed means anything."""
    for name, contender in pool.items():
        answer = request(port, key, contender.path, contender.bodies[0])
        if name == "ig_captum":
            captum_map(answer)
        elif name == "classify":
            if "saliency" in answer:
                raise RuntimeError("saliency=false answered with a map")
        elif answer.get("saliency", {}).get("method") != SERVED_METHOD[name]:
            raise RuntimeError(f"{name}: unexpected answer {str(answer)[:200]}")


def drive(
    port: int, key: str, pool: Mapping[str, Contender], mode: Mode, log: Callable[[str], None]
) -> dict[tuple[str, int], Cell]:
    """Every contender's slices, round-robin, the order rotating every round."""
    for name, contender in pool.items():  # lazy set-up (batch shapes) paid before measuring
        warm = run_slice(port, key, contender, 8, 8)
        if warm.errors:
            raise RuntimeError(f"{name}: {warm.errors} errors while warming up")
    cells: dict[tuple[str, int], Cell] = {}
    names = list(pool)
    for concurrency in CONCURRENCY:
        for round_ in range(mode.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                count = mode.requests[GROUPS[name]][concurrency]
                piece = run_slice(port, key, pool[name], concurrency, count)
                cells.setdefault((name, concurrency), Cell()).slices.append(piece)
                log(
                    f"c={concurrency} round {round_ + 1}/{mode.rounds} {name:<9} "
                    f"{len(piece.latencies) / piece.elapsed:6.2f} req/s"
                )
    return cells


# ---------------------------------------------------------------------------------------------
# Server


def stale_entries(mar: Path, handler_dir: Path, weights: Path | None = None) -> list[str]:
    """What in the archive differs from the working tree's handler, or from ``weights``."""
    from saliency_tools.archive import stale_files

    stale = stale_files(mar, handler_dir)
    if weights is not None:
        with zipfile.ZipFile(mar) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            serialized = manifest["model"]["serializedFile"]
            if archive.read(serialized) != weights.read_bytes():
                stale.append(f"{serialized} (other weights)")
    return stale


def our_archive(weights: Path, store: Path, log: Callable[[str], None]) -> str:
    """model_store's archive copied into ``store`` if current, else a fresh build there (never
    into model_store, which other servers may be loading); says which."""
    from saliency_tools.archive import build

    stale = stale_entries(MAR, ROOT / "handler", weights) if MAR.is_file() else ["missing"]
    if not stale:
        shutil.copy2(MAR, store / MAR.name)
        return f"`model_store/{MAR.name}` (matches the working tree and the weights)"
    log(f"model_store's archive is stale ({', '.join(stale[:3])}): building one")
    build(weights, store)
    return f"built from the working tree (model_store's was stale: {', '.join(stale[:3])})"


@contextlib.contextmanager
def serving(weights: Path, work: Path, log: Callable[[str], None]) -> Iterator[tuple[Server, str]]:
    """One TorchServe with both models, production config, as served (bench.MAIN's env)."""
    store = work / "store"
    store.mkdir(parents=True)
    note = our_archive(weights, store, log)
    bench.build_stock_mar(weights, store, work / "stock")
    server = Server(
        workdir=work / "server",
        model_store=store,
        extra_config=f"load_models={OURS}={OURS}.mar,{SAMPLED}={OURS}.mar,{STOCK}={STOCK}.mar",
        env=dict(bench.MAIN.env),
    )
    stock_workers: list[int] = []
    try:
        log("starting TorchServe")
        server.start()
        wait_ready(server.workdir, server.url("management"), server.pid_file, 180, STOCK)
        stock_workers = bench.worker_pids(server, STOCK)
        yield server, note
    finally:
        log("stopping TorchServe")
        server.stop()
        for pid in stock_workers:  # Server.stop knows our model's workers only
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def served(
    photos: list[Photo], map_photos: list[Photo], weights: Path, mode: Mode, log: Callable
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-methods-") as work,
        serving(weights, Path(work), log) as (server, note),
    ):
        port, key = server.ports["inference_address"], server.keys["inference"]
        settings = {}
        for model in (OURS, STOCK):
            described = bench.describe(server, model)
            settings[model] = (
                f"batchSize {described['batchSize']}, maxBatchDelay "
                f"{described['maxBatchDelay']} ms, {len(described['workers'])} worker"
            )
        maps = compare_maps(port, key, map_photos, mode.targets, log)
        pool = contenders(photos)
        check_answers(port, key, pool)
        cells = drive(port, key, pool, mode, log)
    labels = {name: contender.label for name, contender in pool.items()}
    return {"archive": note, "settings": settings, "maps": maps, "cells": cells, "labels": labels}


# ---------------------------------------------------------------------------------------------
# In process


@dataclass(frozen=True)
class Cost:
    name: str
    settings: str
    seconds: list[float]  # per batch of BATCH images
    stages: dict[str, float]  # median seconds per batch of handle_batch's own stages


def in_process_contenders() -> dict[str, tuple[str, dict[str, str]]]:
    """Name -> (settings shown, request fields): every method at its defaults, plus references."""
    chosen: dict[str, tuple[str, dict[str, str]]] = {
        "classification only": ("saliency=false", {"saliency": "false"})
    }
    for name, method in METHODS.items():
        shown = ", ".join(f"{k} {v}" for k, v in method.defaults().items() if v is not None)
        chosen[name] = (shown or "-", {"method": name})
    chosen["integrated_gradients (stock settings)"] = ("steps 15, baseline zero", dict(STOCK_IG))
    return chosen


def method_costs(
    service: SaliencyService, photos: list[Photo], repeats: int, log: Callable[[str], None]
) -> list[Cost]:
    """Seconds per ``handle_batch`` of BATCH requests (decode to JSON-ready answers), each
    contender in turn, the order rotating (``bench.alternate``)."""
    chosen = in_process_contenders()
    data = bench.batch_rows(photos, BATCH)
    reports: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}

    def call(name: str, fields: dict[str, str]) -> Callable[[], None]:
        def run() -> None:
            answers = service.handle_batch([{"image": d, **fields} for d in data])
            failed = [a.body for a in answers if a.status != 200]
            if failed:
                raise RuntimeError(f"{fields}: {failed[0]}")
            reports[name].append(dict(service.last_report.seconds))

        return run

    log(f"in process: {len(chosen)} contenders at batch {BATCH}, {repeats} round(s)")
    times = bench.alternate({name: call(name, f) for name, (_, f) in chosen.items()}, repeats)
    costs = []
    for name, (settings, _) in chosen.items():
        timed = reports[name][1:]  # the first call is alternate's warm-up
        stages = {stage: float(np.median([r[stage] for r in timed])) for stage in timed[0]}
        costs.append(Cost(name, settings, times[name], stages))
    return costs


def in_process(weights: Path, photos: list[Photo], mode: Mode, log: Callable) -> list[Cost]:
    # No batch budget: a whole batch of the most expensive method is the thing measured here.
    unbounded = ServiceConfig(max_batch_passes=10**9, max_batch_seconds=1e9)
    service = SaliencyService(
        load_model(weights), Labels(torchvision_categories()), config=unbounded
    )
    service.warm_up()
    return method_costs(service, photos, mode.repeats, log)


# ---------------------------------------------------------------------------------------------
# Report


def rate_text(cell: Cell, digits: int) -> str:
    spread = f" ({fmt(min(cell.rates), digits)}-{fmt(max(cell.rates), digits)})"
    return fmt(cell.rate, digits) + (spread if len(cell.rates) > 1 else "")


def ratio(a: float, b: float, digits: int = 2) -> str:
    return fmt(a / b, digits) if a == a and b == b and b else "n/a"


def load_table(
    cells: Mapping[tuple[str, int], Cell], labels: Mapping[str, str], names: Sequence[str]
) -> list[str]:
    out = [
        "| contender | concurrency | requests | req/s (per-round range) | p50 ms | p95 ms "
        "| mean answer bytes | errors |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for concurrency in CONCURRENCY:
        for name in names:
            cell = cells.get((name, concurrency))
            if cell is None:
                continue
            digits = 2 if cell.rate < 10 else 1
            out.append(
                f"| {labels[name]} | {concurrency} | {cell.requests} | {rate_text(cell, digits)} "
                f"| {fmt(cell.percentile(50), 0)} | {fmt(cell.percentile(95), 0)} "
                f"| {fmt(cell.mean_bytes, 0)} | {cell.errors} |"
            )
    return out


def render_ig(cells: Mapping[tuple[str, int], Cell], labels: Mapping[str, str]) -> list[str]:
    out = ["### (i) Integrated Gradients: ours vs the stock `/explanations`", ""]
    out += load_table(cells, labels, IG_PAIR)
    out += [
        "",
        "| concurrency | throughput ours / Captum | p50 latency Captum / ours "
        "| answer bytes Captum / ours |",
        "|---:|---:|---:|---:|",
    ]
    for concurrency in CONCURRENCY:
        ours, captum = cells.get(("ig_ours", concurrency)), cells.get(("ig_captum", concurrency))
        if ours is None or captum is None:
            continue
        out.append(
            f"| {concurrency} | {ratio(ours.rate, captum.rate, 1)} x "
            f"| {ratio(captum.percentile(50), ours.percentile(50), 1)} x "
            f"| {ratio(captum.mean_bytes, ours.mean_bytes, 0)} x |"
        )
    return out


def render_maps(rows: Sequence[MapAgreement]) -> list[str]:
    if not rows:
        return []
    out = [
        "Maps, one request at a time, the same photo and class for both: Spearman rank "
        "correlation of our served map (8-bit PNG) with |sum over channels| of Captum's "
        "attributions; the quantisation ceiling (Captum's own map through our 8-bit "
        "quantisation, against itself); ours against Captum's both at 8 bits; the largest "
        "difference between the two handlers' model inputs; our `delta`.",
        "",
        "| photo | class explained | ours vs Captum | ceiling (8-bit) | both 8-bit "
        "| input max abs diff | our delta |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        out.append(
            f"| {row.photo} | {row.target} {row.label} | {row.served:.4f} | {row.ceiling:.4f} "
            f"| {row.both_8bit:.5f} | {row.input_diff:.2g} | {row.delta:.3f} |"
        )
    lowest = min(rows, key=lambda r: r.served)
    out += [
        "",
        f"Lowest ours vs Captum: {lowest.served:.4f} ({lowest.photo}, class {lowest.target}), "
        f"where the ceiling is {lowest.ceiling:.4f}; lowest both at 8 bits: "
        f"{min(r.both_8bit for r in rows):.5f}.",
    ]
    return out


def render_trio(cells: Mapping[tuple[str, int], Cell], labels: Mapping[str, str]) -> list[str]:
    out = ["### (ii) Grad-CAM vs classification only vs vanilla (all multipart)", ""]
    out += load_table(cells, labels, MAP_TRIO)
    out += [
        "",
        "| concurrency | gradcam / classification | vanilla / classification | gradcam / vanilla |",
        "|---:|---:|---:|---:|",
    ]
    for concurrency in CONCURRENCY:
        rate = {n: cells[(n, concurrency)].rate for n in MAP_TRIO if (n, concurrency) in cells}
        if len(rate) < len(MAP_TRIO):
            continue
        out.append(
            f"| {concurrency} | {ratio(rate['gradcam'], rate['classify'])} "
            f"| {ratio(rate['vanilla'], rate['classify'])} "
            f"| {ratio(rate['gradcam'], rate['vanilla'])} |"
        )
    return out


def render_costs(costs: Sequence[Cost]) -> list[str]:
    if not costs:
        return []
    medians = {c.name: float(np.median(c.seconds)) / BATCH for c in costs}
    out = [
        f"### In process: seconds per image at batch {BATCH}",
        "",
        f"`SaliencyService.handle_batch` of {BATCH} requests (decode, preprocess, the method, "
        "PNG and answer), server stopped, PyTorch's default threads; contenders alternated; "
        "median (best) of the timed calls, divided by the batch; and the median split of "
        "`handle_batch`'s own stages (decode + preprocess / model / PNG).",
        "",
        "| method | settings | s per image | best | x vanilla | decode / model / encode ms |",
        "|---|---|---:|---:|---:|---|",
    ]
    for cost in costs:
        split = " / ".join(f"{1000 * seconds / BATCH:.1f}" for seconds in cost.stages.values())
        out.append(
            f"| {cost.name} | {cost.settings} | {medians[cost.name]:.3f} "
            f"| {min(cost.seconds) / BATCH:.3f} "
            f"| {ratio(medians[cost.name], medians.get('vanilla', float('nan')), 1)} | {split} |"
        )
    return out


def render(
    command: str,
    mode: Mode,
    info: Mapping[str, Any],
    results: Mapping[str, Any] | None,
    costs: Sequence[Cost],
) -> str:
    machine = info["machine"]
    out = [
        f"Command: `{command}` ({mode.name} mode)  ",
        f"Date: {info['date']}  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}; "
        f"{machine['versions']}; torch threads {machine['threads']}  ",
        f"Load average (1/5/15 min) at start: {info['load_start']}; at end: {info['load_end']}  ",
        f"Photos under load: {', '.join(info['photos'])}  ",
    ]
    if results:
        cells, labels = results["cells"], results["labels"]
        out += [
            f"Our archive: {results['archive']}  ",
            "Batching as served: "
            + "; ".join(f"{m}: {s}" for m, s in results["settings"].items())
            + ". Closed-loop clients (Python threads, kept-alive connections) on the same "
            "cores as the server.",
            "",
            *render_ig(cells, labels),
            "",
            *render_maps(results["maps"]),
            "",
            *render_trio(cells, labels),
        ]
    if costs:
        out += ["", *render_costs(costs)]
    return "\n".join(out) + "\n"


def write_section(path: Path, block: str) -> None:
    """Replace the text between the markers, or append the section with them."""
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = f"{head}{BEGIN}\n{block}{END}{rest.split(END, 1)[1]}"
    else:
        text = f"{text.rstrip()}\n\n{HEADING}\n\n{BEGIN}\n{block}{END}\n".lstrip()
    path.write_text(text)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats")
    parser.add_argument("--images", type=Path, help="a folder of photos instead of skimage's")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--no-server", action="store_true", help="in-process part only")
    parser.add_argument("--no-inprocess", action="store_true", help="served part only")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL

    def log(message: str) -> None:
        print(f"[bench-methods {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks stop TorchServe
    for name in bench.OPENMP_VARIABLES:  # the server gets exactly bench.MAIN's settings
        os.environ.pop(name, None)
    try:
        weights = resolve_weights(ROOT / ".cache")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    photos = bench.load_photos(args.images)
    extra = os.environ.get("SALIENCY_TEST_IMAGES")  # labelled photos: maps only, never shipped
    map_photos = photos + (bench.load_photos(Path(extra)) if extra and Path(extra).is_dir() else [])
    info: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": bench.machine(),
        "load_start": bench.loadavg(),
        "photos": [f"{p.name} {p.size[0]}x{p.size[1]}" for p in photos],
    }
    started = time.monotonic()
    results = None if args.no_server else served(photos, map_photos, weights, mode, log)
    costs = [] if args.no_inprocess else in_process(weights, photos, mode, log)
    info["load_end"] = bench.loadavg()
    flags = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-write"]
    command = shlex.join([".venv/bin/python", "scripts/bench_methods.py", *flags])
    block = render(command, mode, info, results, costs)
    block += f"\nTotal run time: {(time.monotonic() - started) / 60:.1f} min.\n"
    print(block)
    if not args.no_write:
        write_section(args.output, block)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
