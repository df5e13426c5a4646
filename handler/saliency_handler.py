"""TorchServe adapter: wires TorchServe's context to the framework-free ``SaliencyService``.

TorchServe's BaseHandler runs inference under ``torch.inference_mode()``, where autograd cannot be
switched back on; this handler therefore does not use BaseHandler's pipeline at all. The
service decides per request and switches autograd on for the saliency step alone.
"""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch

from saliency_service.pipeline import BatchReport, SaliencyService, ServiceConfig

log = logging.getLogger(__name__)

LABELS_FILE = "index_to_name.json"
MODEL_NAME_DIMENSION = "ModelName"


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
        handler_config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        weights = model_dir / context.manifest["model"]["serializedFile"]
        self.service = SaliencyService.from_files(
            weights, model_dir / LABELS_FILE, device, ServiceConfig.from_mapping(handler_config)
        )
        self.service.warm_up()
        log.info(
            "squeezenet saliency ready on %s (pid %d, %d torch threads)",
            device,
            os.getpid(),
            torch.get_num_threads(),
        )
        self.initialized = True

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        answers = self.service.handle_batch(data)
        for index, answer in enumerate(answers):
            context.set_response_content_type(index, "application/json")
            if answer.status != HTTPStatus.OK:
                context.set_response_status(answer.status, HTTPStatus(answer.status).phrase, index)
        self._record(context, self.service.last_report)
        return [json.dumps(answer.body, separators=(",", ":")).encode() for answer in answers]

    @staticmethod
    def _record(context: Any, report: BatchReport) -> None:
        """Per-stage latency, batch size and error counts as TorchServe custom metrics."""
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        try:
            for stage, seconds in report.seconds.items():
                metrics.add_time(
                    f"Saliency{stage.title().replace('_', '')}Time", seconds * 1000, None, "ms"
                )
            metrics.add_size("SaliencyBatchSize", report.size, None, "count")
        except Exception:  # metrics must never fail a request
            log.debug("could not record metrics", exc_info=True)
