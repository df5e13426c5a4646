"""scripts/bench_methods.py's pure parts: rank correlation, the stock answer's map, the report.

No server and no timing here: the report is rendered from constructed numbers with known ratios.
"""

from __future__ import annotations

import email
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from saliency_service import rendering
from saliency_tools import bench
from saliency_tools import bench_methods as bm


def test_average_ranks_share_the_mean_rank_of_ties() -> None:
    assert bm.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert bm.average_ranks(np.zeros((2, 2))).tolist() == [2.5] * 4


def test_spearman_with_ties_by_hand() -> None:
    # ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4): r = 4.5 / sqrt(4.5 * 5)
    rho = bm.spearman(np.array([1, 2, 2, 3]), np.array([10, 20, 30, 40]))
    assert rho == pytest.approx(4.5 / math.sqrt(22.5))


def test_spearman_sees_ranks_only() -> None:
    rng = np.random.default_rng(0)
    values = rng.exponential(size=(32, 32))
    assert bm.spearman(values, np.log(values) * 7 + 3) == pytest.approx(1.0)
    assert bm.spearman(values, -values) == pytest.approx(-1.0)
    # Quantising merges ranks into ties: still a rank correlation, just below 1.
    quantised = bm.as_8bit(values)
    assert 0.9 < bm.spearman(quantised, values) < 1.0
    assert math.isnan(bm.spearman(np.ones(5), np.arange(5)))
    with pytest.raises(ValueError):
        bm.spearman(np.ones(4), np.ones(5))


def test_spearman_agrees_with_scipy_on_heavy_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, size=500)
    b = a + rng.integers(0, 4, size=500)
    assert bm.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)


def test_as_8bit_is_the_services_quantisation() -> None:
    values = np.array([[0.0, 1.0], [2.0, 4.0]])
    assert bm.as_8bit(values).tolist() == [[0.0, 64.0], [128.0, 255.0]]  # round(255 s / max)


def test_captum_map_is_abs_of_the_channel_sum() -> None:
    attributions = np.array(
        [
            [[1.0, -2.0], [0.5, 0.0]],
            [[1.0, 1.0], [-0.5, 3.0]],
            [[-5.0, 0.0], [0.0, -1.0]],
        ]
    )
    expected = [[3.0, 1.0], [0.0, 2.0]]
    answer = json.loads(json.dumps(attributions.tolist()))  # as the stock handler sends it
    assert bm.captum_map(answer).tolist() == expected
    assert bm.captum_map([answer]).tolist() == expected  # with a batch axis of 1
    assert bm.captum_map(np.moveaxis(attributions, 0, -1).tolist()).tolist() == expected
    with pytest.raises(ValueError):
        bm.captum_map([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError):
        bm.captum_map(np.zeros((2, 4, 4)).tolist())


def our_answer(saliency: np.ndarray, target: int = 285) -> dict:
    """An answer shaped like the service's, its PNG made by the service's own code."""
    pixels, peaks = rendering.quantise(torch.from_numpy(saliency)[None])
    return {
        "target": {"index": target, "label": "Egyptian cat"},
        "saliency": {"png": rendering.png_base64(pixels[0]), "max": peaks[0], "delta": -0.5},
    }


def test_agreement_of_a_served_map_with_the_same_captum_map() -> None:
    rng = np.random.default_rng(2)
    attributions = rng.normal(size=(3, 24, 24)) ** 3  # heavy-tailed, like real attributions
    captum_answer = attributions.tolist()
    ours = our_answer(np.abs(attributions.sum(axis=0)))

    row = bm.agreement("cat.jpg", ours, captum_answer, 0.0)
    assert (row.target, row.label, row.delta) == (285, "Egyptian cat", -0.5)
    assert row.both_8bit == pytest.approx(1.0)  # the same map at the same resolution
    assert row.served == pytest.approx(row.ceiling)  # only quantisation separates them
    assert row.served < 1.0
    served = bm.served_map(ours)
    assert served.shape == (24, 24) and served.max() == 255

    other = bm.agreement("cat.jpg", our_answer(rng.random((24, 24))), captum_answer, 0.0)
    assert abs(other.served) < 0.3


def test_stock_form_carries_the_target_as_json() -> None:
    photo = bench.Photo("cat.jpg", b"\xff\xd8jpeg", (10, 10))
    assert bm.stock_body(photo, None) == (photo.data, "application/octet-stream")
    body, kind = bm.stock_body(photo, 285)
    message = email.message_from_bytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.walk()}
    assert parts["data"].get_payload(decode=True) == photo.data
    assert parts["target"].get_content_type() == "application/json"
    assert parts["target"].get_filename()  # a file part: TorchServe passes its content type on
    assert json.loads(parts["target"].get_payload(decode=True)) == 285


def cell(rate: float, size: int, latency: float = 0.1, requests: int = 20) -> bench.Cell:
    return bench.Cell([bench.Slice([latency] * requests, [size] * requests, 0, requests / rate)])


