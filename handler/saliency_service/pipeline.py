"""The service without a server: a batch of request rows in, one (status, JSON) answer per row.

Every stage is a plain function of the modules beside this one; this class only wires them,
keeps one bad request from touching its neighbours, and times the stages.
"""

from __future__ import annotations

import logging
import math
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
from .attribution import PREDICTED, vanilla_saliency
from .errors import Redirect, RequestError, batch_full
from .labels import Labels
from .methods import METHODS, ExplainContext, Explanation, Job, explain
from .model import CAM_LAYER, ModelSpec, load_model
from .parsing import Options, RequestLimits, SaliencyRequest, parse_request
from .routing import Routing, passes

log = logging.getLogger(__name__)

STAGES = ("decode", "forward_backward", "encode")


@dataclass(frozen=True)
class ServiceConfig:
    image_limits: images.ImageLimits = field(default_factory=images.ImageLimits)
    request_limits: RequestLimits = field(default_factory=RequestLimits)
    # At most this many images per forward/backward pass of noisy copies and path points: on
    # CPU ~15-20 MB of activations each, and batches past ~16-32 images are no faster per image.
    max_gradient_batch: int = 32
    cam_layer: str | None = CAM_LAYER  # the submodule Grad-CAM explains
    routing: Routing = field(default_factory=Routing)  # off unless a sampled model is named
    # Images through the network per batch: a batch of 8 requests of 256 path points would
    # take minutes on CPU and outlast TorchServe's responseTimeout (the worker is then killed).
    # The budget is the lesser of max_batch_passes and what the measured speed computes in
    # max_batch_seconds (a busy CPU shrinks it); requests beyond it are refused with 503 and
    # Retry-After. One request always fits.
    max_batch_passes: int = 260
    max_batch_seconds: float = 15.0
    # The model's input recipe and why it has no Grad-CAM layer: from the archive's model.json
    # (model.ModelSpec), not from the handler block.
    preprocessing: images.Preprocessing = field(default_factory=images.Preprocessing)
    cam_missing: str = "this model has none set"
    # Archives of other models say in every answer how the image was prepared; SqueezeNet's
    # answers stay as they always were.
    report_preprocessing: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ServiceConfig:
        """From the ``handler:`` block of model-config.yaml; every key is optional."""
        max_bytes = int(values.get("max_image_bytes", images.ImageLimits.max_bytes))
        max_pixels = int(values.get("max_image_pixels", images.ImageLimits.max_pixels))
        max_topk = int(values.get("max_topk", RequestLimits.max_topk))
        max_samples = int(values.get("max_samples", RequestLimits.max_samples))
        max_steps = int(values.get("max_steps", RequestLimits.max_steps))
        max_gradient_batch = int(values.get("max_gradient_batch", cls.max_gradient_batch))
        max_batch_passes = int(values.get("max_batch_passes", cls.max_batch_passes))
        max_batch_seconds = float(values.get("max_batch_seconds", cls.max_batch_seconds))
        limits = (max_samples, max_steps, max_gradient_batch, max_batch_passes, max_batch_seconds)
        if min(limits) <= 0:
            raise ValueError(
                "max_samples, max_steps, max_gradient_batch, max_batch_passes and "
                "max_batch_seconds must be positive"
            )
        return cls(
            images.ImageLimits(max_bytes, max_pixels),
            RequestLimits(max_bytes, max_topk, max_samples, max_steps),
            max_gradient_batch,
            values.get("cam_layer", cls.cam_layer),
            Routing.from_mapping(values),
            max_batch_passes,
            max_batch_seconds,
        )


@dataclass(frozen=True)
class Answer:
    """One response: HTTP status, a JSON-serialisable body, and headers beside the usual ones."""

    status: int
    body: dict
    headers: Mapping[str, str] = field(default_factory=dict)


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
    display: np.ndarray | None  # (N, H, W) uint8: clipped levels for heatmap and overlay
    extras: list[dict[str, Any]]  # per item: what its method adds to "saliency"


