"""The end-to-end half of ``scripts/bench.py``: every contender on TorchServe, round-robin.

Contenders, on one server with both models: (a) plain classification, the stock handler and ours
with ``saliency=false``; (b) ours with default options (class + vanilla-gradient map); (c) the
stock handler's ``/explanations`` (Captum IntegratedGradients, 15 steps), with far fewer
requests, since each takes seconds. With server levers, (a) and (b) on each server setting too.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from saliency_tools.archive import build, variant_archive
from saliency_tools.client import encode_form
from saliency_tools.server import Server

from .load import Cell, Contender, Slice, post, rotated, run_slice
from .modes import CONCURRENCY, Mode
from .photos import Photo
from .serving import MAIN, OURS, VARIANTS, batching, model_server, torch_threads
from .stock import STOCK, build_stock_mar, stock_body

FAST = ("a_stock", "a_ours", "b")  # every round; Captum ("c") once per concurrency


def contenders(photos: list[Photo]) -> dict[str, Contender]:
    raw = [stock_body(p) for p in photos]
    no_map = [
        encode_form({"image": (p.name, p.data, "application/octet-stream")}, {"saliency": "false"})
        for p in photos
    ]
    return {
        "a_stock": Contender("a_stock", "(a) stock image_classifier", f"/predictions/{STOCK}", raw),
        "a_ours": Contender("a_ours", "(a) ours, saliency=false", f"/predictions/{OURS}", no_map),
        "b": Contender("b", "(b) ours, class + saliency map", f"/predictions/{OURS}", raw),
        "c": Contender("c", "(c) stock /explanations (Captum IG)", f"/explanations/{STOCK}", raw),
    }


def sanity_check(port: int, key: str, photos: list[Photo], pool: Mapping[str, Contender]) -> dict:
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


def lever_keys(variants: list[str]) -> dict[str, tuple[int, ...]]:
    """``contender@variant`` -> the concurrencies where that server setting is measured."""
    return {
        f"{name}@{variant.key}": variant.concurrencies
        for variant in VARIANTS
        if variant.key and variant.key in variants
        for name in ("a_stock", "b")
    }


def drive(
    servers: Mapping[str, Server], photos: list[Photo], mode: Mode, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every slice, round-robin; Captum once per concurrency, after the middle round."""
    pool = contenders(photos)
    main = servers[MAIN.key]
    check = sanity_check(main.ports["inference_address"], main.keys["inference"], photos, pool)
    log(f"top-1 agreement stock vs ours: {check['agree']}/{len(photos)}")

    def run(key: str, concurrency: int, count: int) -> Slice:
        name, _, variant = key.partition("@")
        server = servers[variant]
        port, token = server.ports["inference_address"], server.keys["inference"]
        return run_slice(port, token, pool[name], concurrency, count)

    levers = lever_keys(list(servers))
    for key in [*FAST, *levers]:  # every batch size up to 8 once: lazy set-up is paid before
        run(key, 8, 24)
    cells: dict[tuple[str, int], Cell] = {}
    for concurrency in CONCURRENCY:
        names = [*FAST, *(key for key, at in levers.items() if concurrency in at)]
        for round_ in range(mode.rounds):
            for name in rotated(names, round_):
                piece = run(name, concurrency, mode.requests[concurrency])
                cells.setdefault((name, concurrency), Cell()).slices.append(piece)
                log(
                    f"c={concurrency:<2} round {round_ + 1}/{mode.rounds} {name:<10} "
                    f"{piece.rate:6.1f} req/s"
                )
            captum = mode.captum_requests[concurrency]
            if round_ == (mode.rounds - 1) // 2 and captum:
                piece = run("c", concurrency, captum)
                cells.setdefault(("c", concurrency), Cell()).slices.append(piece)
                log(f"c={concurrency:<2} captum {piece.rate:6.2f} req/s")
    labels = {k: c.label for k, c in pool.items()}
    return {"cells": cells, "labels": labels, "check": check}


def end_to_end(
    photos: list[Photo], weights: Path, mode: Mode, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Build both archives, start one server per setting, drive the load, stop the servers."""
    store = work / "store"
    log("building the archives")
    build(weights, store)
    build_stock_mar(weights, store, work / "stock")
    servers: dict[str, Server] = {}
    models = {OURS: f"{OURS}.mar", STOCK: f"{STOCK}.mar"}
    try:
        for variant in VARIANTS if mode.server_levers else (MAIN,):
            variant_store = store
            if variant.model_config != MAIN.model_config:
                variant_store = work / f"store-{variant.key}"
                for model in models:
                    variant_archive(variant_store, store / f"{model}.mar", **variant.model_config)
            workdir = work / f"server-{variant.key or 'main'}"
            server = model_server(workdir, variant_store, models, variant.env)
            log(f"starting TorchServe ({variant.label})")
            servers[variant.key] = server.start()
        settings = {model: batching(servers[MAIN.key].describe(model)) for model in models}
        return {"settings": settings, **drive(servers, photos, mode, log)}
    finally:
        log("stopping TorchServe")
        threads = {}
        for key, server in servers.items():
            server.stop()
            threads[key] = torch_threads(server)
        log(f"torch threads per worker (from our handler's log): {threads}")
