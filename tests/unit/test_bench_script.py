"""scripts/bench.py on a tiny budget: its in-process half for real, and the whole report.

The end-to-end half needs servers (minutes); its cells are synthetic here, with known ratios, so
that every table of the report, the ratios and the targets are rendered from real code paths.
"""

from __future__ import annotations

import pytest
import torch

from saliency_tools import bench


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


@pytest.mark.slow  # runs the in-process benchmark: ~20 s; not in scripts/test.sh --fast
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


# --- --arch: saliency vs plain classification for any architecture ----------------------------


def test_a_slice_lasts_about_the_seconds_asked_with_two_requests_per_thread_at_least() -> None:
    assert bench.slice_requests(12.0, 5.0, 8) == 60
    assert bench.slice_requests(1.0, 5.0, 8) == 16
    assert bench.slice_requests(0.0, 5.0, 4) == bench.slice_requests(float("nan"), 5.0, 4) == 8


def test_worker_memory_is_read_from_proc_status() -> None:
    status = "Name:\tpython\nVmPeak:\t 9000 kB\nVmHWM:\t  812340 kB\nVmRSS:\t  790000 kB\n"
    assert bench.memory_kib(status) == {"VmHWM": 812340, "VmRSS": 790000}
    assert bench.memory_kib("Name:\tkthreadd\n") == {}


def test_the_arch_table_gives_the_ratio_and_the_memory() -> None:
    info = {"date": "today", "machine": bench.machine(), "load_start": "1", "load_end": "2"}
    row = {
        "arch": "resnet50",
        "params": 25_557_032,
        "cells": {"plain": cell(10.0, 500), "saliency": cell(4.0, 45_000)},
        "memory": {"VmRSS": 700 * 1024, "VmHWM": 900 * 1024},
        "batching": "batchSize 8, maxBatchDelay 20 ms, 1 worker",
    }
    table = bench.render_arch("bench.py --arch resnet50", info, [row], 8)
    assert "| resnet50 | 25.6 M | 10.0 (10.0-10.0) | 4.0 (4.0-4.0) | 0.40 | 100 / 100 " in table
    assert "| 700 / 900 | 0 |" in table and "concurrency 8" in table


def test_the_command_line_takes_architectures(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(bench, "arch_main", lambda args, argv, log: seen.update(args=args) or 0)
    monkeypatch.setattr(bench.signal, "signal", lambda *_: None)
    for name in bench.OPENMP_VARIABLES:  # main clears them; restored after the test
        monkeypatch.setenv(name, "1")
    argv = ["--arch", "resnet50", "mobilenet_v3_large", "--concurrency", "4", "--seconds", "6"]
    assert bench.main(argv) == 0
    args = seen["args"]
    assert args.arch == ["resnet50", "mobilenet_v3_large"]
    assert (args.concurrency, args.seconds, args.rounds, args.num_classes) == (4, 6.0, 4, 1000)
