"""TorchServe adapter: wires TorchServe's context to the framework-free ``SaliencyService``.

TorchServe's BaseHandler runs inference under ``torch.inference_mode()``, where autograd cannot be
switched back on; this handler therefore does not use BaseHandler's pipeline at all. The
service decides per request and switches autograd on for the saliency step alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch

from saliency_service import transport
from saliency_service.model import SPEC_FILE, ModelSpec
from saliency_service.pipeline import BatchReport, SaliencyService, ServiceConfig
from saliency_service.routing import lower_priority

log = logging.getLogger(__name__)

LABELS_FILE = "index_to_name.json"
MODEL_NAME_DIMENSION = "ModelName"

# Custom metrics; each is declared, with these dimensions in this order, in handler/metrics.yaml
# (TorchServe's Prometheus endpoint exports only declared metrics).
STAGE_SECONDS = "saliency_stage_latency_seconds"  # histogram: ModelName, Level, Stage
BATCH_SIZE = "saliency_batch_size"  # histogram: ModelName, Level
ERRORS = "saliency_errors_total"  # counter: ModelName, Level, ErrorCode
STREAM2_WARNING = (
    "gRPC StreamPredictions2 request: TorchServe 0.12's front end cannot deliver its answer for "
    "this model and stops this worker without restarting it (README, 'gRPC'); scale the model's "
    "workers or restart TorchServe, and keep the gRPC port from such clients"
)


class SaliencyHandler:
    """``initialize`` once per worker; ``handle`` once per batch of requests."""

    def __init__(self) -> None:
        self.service: SaliencyService | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            device = torch.device(f"cuda:{gpu_id}")
        else:
            device = torch.device("cpu")
            if gpu_id is not None:  # TorchServe saw a GPU that PyTorch cannot use
                log.warning(
                    "GPU %s was assigned but PyTorch (CUDA %s) sees no usable CUDA device (a "
                    "driver older than the wheel needs?): serving on the CPU",
                    gpu_id,
                    torch.version.cuda,
                )
        handler_config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        weights = model_dir / context.manifest["model"]["serializedFile"]
        config = ServiceConfig.from_mapping(handler_config)
        name = getattr(context, "model_name", None)
        if name and name == config.routing.sampled_model:
            # This registration answers the expensive requests: it yields the CPU to the
            # interactive one (saliency_service/routing.py).
            lower_priority(config.routing.sampled_niceness)
        # An archive without model.json is the SqueezeNet 1.1 one (built before other models).
        spec_file = model_dir / SPEC_FILE
        spec = ModelSpec.from_file(spec_file) if spec_file.is_file() else None  # None: SqueezeNet
        self.service = SaliencyService.from_files(
            weights, model_dir / LABELS_FILE, device, config, name, spec
        )
        self.service.warm_up()
        log.info(
            "%s ready on %s (pid %d, %d torch threads, nice %d)",
            name or "squeezenet saliency",
            device,
            os.getpid(),
            torch.get_num_threads(),
            os.getpriority(os.PRIO_PROCESS, 0),
        )
        self.initialized = True

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        answers = self.service.handle_batch(data)
        for index, answer in enumerate(answers):
            context.set_response_content_type(index, "application/json")
            if answer.status != HTTPStatus.OK:
                context.set_response_status(answer.status, HTTPStatus(answer.status).phrase, index)
            for name, value in answer.headers.items():
                context.set_response_header(index, name, value)
            # gRPC StreamPredictions needs ts_stream_next, or the front end restarts the worker.
            properties = context.get_all_request_header(index)
            for name, value in transport.response_headers(properties).items():
                context.set_response_header(index, name, value)
            if transport.stream_predictions2(properties):
                log.error(STREAM2_WARNING)
        self._record(context, self.service.last_report)
        return [json.dumps(answer.body, separators=(",", ":")).encode() for answer in answers]

    @staticmethod
    def _record(context: Any, report: BatchReport) -> None:
        """Per-stage latency, batch size and error counts as TorchServe custom metrics.

        One observation per batch: seconds of each stage that ran (a batch whose every request
        was refused never reaches forward_backward), the number of requests, and one count per
        error answered, by error code.
        """
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        try:
            from ts.metrics.dimension import Dimension
            from ts.metrics.metric_type_enum import MetricTypes

            model = getattr(context, "model_name", None) or "squeezenet_saliency"
            base = [Dimension(MODEL_NAME_DIMENSION, model), Dimension("Level", "Model")]
            for stage, seconds in report.seconds.items():
                if seconds > 0:
                    metrics.add_time(
                        STAGE_SECONDS,
                        seconds,
                        None,
                        "s",
                        [*base, Dimension("Stage", _label(stage))],
                        MetricTypes.HISTOGRAM,
                    )
            metrics.add_metric(
                BATCH_SIZE, report.size, "count", None, list(base), MetricTypes.HISTOGRAM
            )
            for code, count in sorted(Counter(report.error_codes).items()):
                metrics.add_counter(
                    ERRORS, count, None, [*base, Dimension("ErrorCode", _label(code))]
                )
        except Exception:  # metrics must never fail a request
            _warn_once("could not record metrics")


_warned: set[str] = set()


def _label(value: str) -> str:
    """A dimension value that cannot break TorchServe's metric line format (``|``, ``,``, ``:``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value))[:64] or "unknown"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message, exc_info=True)
