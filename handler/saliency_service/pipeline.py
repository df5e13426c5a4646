"""The service without a server: a batch of request rows in, one (status, JSON) answer per row.

Every stage is a plain function of the modules beside this one; this class only wires them,
keeps one bad request from touching its neighbours, and times the stages.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import images, rendering
from .attribution import PREDICTED, SaliencyResult, smoothgrad_saliency, vanilla_saliency
from .errors import RequestError
from .labels import Labels
from .model import load_model
from .parsing import MAX_SEED, Options, RequestLimits, SaliencyRequest, parse_request

log = logging.getLogger(__name__)

STAGES = ("decode", "forward_backward", "encode")


@dataclass(frozen=True)
class ServiceConfig:
    image_limits: images.ImageLimits = field(default_factory=images.ImageLimits)
    request_limits: RequestLimits = field(default_factory=RequestLimits)
    # At most this many images per forward/backward pass of SmoothGrad's noisy copies: on CPU
    # ~15-20 MB of activations each, and batches past ~16-32 images are no faster per image.
    max_gradient_batch: int = 32

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ServiceConfig:
        """From the ``handler:`` block of model-config.yaml; every key is optional."""
        max_bytes = int(values.get("max_image_bytes", images.ImageLimits.max_bytes))
        max_pixels = int(values.get("max_image_pixels", images.ImageLimits.max_pixels))
        max_topk = int(values.get("max_topk", RequestLimits.max_topk))
        max_samples = int(values.get("max_samples", RequestLimits.max_samples))
        max_gradient_batch = int(values.get("max_gradient_batch", cls.max_gradient_batch))
        if max_samples < 1 or max_gradient_batch < 1:
            raise ValueError("max_samples and max_gradient_batch must be >= 1")
        return cls(
            images.ImageLimits(max_bytes, max_pixels),
            RequestLimits(max_bytes, max_topk, max_samples),
            max_gradient_batch,
        )


@dataclass(frozen=True)
class Answer:
    """One response: HTTP status and a JSON-serialisable body."""

    status: int
    body: dict


@dataclass
class BatchReport:
    """What one batch cost, for metrics: seconds per stage and the error codes answered."""

    size: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    error_codes: list[str] = field(default_factory=list)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


@dataclass(frozen=True)
class _Item:
    index: int  # position in the batch
    options: Options
    image: images.PreparedImage


@dataclass(frozen=True)
class _Outputs:
    """Model outputs for the decoded items of a batch, on the CPU."""

    top_indices: list[list[int]]
    top_probabilities: list[list[float]]
    targets: list[int]
    target_scores: list[float]
    map_pixels: np.ndarray | None  # (N, H, W) uint8
    map_peaks: list[float] | None


class SaliencyService:
    """SqueezeNet 1.1 predictions with saliency maps for batches of requests."""

    def __init__(
        self,
        model: nn.Module,
        labels: Labels,
        device: torch.device | str = "cpu",
        config: ServiceConfig | None = None,
    ) -> None:
        self.device = torch.device(device)
        # channels_last: oneDNN's NHWC kernels take ~40% less time forward and backward on CPU
        # (docs/benchmarks.md). Maps are as close to a float64 computation as NCHW ones; neither
        # layout's float32 maps are bit-identical across batch sizes (tests/reference.py).
        self.model = (
            model.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        )
        self.labels = labels
        self.config = config or ServiceConfig()
        self.last_report = BatchReport()

    @classmethod
    def from_files(
        cls,
        weights: str | Path,
        labels: str | Path,
        device: torch.device | str = "cpu",
        config: ServiceConfig | None = None,
    ) -> SaliencyService:
        return cls(load_model(weights), Labels.from_json(labels), device, config)

    def warm_up(self) -> None:
        """One saliency pass on a blank image, so the first client does not pay for lazy setup."""
        blank = images.Image.new("RGB", (images.CROP_TO, images.CROP_TO), (128, 128, 128))
        with torch.inference_mode():
            vanilla_saliency(self.model, self.model_input([images.preprocess(blank).tensor]))

    def handle_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Answer]:
        """Answer every row; a bad row gets its 4xx and the others are computed as if alone."""
        with torch.inference_mode():  # autograd comes back only inside the saliency step
            report = BatchReport(size=len(rows))
            answers: list[Answer | None] = [None] * len(rows)
            items: list[_Item] = []
            with report.timed("decode"):
                for index, row in enumerate(rows):
                    try:
                        items.append(self._prepare(index, row))
                    except RequestError as error:
                        answers[index] = Answer(error.status, error.to_json())
                    except Exception:  # a bug costs this request alone, and is logged
                        log.exception("request %d of %d: unexpected error", index, len(rows))
                        answers[index] = _internal_error()
            if items:
                try:
                    for item, answer in zip(items, self._answer(items, report), strict=True):
                        answers[item.index] = answer
                except Exception:
                    log.exception("batch of %d images failed", len(items))
                    for item in items:
                        answers[item.index] = _internal_error()
            final = [answer or _internal_error() for answer in answers]
            report.error_codes = [a.body["error"]["code"] for a in final if a.status >= 400]
            self.last_report = report
            return final

    def _prepare(self, index: int, row: Mapping[str, Any]) -> _Item:
        request: SaliencyRequest = parse_request(row, self.labels, self.config.request_limits)
        image = images.decode(request.image, self.config.image_limits)
        options = request.options
        if options.method == "smoothgrad" and options.seed is None:
            options = replace(options, seed=secrets.randbelow(MAX_SEED + 1))  # reported back
        return _Item(index, options, images.preprocess(image))

    def _answer(self, items: list[_Item], report: BatchReport) -> list[Answer]:
        with report.timed("forward_backward"):
            outputs = self._run_model(items)
        with report.timed("encode"):
            return [
                Answer(200, self._body(n, item, outputs, report.size))
                for n, item in enumerate(items)
            ]

    def model_input(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """A batch on the model's device, in the model's channels_last layout."""
        return torch.stack(tensors).to(self.device).contiguous(memory_format=torch.channels_last)

    def _run_model(self, items: list[_Item]) -> _Outputs:
        """One forward (and, if any request wants a map, one backward) for the whole batch.

        Requests for SmoothGrad maps are computed together: their noisy copies share passes of at
        most ``max_gradient_batch`` images. All other requests share one vanilla pass.
        """
        options = [item.options for item in items]
        inputs = self.model_input([item.image.tensor for item in items])
        pixels = peaks = None
        if any(o.saliency for o in options):
            result = self._saliency(inputs, options)
            logits, targets = result.logits, result.targets
            pixels, peaks = rendering.quantise(result.maps)
        else:
            logits = self.model(inputs)
            targets = logits.argmax(dim=1)
        probabilities = torch.softmax(logits.float(), dim=1)
        top_p, top_i = probabilities.topk(max(o.topk for o in options), dim=1)
        scores = logits.gather(1, targets[:, None]).squeeze(1)
        return _Outputs(
            top_i.tolist(), top_p.tolist(), targets.tolist(), scores.tolist(), pixels, peaks
        )

    def _saliency(self, inputs: torch.Tensor, options: list[Options]) -> SaliencyResult:
        """Maps, logits and targets of the batch, in its order, from one call per method."""
        requested = torch.tensor([PREDICTED if o.target is None else o.target for o in options])
        smooth = [n for n, o in enumerate(options) if o.saliency and o.method == "smoothgrad"]
        plain = [n for n in range(len(options)) if n not in smooth]
        parts: list[tuple[list[int], SaliencyResult]] = []
        if smooth:
            chosen = [options[n] for n in smooth]
            smoothed = smoothgrad_saliency(
                self.model,
                inputs[smooth],
                requested[smooth],
                [o.objective for o in chosen],
                samples=[o.samples for o in chosen],
                noise=[o.noise for o in chosen],
                seeds=[o.seed for o in chosen],
                chunk_size=self.config.max_gradient_batch,
            )
            parts.append((smooth, smoothed))
        if plain and any(options[n].saliency for n in plain):
            objectives = [options[n].objective for n in plain]
            parts.append(
                (plain, vanilla_saliency(self.model, inputs[plain], requested[plain], objectives))
            )
        elif plain:  # classification only: no backward pass
            logits = self.model(inputs[plain])
            maps = torch.zeros(len(plain), *inputs.shape[2:], device=inputs.device)
            parts.append((plain, SaliencyResult(maps, logits, logits.argmax(dim=1))))
        if len(parts) == 1:
            return parts[0][1]
        where = torch.tensor([n for group, _ in parts for n in group]).argsort().to(inputs.device)
        return SaliencyResult(
            *(
                torch.cat([getattr(r, name) for _, r in parts])[where]
                for name in ("maps", "logits", "targets")
            )
        )

    def _body(self, n: int, item: _Item, outputs: _Outputs, batch_size: int) -> dict:
        options = item.options
        ranked = list(zip(outputs.top_indices[n], outputs.top_probabilities[n], strict=True))
        body: dict[str, Any] = {
            "prediction": self._class(*ranked[0]),
            "topk": [self._class(i, p) for i, p in ranked[: options.topk]],
            "crop_box": list(item.image.crop_box),
            "serving": {"batch_size": batch_size, "device": str(self.device)},
        }
        if options.saliency:
            target = outputs.targets[n]
            body["target"] = {
                "index": target,
                "label": self.labels[target],
                "score": outputs.target_scores[n],
            }
            body.update(
                _pictures(outputs.map_pixels[n], outputs.map_peaks[n], options, item.image.crop)
            )
        return body

    def _class(self, index: int, probability: float) -> dict:
        return {"index": index, "label": self.labels[index], "probability": probability}


def _pictures(pixels: np.ndarray, peak: float, options: Options, crop: images.Image.Image) -> dict:
    """The map as grayscale PNG, plus the heatmap and overlay a request asked for."""
    height, width = pixels.shape
    pictures: dict[str, Any] = {
        "saliency": {
            "png": rendering.png_base64(pixels),
            "width": width,
            "height": height,
            "max": peak,
            "objective": options.objective,
            "method": options.method,
        },
    }
    if options.method == "smoothgrad":
        pictures["saliency"].update(samples=options.samples, noise=options.noise, seed=options.seed)
    if options.colormap != "gray" or options.overlay:
        colored = rendering.colorize(pixels, options.colormap)
        if options.colormap != "gray":
            pictures["heatmap"] = {
                "png": rendering.png_base64(colored),
                "colormap": options.colormap,
            }
        if options.overlay:
            pictures["overlay"] = {
                "png": rendering.png_base64(rendering.blend(crop, colored)),
                "colormap": options.colormap,
                "alpha": rendering.OVERLAY_ALPHA,
            }
    return pictures


def _internal_error() -> Answer:
    error = RequestError("internal_error", "The server failed on this request; it was logged.", 500)
    return Answer(error.status, error.to_json())