class SaliencyService:
    """SqueezeNet 1.1 predictions with saliency maps for batches of requests."""

    def __init__(
        self,
        model: nn.Module,
        labels: Labels,
        device: torch.device | str = "cpu",
        config: ServiceConfig | None = None,
        model_name: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        # The service owns the model from here on: it is moved and re-laid out in place. Inputs
        # take its dtype (float32 in production; tests run float64 models where exactness is
        # the point).
        self.dtype = next(model.parameters()).dtype
        # channels_last: oneDNN's NHWC kernels take ~40% less time forward and backward on CPU
        # (docs/benchmarks.md). Maps are as close to a float64 computation as NCHW ones; neither
        # layout's float32 maps are bit-identical across batch sizes (tests/reference.py).
        self.model = (
            model.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        )
        self.labels = labels
        self.config = config or ServiceConfig()
        # Named as TorchServe registered it; only a named service redirects (routing.py).
        self.redirects = self.config.routing.redirects(model_name)
        self.last_report = BatchReport()
        self.seconds_per_pass: float | None = None  # measured, for the batch budget
        layer_name = self.config.cam_layer
        self.context = ExplainContext(
            chunk_size=self.config.max_gradient_batch,
            black=self.config.preprocessing.normalised_black().to(self.device, self.dtype),
            cam_layer=self.model.get_submodule(layer_name) if layer_name else None,
            cam_layer_name=layer_name,
            cam_missing=self.config.cam_missing,
        )

    @classmethod
    def from_files(
        cls,
        weights: str | Path,
        labels: str | Path,
        device: torch.device | str = "cpu",
        config: ServiceConfig | None = None,
        model_name: str | None = None,
        spec: ModelSpec | None = None,
    ) -> SaliencyService:
        """The model of an archive: ``weights`` is its serialized file, ``spec`` its model.json
        (None: SqueezeNet 1.1 on ImageNet)."""
        config = replace(
            config or ServiceConfig(),
            preprocessing=(spec or ModelSpec()).preprocessing,
            report_preprocessing=spec is not None,
        )
        spec = spec or ModelSpec()
        if not spec.hookable:  # no module hooks, no Grad-CAM layer (model.py)
            kind = "TorchScript" if spec.format == "torchscript" else "torch.export"
            missing = f"a {kind} model exposes no layer output to it (module hooks do not run)"
            config = replace(config, cam_layer=None, cam_missing=missing)
        elif not config.cam_layer:
            missing = f"this model ({spec.arch}) has none before global pooling"
            config = replace(config, cam_missing=missing)
        model = load_model(weights, spec=spec)
        return cls(model, Labels.from_json(labels, spec.num_classes), device, config, model_name)

    def warm_up(self) -> None:
        """One saliency pass on a blank image, so the first client does not pay for lazy setup."""
        preprocessing = self.config.preprocessing
        blank = images.Image.new("RGB", (preprocessing.crop, preprocessing.crop), (128, 128, 128))
        tensor = images.preprocess(blank, preprocessing).tensor
        with torch.inference_mode():
            vanilla_saliency(self.model, self.model_input([tensor]))

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
                    except Redirect as redirect:
                        headers = {"Location": redirect.location}
                        answers[index] = Answer(redirect.status, redirect.to_json(), headers)
                    except RequestError as error:
                        answers[index] = Answer(error.status, error.to_json())
                    except Exception:  # a bug costs this request alone, and is logged
                        log.exception("request %d of %d: unexpected error", index, len(rows))
                        answers[index] = _internal_error()
            budget = self.batch_budget()
            admitted, deferred = _within_budget(items, budget)
            if admitted:
                try:
                    for item, answer in zip(admitted, self._answer(admitted, report), strict=True):
                        answers[item.index] = answer
                except Exception:
                    log.exception("batch of %d images failed", len(admitted))
                    for item in admitted:
                        answers[item.index] = _internal_error()
            self._measure(report.seconds["forward_backward"], admitted)
            # Come back after about one such batch: the time this one took.
            retry_after = max(1, math.ceil(report.seconds["forward_backward"]))
            for item in deferred:
                error = batch_full(passes(item.options), budget, retry_after)
                headers = {"Retry-After": str(retry_after)}
                answers[item.index] = Answer(error.status, error.to_json(), headers)
            final = [answer or _internal_error() for answer in answers]
            report.error_codes = [a.body["error"]["code"] for a in final if a.status >= 400]
            self.last_report = report
            return final

    def batch_budget(self) -> int:
        """Passes the next batch may take: what the measured speed computes in
        ``max_batch_seconds``, at most ``max_batch_passes``, at least one."""
        config = self.config
        if not self.seconds_per_pass:
            return config.max_batch_passes
        fits = int(config.max_batch_seconds / self.seconds_per_pass)
        return max(1, min(config.max_batch_passes, fits))

    def _measure(self, seconds: float, admitted: list[_Item]) -> None:
        """Seconds per pass, smoothed over batches (half the weight to the newest)."""
        done = sum(passes(item.options) for item in admitted)
        if done and seconds > 0:
            latest = seconds / done
            previous = self.seconds_per_pass
            self.seconds_per_pass = latest if previous is None else (previous + latest) / 2

    def _prepare(self, index: int, row: Mapping[str, Any]) -> _Item:
        request: SaliencyRequest = parse_request(row, self.labels, self.config.request_limits)
        options = request.options
        if options.saliency:
            method = METHODS[options.method]
            method.check(self.context)
            options = replace(options, settings=method.settle(options.settings))  # reported back
        if self.redirects:  # before decoding: a redirected image costs nothing here
            self.config.routing.check(options)
        image = images.decode(request.image, self.config.image_limits)
        return _Item(index, options, images.preprocess(image, self.config.preprocessing))

    def _answer(self, items: list[_Item], report: BatchReport) -> list[Answer]:
        with report.timed("forward_backward"):
            outputs = self._run_model(items)
        with report.timed("encode"):
            return [
                Answer(200, self._body(n, item, outputs, report.size))
                for n, item in enumerate(items)
            ]

    def model_input(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """A batch on the model's device, in its dtype and its channels_last layout."""
        batch = torch.stack(tensors).to(self.device, self.dtype)
        return batch.contiguous(memory_format=torch.channels_last)

    def _run_model(self, items: list[_Item]) -> _Outputs:
        """Classification for every item, explanations for those that want one.

        Requests of single-pass methods (vanilla, Grad-CAM) share one forward and one backward
        pass; requests of sampled methods (SmoothGrad family, Integrated Gradients) share
        chunked passes of at most ``max_gradient_batch`` images (``methods.engine``).
        Classification-only requests take one forward pass without gradients.
        """
        inputs = self.model_input([item.image.tensor for item in items])
        explained = [n for n, item in enumerate(items) if item.options.saliency]
        plain = [n for n, item in enumerate(items) if not item.options.saliency]
        rows: list[torch.Tensor | None] = [None] * len(items)  # each item's logits
        targets = [0] * len(items)
        extras: list[dict[str, Any]] = [{} for _ in items]
        pixels = peaks = display = None
        if explained:
            jobs = [self._job(items[n], inputs[n]) for n in explained]
            explanations: list[Explanation] = explain(self.model, jobs, self.context)
            maps = torch.zeros(
                len(items), *inputs.shape[2:], dtype=inputs.dtype, device=self.device
            )
            for n, explanation in zip(explained, explanations, strict=True):
                rows[n] = explanation.logits
                maps[n] = explanation.map
                targets[n] = explanation.target
                extras[n] = explanation.extra
            pixels, peaks = rendering.quantise(maps)
            if any(item.options.colormap != "gray" or item.options.overlay for item in items):
                display = rendering.display_levels(maps, [item.options.clip for item in items])
        if plain:
            for n, row in zip(plain, self.model(inputs[plain]), strict=True):
                rows[n] = row
                targets[n] = int(row.argmax())
        logits = torch.stack(rows)  # type: ignore[arg-type]  # every item has its row now
        probabilities = torch.softmax(logits.float(), dim=1)
        # A model of fewer classes than the request's topk lists them all.
        wanted = min(max(item.options.topk for item in items), probabilities.shape[1])
        top_p, top_i = probabilities.topk(wanted, dim=1)
        index = torch.tensor(targets, device=self.device)
        scores = logits.gather(1, index[:, None]).squeeze(1)
        return _Outputs(
            top_i.tolist(), top_p.tolist(), targets, scores.tolist(), pixels, peaks, display, extras
        )

    def _job(self, item: _Item, inputs: torch.Tensor) -> Job:
        options = item.options
        target = PREDICTED if options.target is None else options.target
        method = METHODS[options.method]
        return Job(inputs, method, options.settings, target, options.objective)

    def _body(self, n: int, item: _Item, outputs: _Outputs, batch_size: int) -> dict:
        options = item.options
        ranked = list(zip(outputs.top_indices[n], outputs.top_probabilities[n], strict=True))
        body: dict[str, Any] = {
            "prediction": self._class(*ranked[0]),
            "topk": [self._class(i, p) for i, p in ranked[: options.topk]],
            "crop_box": list(item.image.crop_box),
            **(
                {"preprocessing": self.config.preprocessing.to_json()}
                if self.config.report_preprocessing
                else {}
            ),
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
                _pictures(
                    outputs.map_pixels[n],
                    outputs.map_peaks[n],
                    None if outputs.display is None else outputs.display[n],
                    options,
                    outputs.extras[n],
                    item.image.crop,
                )
            )
        return body

    def _class(self, index: int, probability: float) -> dict:
        return {"index": index, "label": self.labels[index], "probability": probability}


def _pictures(
    pixels: np.ndarray,
    peak: float,
    display: np.ndarray | None,
    options: Options,
    extra: Mapping[str, Any],
    crop: images.Image.Image,
) -> dict:
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
    pictures["saliency"].update(METHODS[options.method].describe(options.settings), **extra)
    if display is not None and (options.colormap != "gray" or options.overlay):
        colored = rendering.colorize(display, options.colormap)
        if options.colormap != "gray":
            pictures["heatmap"] = {
                "png": rendering.png_base64(colored),
                "colormap": options.colormap,
                "clip": options.clip,
            }
        if options.overlay:
            pictures["overlay"] = {
                "png": rendering.png_base64(rendering.blend(crop, colored, display)),
                "colormap": options.colormap,
                "clip": options.clip,
                "alpha": rendering.OVERLAY_ALPHA,
            }
    return pictures


def _within_budget(items: list[_Item], budget: int) -> tuple[list[_Item], list[_Item]]:
    """(admitted, deferred): the batch's requests in arrival order while their passes fit in
    ``budget``, the first always; from the first that does not fit on, the rest wait (first come,
    first served: a large request is not overtaken by smaller ones behind it)."""
    total = 0
    for n, item in enumerate(items):
        total += passes(item.options)
        if n and total > budget:
            return items[:n], items[n:]
    return items, []


def _internal_error() -> Answer:
    error = RequestError("internal_error", "The server failed on this request; it was logged.", 500)
    return Answer(error.status, error.to_json())
