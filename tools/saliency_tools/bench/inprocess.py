"""Timing in process (no server): what the pipeline's stages cost, and the model's passes.

The stages of ``SaliencyService.handle_batch`` (decode + preprocess, forward and backward,
encode) are the pipeline's own timings, ``service.last_report.seconds``, read after each call:
this module times whole calls and the model's passes, never re-implements a stage to time it.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from saliency_service import images
from saliency_service.attribution import vanilla_saliency
from saliency_service.pipeline import Answer, BatchReport
from saliency_tools.ranks import spearman

from .load import rotated
from .photos import Photo, batch_rows


class Service(Protocol):
    """What is timed of a ``SaliencyService``: a batch, and its report of that batch."""

    last_report: BatchReport

    def handle_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Answer]: ...


@dataclass(frozen=True)
class Timing:
    """One ``handle_batch`` call: its seconds, the pipeline's own stage seconds, and the JSON
    serialisation of its answers (the TorchServe adapter's step, outside the pipeline)."""

    seconds: float
    stages: dict[str, float]
    json_seconds: float


def time_batches(
    service: Service, batches: Mapping[str, Sequence[Mapping[str, Any]]], repeats: int
) -> dict[str, list[Timing]]:
    """``repeats`` timed ``handle_batch`` calls of each named batch of request rows, the batches
    taking turns in rotating order, after one untimed call each; a failed answer raises."""
    names = list(batches)

    def call(name: str) -> Timing:
        start = time.perf_counter()
        answers = service.handle_batch(batches[name])
        middle = time.perf_counter()
        for answer in answers:
            json.dumps(answer.body, separators=(",", ":")).encode()
        end = time.perf_counter()
        failed = [a.body for a in answers if a.status != 200]
        if failed:
            raise RuntimeError(f"{name}: {failed[0]}")
        return Timing(middle - start, dict(service.last_report.seconds), end - middle)

    for name in names:
        call(name)
    timings: dict[str, list[Timing]] = {name: [] for name in names}
    for r in range(repeats):
        for name in rotated(names, r):
            timings[name].append(call(name))
    return timings


def stage_breakdown(
    service: Service, photos: list[Photo], batches: Sequence[int], repeats: int
) -> list[dict[str, Any]]:
    """Per batch size: ``handle_batch`` of raw photos (class + default map) and of
    ``saliency=false`` requests (classification only), alternated."""
    results = []
    for size in batches:
        data = batch_rows(photos, size)
        rows = {
            "saliency": [{"body": d} for d in data],
            "classification": [{"image": d, "saliency": "false"} for d in data],
        }
        results.append({"batch": size, **time_batches(service, rows, repeats)})
    return results


def alternate(funcs: Mapping[Any, Callable[[], Any]], repeats: int) -> dict[Any, list[float]]:
    """Seconds per call of each function, called in rotating order (one warm-up call each)."""
    for func in funcs.values():
        func()
    names = list(funcs)
    times: dict[Any, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in rotated(names, r):
            start = time.perf_counter()
            funcs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def med(values: Sequence[float]) -> float:
    """The median of seconds, in milliseconds."""
    return statistics.median(values) * 1000


def best(values: Sequence[float]) -> float:
    """The least of seconds, in milliseconds."""
    return min(values) * 1000


def lowest_rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """The lowest Spearman rank correlation (ties averaged) of paired maps ``(N, H, W)``."""
    return float(spearman(a.detach().double(), b.detach().double()).min())


def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def saliency(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return vanilla_saliency(model, x).maps


def contiguous_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model in PyTorch's default (NCHW) layout, as the stock handler runs it."""
    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


def photo_batch(photos: list[Photo], size: int) -> torch.Tensor:
    """A preprocessed batch in the served (channels_last) layout; ``.contiguous()`` gives NCHW."""
    decoded = [images.decode(d) for d in batch_rows(photos, size)]
    stacked = torch.stack([images.preprocess(image).tensor for image in decoded])
    return stacked.contiguous(memory_format=torch.channels_last)


def gradient_ratio(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Forward + input gradient / forward, both in the served layout; and / an NCHW forward."""
    nchw, x_nchw = contiguous_copy(model), x.contiguous()
    times = alternate(
        {
            "forward": lambda: forward(model, x),
            "fwd_grad": lambda: saliency(model, x),
            "forward_nchw": lambda: forward(nchw, x_nchw),
        },
        repeats,
    )
    pairs = [g / f for f, g in zip(times["forward"], times["fwd_grad"], strict=True)]
    return {
        "times": times,
        "median_ratio": med(times["fwd_grad"]) / med(times["forward"]),
        "best_ratio": best(times["fwd_grad"]) / best(times["forward"]),
        "paired_median": statistics.median(pairs),
        "vs_nchw_forward": med(times["fwd_grad"]) / med(times["forward_nchw"]),
    }


def op_profile(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Self CPU time per operator of the saliency pass, ms per batch (with profiler overhead)."""
    from torch.profiler import ProfilerActivity, profile

    saliency(model, x)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            saliency(model, x)
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1000 / repeats
    top = [(e.key, e.self_cpu_time_total / 1000 / repeats) for e in events[:9]]
    return {"total_ms": total, "top": top}
