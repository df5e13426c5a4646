"""In-process timing: the pipeline's own stage report is read, never re-timed; the batches take
turns; the levers' table and helpers. A fake service makes every figure known in advance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from saliency_service.labels import Labels, torchvision_categories
from saliency_service.pipeline import STAGES, Answer, BatchReport, SaliencyService
from saliency_tools.bench import inprocess, levers
from saliency_tools.bench.photos import Photo, jpeg


class FakeService:
    """Answers 200 to every row; its report of call n says decode n, model 10 n, encode 100 n."""

    def __init__(self, fail: str = "") -> None:
        self.batches: list[Sequence[Mapping[str, Any]]] = []
        self.last_report = BatchReport()
        self.fail = fail

    def handle_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Answer]:
        self.batches.append(rows)
        n = len(self.batches)
        seconds = {"decode": n, "forward_backward": 10 * n, "encode": 100 * n}
        self.last_report = BatchReport(size=len(rows), seconds=seconds)
        status = 500 if rows[0].get("tag") == self.fail else 200
        return [Answer(status, {"call": n}) for _ in rows]


def test_the_stage_seconds_are_the_pipelines_report_of_each_timed_call() -> None:
    service = FakeService()
    timings = inprocess.time_batches(service, {"x": [{"tag": "x"}], "y": [{"tag": "y"}]}, 3)

    # one untimed call each, then rounds x y, y x, x y: calls 3..8
    assert [rows[0]["tag"] for rows in service.batches] == list("xyxyyxxy")
    assert [t.stages["decode"] for t in timings["x"]] == [3, 6, 7]
    assert [t.stages["forward_backward"] for t in timings["y"]] == [40, 50, 80]
    assert all(t.seconds >= 0 and t.json_seconds >= 0 for t in timings["x"] + timings["y"])


def test_a_failed_answer_stops_the_timing() -> None:
    with pytest.raises(RuntimeError, match="broken"):
        inprocess.time_batches(FakeService(fail="y"), {"ok": [{}], "broken": [{"tag": "y"}]}, 1)


def test_stage_breakdown_times_raw_photos_and_classification_per_batch_size() -> None:
    service = FakeService()
    photos = [Photo("a.jpg", b"a", (1, 1)), Photo("b.jpg", b"b", (1, 1))]
    entries = inprocess.stage_breakdown(service, photos, (1, 3), repeats=2)

    assert [entry["batch"] for entry in entries] == [1, 3]
    assert [len(entries[1][kind]) for kind in ("saliency", "classification")] == [2, 2]
    sizes = [len(rows) for rows in service.batches]
    assert sizes == [1] * 6 + [3] * 6  # per size: 2 warm-up calls, 2 rounds of 2
    # the second round of batch 3 rotates: classification, then the map
    assert service.batches[-2] == [{"image": d, "saliency": "false"} for d in (b"a", b"b", b"a")]
    assert service.batches[-1] == [{"body": b"a"}, {"body": b"b"}, {"body": b"a"}]


def test_a_real_service_reports_its_stages_to_the_timing(model: torch.nn.Module) -> None:
    service = SaliencyService(model, Labels(torchvision_categories()))
    data = jpeg(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    batches = {"saliency": [{"body": data}], "classification": [{"image": data, "saliency": "0"}]}
    timings = inprocess.time_batches(service, batches, 1)

    last = timings["classification"][-1]  # the last call of the one round
    assert last.stages == service.last_report.seconds and set(last.stages) == set(STAGES)
    assert timings["saliency"][0].stages != last.stages


def test_lowest_rank_correlation_ranks_ties_as_scipy_does() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(3)
    a = torch.randint(0, 5, (3, 6, 6), generator=generator).float()  # 8-bit-like: many ties
    b = a + torch.randint(0, 3, (3, 6, 6), generator=generator).float()
    pairs = zip(a, b, strict=True)
    expected = min(stats.spearmanr(x.flatten(), y.flatten()).statistic for x, y in pairs)
    assert inprocess.lowest_rank_correlation(a, b) == pytest.approx(expected, abs=1e-12)


def test_a_lever_group_is_measured_against_its_first_variant() -> None:
    table = levers.LeverTable(repeats=2)
    calls: list[str] = []
    table.group(
        "g", {"base": lambda: calls.append("base"), "other": lambda: calls.append("o")}, "n"
    )
    assert [(r["group"], r["variant"], r["note"]) for r in table.rows] == [
        ("g", "base", ""),
        ("g", "other", "n"),
    ]
    assert table.rows[0]["vs_base"] == 1.0 and calls.count("base") == 3  # warm-up + 2 runs

    table.paired("batch 8", {"v": (lambda: None, lambda: None)})
    paired = {row["group"]: row["note"] for row in table.rows[2:]}
    assert paired["forward, batch 8"] == ""
    assert paired["forward + gradient, batch 8"].startswith("/ forward: ")


def test_jpeg_draft_decoding_keeps_the_short_side_at_256_at_least() -> None:
    array = np.random.default_rng(1).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)
    drafted = levers.draft_decode(jpeg(array))
    assert 256 <= min(drafted.size) < 1500  # a DCT downscale, not a full decode
    assert drafted.mode == "RGB"
