"""scripts/bench_methods.py's parts: the stock answer's map, map agreement with ties, the stock
form, the archive check, and the in-process costs from the pipeline's own stage report.

No server and no timing here; the report's tests are in test_bench_report.py.
"""

from __future__ import annotations

import email
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from saliency_service import rendering
from saliency_service.pipeline import Answer, BatchReport
from saliency_tools.bench import maps
from saliency_tools.bench import methods as bm
from saliency_tools.bench.load import Slice
from saliency_tools.bench.photos import Photo
from saliency_tools.bench.stock import captum_map, stock_body


def test_as_8bit_is_the_services_quantisation() -> None:
    values = np.array([[0.0, 1.0], [2.0, 4.0]])
    assert maps.as_8bit(values).tolist() == [[0.0, 64.0], [128.0, 255.0]]  # round(255 s / max)


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
    assert captum_map(answer).tolist() == expected
    assert captum_map([answer]).tolist() == expected  # with a batch axis of 1
    assert captum_map(np.moveaxis(attributions, 0, -1).tolist()).tolist() == expected
    with pytest.raises(ValueError):
        captum_map([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError):
        captum_map(np.zeros((2, 4, 4)).tolist())


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

    row = maps.agreement("cat.jpg", ours, captum_answer, 0.0)
    assert (row.target, row.label, row.delta) == (285, "Egyptian cat", -0.5)
    assert row.both_8bit == pytest.approx(1.0)  # the same map at the same resolution
    assert row.served == pytest.approx(row.ceiling)  # only quantisation separates them
    assert row.served < 1.0
    served = maps.served_map(ours)
    assert served.shape == (24, 24) and served.max() == 255

    other = maps.agreement("cat.jpg", our_answer(rng.random((24, 24))), captum_answer, 0.0)
    assert abs(other.served) < 0.3


def test_stock_form_carries_the_target_as_json() -> None:
    photo = Photo("cat.jpg", b"\xff\xd8jpeg", (10, 10))
    assert stock_body(photo, None) == (photo.data, "application/octet-stream")
    body, kind = stock_body(photo, 285)
    message = email.message_from_bytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.walk()}
    assert parts["data"].get_payload(decode=True) == photo.data
    assert parts["target"].get_content_type() == "application/json"
    assert parts["target"].get_filename()  # a file part: TorchServe passes its content type on
    assert json.loads(parts["target"].get_payload(decode=True)) == 285


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


def test_our_form_carries_the_image_and_the_options() -> None:
    photo = Photo("cat.jpg", b"\xff\xd8jpeg", (10, 10))
    body, kind = bm.ours_body(photo, {"method": "gradcam", "steps": "15"})
    message = email.message_from_bytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.walk()}
    assert parts["image"].get_payload(decode=True) == photo.data
    assert parts["image"].get_filename() == "cat.jpg"
    assert parts["method"].get_payload(decode=True) == b"gradcam"
    assert parts["steps"].get_payload(decode=True) == b"15"


class ReportingService:
    """Answers 200; its report of call n: decode n ms, model 10 n ms, encode 100 n ms."""

    def __init__(self) -> None:
        self.rows: list[Sequence[Mapping[str, Any]]] = []
        self.last_report = BatchReport()

    def handle_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Answer]:
        self.rows.append(rows)
        n = len(self.rows) / 1000
        seconds = {"decode": n, "forward_backward": 10 * n, "encode": 100 * n}
        self.last_report = BatchReport(size=len(rows), seconds=seconds)
        return [Answer(200, {}) for _ in rows]


def test_method_costs_take_the_pipelines_stage_medians() -> None:
    service = ReportingService()
    photos = [Photo("a.jpg", b"a", (1, 1))]
    costs = bm.method_costs(service, photos, repeats=3, log=lambda _: None)

    chosen = bm.in_process_contenders()
    assert [cost.name for cost in costs] == list(chosen)
    count = len(chosen)
    assert len(service.rows) == 4 * count  # one untimed call each, then 3 rounds
    assert all(len(rows) == bm.BATCH for rows in service.rows)
    first = costs[0]  # classification only: which calls were its own, in the rotating order
    calls = [n for n, rows in enumerate(service.rows, 1) if rows[0] == service.rows[0][0]]
    assert calls[0] == 1 and len(calls) == 4
    assert first.stages["decode"] == pytest.approx(float(np.median(calls[1:])) / 1000)
    assert list(first.stages) == ["decode", "forward_backward", "encode"]
    assert len(first.seconds) == 3
    assert service.rows[0][0] == {"image": b"a", "saliency": "false"}


def test_answers_of_the_wrong_kind_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = bm.contenders([Photo("a.jpg", b"a", (1, 1))])
    answers = {
        "ig_ours": {"saliency": {"method": "integrated_gradients"}},
        "ig_captum": np.zeros((3, 2, 2)).tolist(),
        "classify": {"prediction": {}},
        "gradcam": {"saliency": {"method": "gradcam"}},
        "vanilla": {"saliency": {"method": "vanilla"}},
    }
    by_path = {}
    for name, contender in pool.items():
        by_path.setdefault(contender.path, []).append(name)

    def answer(port, key, path, body) -> Any:
        name = next(n for n in by_path[path] if pool[n].bodies[0] == body)
        return answers[name]

    monkeypatch.setattr(bm, "request", answer)
    bm.check_answers(0, "k", pool)
    answers["gradcam"] = {"saliency": {"method": "vanilla"}}
    with pytest.raises(RuntimeError, match="gradcam"):
        bm.check_answers(0, "k", pool)
    answers["gradcam"] = {"saliency": {"method": "gradcam"}}
    answers["classify"] = {"saliency": {"method": "vanilla"}}
    with pytest.raises(RuntimeError, match="saliency=false"):
        bm.check_answers(0, "k", pool)


def test_slices_are_sized_by_what_a_request_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    def fake_slice(port, key, contender, concurrency, count) -> Slice:
        calls.append((contender.key, concurrency, count))
        return Slice([0.1] * count, [1] * count, 0, 1.0)

    monkeypatch.setattr(bm, "run_slice", fake_slice)
    pool = bm.contenders([Photo("a.jpg", b"a", (1, 1))])
    cells = bm.drive(0, "k", pool, bm.QUICK, log=lambda _: None)

    names = list(pool)
    assert calls[: len(names)] == [(name, 8, 8) for name in names]  # the warm-up
    measured = calls[len(names) :]
    assert [key for key, *_ in measured[: len(names)]] == names
    assert [key for key, *_ in measured[len(names) : 2 * len(names)]] == names[1:] + names[:1]
    assert ("ig_captum", 8, 8) in measured and ("ig_ours", 1, 4) in measured
    assert ("gradcam", 8, 32) in measured
    assert {c for _, c in cells} == {8, 1} and len(cells[("vanilla", 1)].slices) == 2


def test_a_warm_up_with_errors_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "run_slice", lambda *_: Slice([], [], 8, 1.0))
    pool = bm.contenders([Photo("a.jpg", b"a", (1, 1))])
    with pytest.raises(RuntimeError, match="8 errors while warming up"):
        bm.drive(0, "k", pool, bm.QUICK, log=lambda _: None)
