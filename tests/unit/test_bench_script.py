"""scripts/bench.py on a tiny budget: its in-process half for real, and the whole report.

The end-to-end half needs servers (minutes); its cells are synthetic here, with known ratios, so
that every table of the report, the ratios and the targets are rendered from real code paths.
"""

from __future__ import annotations

import bench
import torch


def cell(rate: float, size: int, requests: int = 20) -> bench.Cell:
    return bench.Cell([bench.Slice([0.1] * requests, [size] * requests, 0, requests / rate)])


def synthetic_served() -> dict:
    rates = {"a_stock": 40.0, "a_ours": 50.0, "b": 36.0, "c": 0.5}
    sizes = {"a_stock": 180, "a_ours": 500, "b": 45_000, "c": 4_500_000}
    cells = {(k, c): cell(rates[k], sizes[k]) for k in rates for c in bench.CONCURRENCY}
    for variant in bench.VARIANTS[1:]:
        for concurrency in variant.concurrencies:
            cells[(f"a_stock@{variant.key}", concurrency)] = cell(30.0, 180)
            cells[(f"b@{variant.key}", concurrency)] = cell(24.0, 45_000)
    settings = {"batchSize": 8, "maxBatchDelay": 20, "workers": 1}
    return {
        "settings": {bench.OURS: settings, bench.STOCK: settings},
        "cells": cells,
        "labels": {k: c.label for k, c in bench.contenders([]).items()},
        "check": {"agree": 2, "photos": ["a", "b"], "captum_shape": (3, 224, 224)},
    }


def test_in_process_half_and_the_report(model, tmp_path) -> None:
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    photos = bench.load_photos(None)[:2]
    process = bench.in_process(weights, photos, bench.QUICK, log=lambda message: None)

    batches = [entry["batch"] for entry in process["stages"]]
    assert batches == list(bench.BATCHES)
    for entry in process["stages"]:
        assert all(min(values) > 0 for values in entry["stages"].values())
    ratio = process["ratio"]
    assert ratio["median_ratio"] > 1  # a gradient cannot come for free
    operators = dict(ratio["profile"]["top"])
    assert "aten::convolution_backward" in operators

    info = {
        "date": "today",
        "machine": bench.machine(),
        "load_start": "0 0 0",
        "load_end": "0 0 0",
        "photos": [photo.name for photo in photos],
    }
    report = bench.render("bench.py", bench.QUICK, info, synthetic_served(), process, "")
    for heading in ("### End to end", "### In process", "### Levers", "### Targets"):
        assert heading in report
    assert "| 8 | 0.90 | 0.72 | 72x | 100x | 250x |" in report  # b/a, b/a', b/c, sizes
    assert "0.90 x stock; 0.72 x ours without map | yes |" in report
    assert "| throughput >= 40 x Captum /explanations (conc. 8) | 72 x | yes |" in report
    assert "rendering.gray_png) | " in report and "[current]" in report
    for variant in bench.VARIANTS:
        assert f"| {variant.label} |" in report
