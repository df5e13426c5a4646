"""The handler's metric lines fit handler/metrics.yaml and TorchServe's front-end parser.

TorchServe's Prometheus export matches a backend metric to its declaration by name and takes the
dimension values in the order they are printed; a mismatch is silently mislabelled or dropped.
This runs the handler's ``_record`` against TorchServe's own metrics cache, loaded from the
shipped metrics.yaml, without a server.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

import saliency_handler
from saliency_handler import BATCH_SIZE, ERRORS, STAGE_SECONDS, SaliencyHandler
from saliency_service.pipeline import Answer, BatchReport

ROOT = Path(__file__).resolve().parents[2]
METRICS_YAML = ROOT / "handler" / "metrics.yaml"
# org.pytorch.serve.metrics.Metric's pattern in TorchServe 0.12's front end.
FRONTEND = re.compile(
    r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)\|#([^|]*)(\|#type:([^|,]+))?\|#hostname:([^,]+),"
    r"([^,]+)(,(.*))?"
)


def declared() -> dict[str, tuple[str, list[str]]]:
    spec = yaml.safe_load(METRICS_YAML.read_text())["model_metrics"]
    return {m["name"]: (kind, m["dimensions"]) for kind, items in spec.items() for m in items}


def recorded(report: BatchReport, caplog: pytest.LogCaptureFixture) -> list[re.Match]:
    cache = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    cache.initialize_cache()
    cache.model_name = "squeezenet_saliency"
    cache.set_request_ids({0: "req-0", 1: "req-1", 2: "req-2"})
    context = SimpleNamespace(metrics=cache, model_name="squeezenet_saliency")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        SaliencyHandler._record(context, report)
    lines = [r.getMessage() for r in caplog.records if "[METRICS]" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    matches = [FRONTEND.match(line.split("[METRICS]", 1)[1]) for line in lines]
    assert all(matches), lines
    return matches


def test_every_line_is_declared_with_its_dimensions_in_order(caplog) -> None:
    report = BatchReport(size=3)
    report.seconds.update(decode=0.004, forward_backward=0.15, encode=0.02)
    report.error_codes = ["invalid_image", "invalid_image", "empty_body"]
    spec = declared()
    by_name: dict[str, list[tuple[list[str], float]]] = {}
    for match in recorded(report, caplog):
        name, dimensions, kind = match[1], match[4], match[6]
        names = [pair.split(":", 1)[0] for pair in dimensions.split(",")]
        values = [pair.split(":", 1)[1] for pair in dimensions.split(",")]
        assert name in spec, f"{name} is not declared in metrics.yaml"
        assert kind.lower() == spec[name][0]
        assert names == spec[name][1], name
        by_name.setdefault(name, []).append((values, float(match[3])))
    stages = {values[2]: value for values, value in by_name[STAGE_SECONDS]}
    assert stages == {"decode": 0.004, "forward_backward": 0.15, "encode": 0.02}
    assert by_name[BATCH_SIZE] == [(["squeezenet_saliency", "Model"], 3.0)]
    errors = {values[2]: value for values, value in by_name[ERRORS]}
    assert errors == {"empty_body": 1.0, "invalid_image": 2.0}


def test_stages_that_did_not_run_are_not_observed(caplog) -> None:
    report = BatchReport(size=2)  # both requests refused while decoding
    report.seconds["decode"] = 0.001
    report.error_codes = ["invalid_image", "invalid_image"]
    names = [(m[1], m[4]) for m in recorded(report, caplog)]
    stages = [dims for name, dims in names if name == STAGE_SECONDS]
    assert len(stages) == 1 and "Stage:decode" in stages[0]


class RefusingService:
    """Stands in for the service: refuses every row, as a batch of bad requests gets."""

    def __init__(self) -> None:
        self.last_report = BatchReport()

    def handle_batch(self, rows: list) -> list[Answer]:
        self.last_report = BatchReport(size=len(rows), error_codes=["empty_body"] * len(rows))
        return [Answer(400, {"error": {"code": "empty_body", "message": "no image"}})] * len(rows)


def test_metrics_never_fail_a_request(caplog, monkeypatch) -> None:
    """A metrics cache that throws costs one warning per worker, never an answer."""
    monkeypatch.setattr(saliency_handler, "_warned", set())  # warnings of earlier tests
    handler = SaliencyHandler()
    handler.service = RefusingService()
    context = Context("squeezenet_saliency", ".", {}, 2, None, "0.12.0", metrics=object())
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            context.request_processor = [RequestProcessor({}), RequestProcessor({})]
            bodies = handler.handle([{"body": b""}, {"body": b""}], context)
            assert [json.loads(body)["error"]["code"] for body in bodies] == ["empty_body"] * 2
            assert [context.get_response_status(i)[0] for i in range(2)] == [400, 400]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["could not record metrics"]
    assert warnings[0].exc_info is not None  # with the cause


def test_a_context_without_metrics_records_nothing_silently(caplog, monkeypatch) -> None:
    monkeypatch.setattr(saliency_handler, "_warned", set())
    with caplog.at_level(logging.INFO):
        SaliencyHandler._record(SimpleNamespace(), BatchReport(size=1))
    assert not caplog.records