def synthetic_results() -> dict:
    rates = {"ig_ours": 4.0, "ig_captum": 0.5, "classify": 50.0, "gradcam": 45.0, "vanilla": 30.0}
    sizes = {"ig_ours": 40_000, "ig_captum": 4_000_000, "classify": 500}
    sizes |= {"gradcam": 50_000, "vanilla": 45_000}
    latency = {"ig_ours": 0.5, "ig_captum": 6.0}
    cells = {
        (name, c): cell(rates[name], sizes[name], latency.get(name, 0.1))
        for name in rates
        for c in bm.CONCURRENCY
    }
    maps = [bm.MapAgreement("cat.jpg", 285, "Egyptian cat", 0.9901, 0.9902, 0.99999, 0.0, -0.4)]
    return {
        "archive": "model_store (current)",
        "settings": {bench.OURS: "batchSize 8", bench.STOCK: "batchSize 8"},
        "maps": maps,
        "cells": cells,
        "labels": {name: contender.label for name, contender in bm.contenders([]).items()},
    }


def table_row(report: str, header: str, first_cell: str) -> list[str]:
    """The cells of the first row starting with ``first_cell`` in a table under ``header``."""
    lines = report.splitlines()
    for start in (n for n, line in enumerate(lines) if line.startswith(header)):
        for line in lines[start + 2 :]:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == first_cell:
                return cells
    raise AssertionError(f"no row {first_cell!r} under {header!r}")


def test_report_ratios_from_constructed_numbers() -> None:
    costs = [
        bm.Cost("vanilla", "-", [0.16, 0.24], {"decode": 0.04, "forward_backward": 0.1}),
        bm.Cost("smoothgrad", "samples 25", [4.0, 4.4], {"decode": 0.04, "forward_backward": 4}),
    ]
    info = {
        "date": "today",
        "machine": bench.machine(),
        "load_start": "0 0 0",
        "load_end": "0 0 0",
        "photos": ["cat.jpg 10x10"],
    }
    report = bm.render("cmd", bm.QUICK, info, synthetic_results(), costs)

    ig = table_row(report, "| concurrency | throughput ours / Captum", "8")
    assert ig == ["8", "8.0 x", "12.0 x", "100 x"]  # 4 / 0.5 req/s, 6 / 0.5 s, 4 MB / 40 KB
    trio = table_row(report, "| concurrency | gradcam / classification", "1")
    assert trio == ["1", "0.90", "0.60", "1.50"]
    load = table_row(report, "| contender | concurrency", "ours, gradcam")
    assert load[1:4] == ["8", "20", "45.0"] and load[6] == "50,000"
    vanilla = table_row(report, "| method | settings", "vanilla")
    assert vanilla[2:6] == ["0.025", "0.020", "1.0", "5.0 / 12.5"]  # median 0.2 s / 8 images
    smooth = table_row(report, "| method | settings", "smoothgrad")
    assert smooth[2] == "0.525" and smooth[4] == "21.0"  # 4.2 / 0.2
    assert "Lowest ours vs Captum: 0.9901 (cat.jpg, class 285)" in report


def test_report_without_a_server_has_the_costs_only() -> None:
    info = {
        "date": "d",
        "machine": bench.machine(),
        "load_start": "",
        "load_end": "",
        "photos": [],
    }
    cost = bm.Cost("gradcam", "-", [0.08], {"decode": 0.04})
    report = bm.render("cmd", bm.FULL, info, None, [cost])
    assert "Captum" not in report
    assert table_row(report, "| method | settings", "gradcam")[2] == "0.010"


def test_write_section_appends_once_then_replaces(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nearlier text\n")
    bm.write_section(doc, "first run\n")
    bm.write_section(doc, "second run\n")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nearlier text\n")
    assert text.count(bm.HEADING) == 1 and "first run" not in text
    assert f"{bm.BEGIN}\nsecond run\n{bm.END}" in text

    doc.write_text(f"intro\n{bm.BEGIN}\nold\n{bm.END}\nafter\n")
    bm.write_section(doc, "new\n")
    assert doc.read_text() == f"intro\n{bm.BEGIN}\nnew\n{bm.END}\nafter\n"


def test_stale_entries_name_what_differs(tmp_path: Path) -> None:
    handler = tmp_path / "handler"
    (handler / "saliency_service").mkdir(parents=True)
    files = {
        "saliency_handler.py": b"handler",
        "model-config.yaml": b"batchSize: 8",
        "saliency_service/pipeline.py": b"pipeline",
    }
    for name, data in files.items():
        (handler / name).write_bytes(data)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    mar = tmp_path / "m.mar"
    with zipfile.ZipFile(mar, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("w.pth", b"weights")
        archive.writestr(
            "MAR-INF/MANIFEST.json", json.dumps({"model": {"serializedFile": "w.pth"}})
        )
    assert bm.stale_entries(mar, handler, weights) == []

    (handler / "saliency_service" / "pipeline.py").write_bytes(b"changed")
    (handler / "saliency_service" / "new.py").write_bytes(b"new")
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights")
    assert bm.stale_entries(mar, handler, other) == [
        "saliency_service/new.py",
        "saliency_service/pipeline.py",
        "w.pth (other weights)",
    ]


def test_every_method_is_costed_in_process() -> None:
    chosen = bm.in_process_contenders()
    methods = {fields.get("method") for _, fields in chosen.values()}
    assert set(bm.METHODS) <= methods
    assert chosen["integrated_gradients (stock settings)"][1]["steps"] == "15"
    assert chosen["smoothgrad"][0] == "samples 25, noise 0.15"  # the drawn seed is not a setting
