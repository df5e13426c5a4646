"""Benchmark the explanation methods: our Integrated Gradients against the stock Captum
``/explanations``, Grad-CAM against classification, and every method's cost per image.

    .venv/bin/python scripts/bench_methods.py [--quick] [--images DIR] [--output FILE]
        [--no-write] [--no-server] [--no-inprocess]

One TorchServe (the production config.properties on free ports, OMP_WAIT_POLICY=PASSIVE as
served) serves ``squeezenet_saliency`` (model_store's archive if it matches the working tree and
the weights, else one built from the working tree in a temp dir) and TorchServe's stock
``image_classifier`` with the same weights (``stock.build_stock_mar``). Then:

- maps: every photo explained one request at a time by our ``integrated_gradients`` (steps 15,
  zero baseline: the stock handler's settings) and by the stock ``/explanations`` (Captum
  IntegratedGradients, 15 steps), for the same class; Spearman rank correlation of the maps;
- load, round-robin with the order rotating every round, at concurrency 8 and 1: (i) those two;
  (ii) ours ``gradcam``, ``saliency=false`` and ``vanilla``, all three as multipart forms;
- in process (server stopped): seconds per image of ``SaliencyService.handle_batch`` at batch 8
  for every method at its defaults, with the pipeline's own stage timings.

The Markdown report is printed and written between the markers of --output (the rest of the file
is kept). It reports numbers and ratios only: the goals they are read against are in the docs.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
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

from saliency_service.labels import Labels, torchvision_categories
from saliency_service.methods import METHODS
from saliency_service.model import load_model
from saliency_service.pipeline import SaliencyService, ServiceConfig
from saliency_tools import MAR, ROOT, SAMPLED_MODEL_NAME
from saliency_tools.archive import build, stale_files
from saliency_tools.client import encode_form
from saliency_tools.server import Server
from saliency_tools.weights import WeightsError, resolve_weights

from .inprocess import Service, time_batches
from .load import Cell, Contender, rotated, run_slice
from .machine import loadavg, run_info
from .maps import MapAgreement, agreement
from .methods_report import BATCH, CONCURRENCY, Cost, render
from .modes import add_run_arguments
from .photos import Photo, batch_rows, load_photos
from .report import command_line, write_between_markers
from .serving import MAIN, OURS, batching, clear_openmp, model_server
from .stock import IG_SETTINGS, STOCK, build_stock_mar, captum_map, input_difference, stock_body

HEADING = "## Explanation methods"
BEGIN, END = "<!-- bench-methods:begin -->", "<!-- bench-methods:end -->"
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


# --- requests -----------------------------------------------------------------------------------


def ours_body(photo: Photo, options: Mapping[str, str]) -> tuple[bytes, str]:
    return encode_form({"image": (photo.name, photo.data, "application/octet-stream")}, options)


def contenders(photos: list[Photo]) -> dict[str, Contender]:
    def ours(key: str, label: str, options: Mapping[str, str], model: str = OURS) -> Contender:
        bodies = [ours_body(photo, options) for photo in photos]
        return Contender(key, label, f"/predictions/{model}", bodies)

    return {
        # IG's path points are expensive: the interactive model would redirect them (307).
        "ig_ours": ours(
            "ig_ours",
            "ours, integrated_gradients (steps 15, zero)",
            IG_SETTINGS,
            SAMPLED_MODEL_NAME,
        ),
        "ig_captum": Contender(
            "ig_captum",
            "stock /explanations (Captum IG, 15 steps)",
            f"/explanations/{STOCK}",
            [stock_body(photo) for photo in photos],
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


# --- served -------------------------------------------------------------------------------------


def compare_maps(
    port: int, key: str, photos: list[Photo], targets: Sequence[str], log: Callable[[str], None]
) -> list[MapAgreement]:
    """Both IG paths on every photo, one request at a time (a stock batch would explain its
    first request's target for every image), for the predicted class and/or class 0."""
    rows = []
    for photo in photos:
        difference = input_difference(photo.data)
        for which in targets:
            options = (
                dict(IG_SETTINGS) if which == "predicted" else {**IG_SETTINGS, "target": which}
            )
            path = f"/predictions/{SAMPLED_MODEL_NAME}"
            ours = request(port, key, path, ours_body(photo, options))
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
    for concurrency in CONCURRENCY:
        for round_ in range(mode.rounds):
            for name in rotated(list(pool), round_):
                count = mode.requests[GROUPS[name]][concurrency]
                piece = run_slice(port, key, pool[name], concurrency, count)
                cells.setdefault((name, concurrency), Cell()).slices.append(piece)
                log(
                    f"c={concurrency} round {round_ + 1}/{mode.rounds} {name:<9} "
                    f"{piece.rate:6.2f} req/s"
                )
    return cells


def stale_entries(mar: Path, handler_dir: Path, weights: Path | None = None) -> list[str]:
    """What in the archive differs from the working tree's handler, or from ``weights``."""
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
    stale = stale_entries(MAR, ROOT / "handler", weights) if MAR.is_file() else ["missing"]
    if not stale:
        shutil.copy2(MAR, store / MAR.name)
        return f"`model_store/{MAR.name}` (matches the working tree and the weights)"
    log(f"model_store's archive is stale ({', '.join(stale[:3])}): building one")
    build(weights, store)
    return f"built from the working tree (model_store's was stale: {', '.join(stale[:3])})"


@contextlib.contextmanager
def serving(weights: Path, work: Path, log: Callable[[str], None]) -> Iterator[tuple[Server, str]]:
    """One TorchServe with both models, production config, as served (``serving.MAIN``'s env)."""
    store = work / "store"
    store.mkdir(parents=True)
    note = our_archive(weights, store, log)
    build_stock_mar(weights, store, work / "stock")
    models = {OURS: f"{OURS}.mar", SAMPLED_MODEL_NAME: f"{OURS}.mar", STOCK: f"{STOCK}.mar"}
    server = model_server(work / "server", store, models, MAIN.env)
    try:
        log("starting TorchServe")
        server.start()
        yield server, note
    finally:
        log("stopping TorchServe")
        server.stop()


def served(
    photos: list[Photo], map_photos: list[Photo], weights: Path, mode: Mode, log: Callable
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-methods-") as work,
        serving(weights, Path(work), log) as (server, note),
    ):
        port, key = server.ports["inference_address"], server.keys["inference"]
        settings = {model: batching(server.describe(model)) for model in (OURS, STOCK)}
        maps = compare_maps(port, key, map_photos, mode.targets, log)
        pool = contenders(photos)
        check_answers(port, key, pool)
        cells = drive(port, key, pool, mode, log)
    labels = {name: contender.label for name, contender in pool.items()}
    return {"archive": note, "settings": settings, "maps": maps, "cells": cells, "labels": labels}


# --- in process ---------------------------------------------------------------------------------


def in_process_contenders() -> dict[str, tuple[str, dict[str, str]]]:
    """Name -> (settings shown, request fields): every method at its defaults, plus references."""
    chosen: dict[str, tuple[str, dict[str, str]]] = {
        "classification only": ("saliency=false", {"saliency": "false"})
    }
    for name, method in METHODS.items():
        shown = ", ".join(f"{k} {v}" for k, v in method.defaults().items() if v is not None)
        chosen[name] = (shown or "-", {"method": name})
    chosen["integrated_gradients (stock settings)"] = ("steps 15, baseline zero", dict(IG_SETTINGS))
    return chosen


def method_costs(
    service: Service, photos: list[Photo], repeats: int, log: Callable[[str], None]
) -> list[Cost]:
    """Seconds per ``handle_batch`` of BATCH requests (decode to JSON-ready answers), each
    contender in turn, the order rotating; its stages as the pipeline reports them."""
    chosen = in_process_contenders()
    data = batch_rows(photos, BATCH)
    rows = {name: [{"image": d, **fields} for d in data] for name, (_, fields) in chosen.items()}
    log(f"in process: {len(chosen)} contenders at batch {BATCH}, {repeats} round(s)")
    timings = time_batches(service, rows, repeats)
    costs = []
    for name, (settings, _) in chosen.items():
        timed = timings[name]
        stages = {s: float(np.median([t.stages[s] for t in timed])) for s in timed[0].stages}
        costs.append(Cost(name, settings, [t.seconds for t in timed], stages))
    return costs


def in_process(weights: Path, photos: list[Photo], mode: Mode, log: Callable) -> list[Cost]:
    # No batch budget: a whole batch of the most expensive method is the thing measured here.
    unbounded = ServiceConfig(max_batch_passes=10**9, max_batch_seconds=1e9)
    service = SaliencyService(
        load_model(weights), Labels(torchvision_categories()), config=unbounded
    )
    service.warm_up()
    return method_costs(service, photos, mode.repeats, log)


# --- the command line ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench-methods {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, "served")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks stop TorchServe
    clear_openmp()
    try:
        weights = resolve_weights(ROOT / ".cache")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    photos = load_photos(args.images)
    extra = os.environ.get("SALIENCY_TEST_IMAGES")  # labelled photos: maps only, never shipped
    map_photos = photos + (load_photos(Path(extra)) if extra and Path(extra).is_dir() else [])
    info = run_info(photos=[f"{p.name} {p.size[0]}x{p.size[1]}" for p in photos])
    started = time.monotonic()
    results = None if args.no_server else served(photos, map_photos, weights, mode, log)
    costs = [] if args.no_inprocess else in_process(weights, photos, mode, log)
    info["load_end"] = loadavg()
    block = render(command_line("scripts/bench_methods.py", argv), mode.name, info, results, costs)
    block += f"\nTotal run time: {(time.monotonic() - started) / 60:.1f} min.\n"
    print(block)
    if not args.no_write:
        write_between_markers(args.output, block, BEGIN, END, HEADING)
        log(f"wrote {args.output}")
    return 0
