"""``scripts/bench_methods.py``'s Markdown report: pure functions of the measured data.

Figures and ratios only: the goals they are read against are in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .load import Cell
from .maps import MapAgreement
from .report import fmt, header, rate_range, ratio

Cells = Mapping[tuple[str, int], Cell]
CONCURRENCY = (8, 1)
BATCH = 8  # in process: the served batchSize
IG_PAIR = ("ig_ours", "ig_captum")
MAP_TRIO = ("classify", "gradcam", "vanilla")


@dataclass(frozen=True)
class Cost:
    """One contender in process: ``handle_batch`` of BATCH requests."""

    name: str
    settings: str
    seconds: list[float]  # per batch of BATCH images
    stages: dict[str, float]  # median seconds per batch of handle_batch's own stages


def load_table(cells: Cells, labels: Mapping[str, str], names: Sequence[str]) -> list[str]:
    out = [
        "| contender | concurrency | requests | req/s (per-round range) | p50 ms | p95 ms "
        "| mean answer bytes | errors |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for concurrency in CONCURRENCY:
        for name in names:
            cell = cells.get((name, concurrency))
            if cell is None:
                continue
            digits = 2 if cell.rate < 10 else 1
            out.append(
                f"| {labels[name]} | {concurrency} | {cell.requests} | "
                f"{rate_range(cell, digits, always=False)} "
                f"| {fmt(cell.percentile(50), 0)} | {fmt(cell.percentile(95), 0)} "
                f"| {fmt(cell.mean_bytes, 0)} | {cell.errors} |"
            )
    return out


def render_ig(cells: Cells, labels: Mapping[str, str]) -> list[str]:
    out = ["### (i) Integrated Gradients: ours vs the stock `/explanations`", ""]
    out += load_table(cells, labels, IG_PAIR)
    out += [
        "",
        "| concurrency | throughput ours / Captum | p50 latency Captum / ours "
        "| answer bytes Captum / ours |",
        "|---:|---:|---:|---:|",
    ]
    for concurrency in CONCURRENCY:
        ours, captum = cells.get(("ig_ours", concurrency)), cells.get(("ig_captum", concurrency))
        if ours is None or captum is None:
            continue
        out.append(
            f"| {concurrency} | {ratio(ours.rate, captum.rate, 1)} x "
            f"| {ratio(captum.percentile(50), ours.percentile(50), 1)} x "
            f"| {ratio(captum.mean_bytes, ours.mean_bytes, 0)} x |"
        )
    return out


def render_maps(rows: Sequence[MapAgreement]) -> list[str]:
    if not rows:
        return []
    out = [
        "Maps, one request at a time, the same photo and class for both: Spearman rank "
        "correlation of our served map (8-bit PNG) with |sum over channels| of Captum's "
        "attributions; the quantisation ceiling (Captum's own map through our 8-bit "
        "quantisation, against itself); ours against Captum's both at 8 bits; the largest "
        "difference between the two handlers' model inputs; our `delta`.",
        "",
        "| photo | class explained | ours vs Captum | ceiling (8-bit) | both 8-bit "
        "| input max abs diff | our delta |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        out.append(
            f"| {row.photo} | {row.target} {row.label} | {row.served:.4f} | {row.ceiling:.4f} "
            f"| {row.both_8bit:.5f} | {row.input_diff:.2g} | {row.delta:.3f} |"
        )
    lowest = min(rows, key=lambda r: r.served)
    out += [
        "",
        f"Lowest ours vs Captum: {lowest.served:.4f} ({lowest.photo}, class {lowest.target}), "
        f"where the ceiling is {lowest.ceiling:.4f}; lowest both at 8 bits: "
        f"{min(r.both_8bit for r in rows):.5f}.",
    ]
    return out


def render_trio(cells: Cells, labels: Mapping[str, str]) -> list[str]:
    out = ["### (ii) Grad-CAM vs classification only vs vanilla (all multipart)", ""]
    out += load_table(cells, labels, MAP_TRIO)
    out += [
        "",
        "| concurrency | gradcam / classification | vanilla / classification | gradcam / vanilla |",
        "|---:|---:|---:|---:|",
    ]
    for concurrency in CONCURRENCY:
        rate = {n: cells[(n, concurrency)].rate for n in MAP_TRIO if (n, concurrency) in cells}
        if len(rate) < len(MAP_TRIO):
            continue
        out.append(
            f"| {concurrency} | {ratio(rate['gradcam'], rate['classify'])} "
            f"| {ratio(rate['vanilla'], rate['classify'])} "
            f"| {ratio(rate['gradcam'], rate['vanilla'])} |"
        )
    return out


def render_costs(costs: Sequence[Cost]) -> list[str]:
    if not costs:
        return []
    medians = {c.name: float(np.median(c.seconds)) / BATCH for c in costs}
    out = [
        f"### In process: seconds per image at batch {BATCH}",
        "",
        f"`SaliencyService.handle_batch` of {BATCH} requests (decode, preprocess, the method, "
        "PNG and answer), server stopped, PyTorch's default threads; contenders alternated; "
        "median (best) of the timed calls, divided by the batch; and the median split of "
        "`handle_batch`'s own stages (decode + preprocess / model / PNG).",
        "",
        "| method | settings | s per image | best | x vanilla | decode / model / encode ms |",
        "|---|---|---:|---:|---:|---|",
    ]
    for cost in costs:
        split = " / ".join(f"{1000 * seconds / BATCH:.1f}" for seconds in cost.stages.values())
        out.append(
            f"| {cost.name} | {cost.settings} | {medians[cost.name]:.3f} "
            f"| {min(cost.seconds) / BATCH:.3f} "
            f"| {ratio(medians[cost.name], medians.get('vanilla', float('nan')), 1)} | {split} |"
        )
    return out


def render(
    command: str,
    mode: str,
    info: Mapping[str, Any],
    results: Mapping[str, Any] | None,
    costs: Sequence[Cost],
) -> str:
    """The whole report of ``scripts/bench_methods.py``."""
    out = header(command, mode, info, photos="Photos under load", cpu=False)
    if results:
        cells, labels = results["cells"], results["labels"]
        out += [
            f"Our archive: {results['archive']}  ",
            "Batching as served: "
            + "; ".join(f"{m}: {s}" for m, s in results["settings"].items())
            + ". Closed-loop clients (Python threads, kept-alive connections) on the same "
            "cores as the server.",
            "",
            *render_ig(cells, labels),
            "",
            *render_maps(results["maps"]),
            "",
            *render_trio(cells, labels),
        ]
    if costs:
        out += ["", *render_costs(costs)]
    return "\n".join(out) + "\n"
