"""``scripts/bench.py``'s Markdown report: pure functions of the measured data.

Figures and ratios only: the goals they are read against are in docs/benchmarks.md.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saliency_service import rendering

from .inprocess import Timing, med
from .levers import SERVED_GRAY_ENCODER
from .load import Cell
from .modes import CONCURRENCY, Mode
from .serving import VARIANTS

Cells = Mapping[tuple[str, int], Cell]
# What the profiler's operator names are, for the table of where the saliency pass spends its time.
OPERATORS = {
    "aten::mkldnn_convolution": "convolutions, forward",
    "aten::convolution_backward": "convolutions, input gradient (transposed convolutions)",
    "aten::threshold_backward": "ReLU backward (gradient times the ReLU mask)",
    "aten::max_pool2d_with_indices": "max pooling, forward (keeps the argmax indices)",
    "aten::max_pool2d_with_indices_backward": "max pooling, backward (scatter to the argmax)",
    "aten::cat": "Fire modules' concatenation, forward",
    "aten::clamp_min_": "ReLU, forward",
    "aten::fill_": "zero-filling gradient buffers (max pooling backward)",
    "aten::abs": "saliency map: absolute value",
    "aten::amax": "saliency map: max over colour channels",
}
LOAD_NOTE = (
    "The load generator (Python threads, http.client, kept-alive connections) runs on the "
    "same cores as TorchServe's front end and worker, so every end-to-end number includes "
    "its cost."
)


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def ratio(a: float, b: float, digits: int = 2) -> str:
    """``a / b`` formatted; "n/a" where either is NaN or ``b`` is 0."""
    return fmt(a / b, digits) if a == a and b == b and b else "n/a"


def rate_range(cell: Cell, digits: int = 1, always: bool = True) -> str:
    """req/s over all slices, and the per-slice range (with one slice too if ``always``)."""
    rates = cell.rates
    shown = rates and (always or len(rates) > 1)
    spread = f" ({fmt(min(rates), digits)}-{fmt(max(rates), digits)})" if shown else ""
    return fmt(cell.rate, digits) + spread


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command as the report shows it: --no-write is how it was run, not what it measured."""
    return shlex.join([".venv/bin/python", script, *(a for a in argv if a != "--no-write")])


def header(
    command: str, mode: str, info: Mapping[str, Any], photos: str = "Photos", cpu: bool = True
) -> list[str]:
    """Command, date, machine and load of a run (Markdown hard line breaks)."""
    machine = info["machine"]
    capability = f" (CPU capability {machine['capability']})" if cpu else ""
    return [
        f"Command: `{command}` ({mode} mode)  ",
        f"Date: {info['date']}  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores{capability}; Python "
        f"{machine['python']}; {machine['versions']}; torch threads {machine['threads']}  ",
        f"Load average (1/5/15 min) at start: {info['load_start']}; at end: {info['load_end']}  ",
        f"{photos}: {', '.join(info['photos'])}  ",
    ]


# --- end to end ---------------------------------------------------------------------------------


def end_to_end_table(served: Mapping[str, Any]) -> list[str]:
    cells, labels = served["cells"], served["labels"]
    check = served["check"]
    out = [
        "### End to end (all contenders on one TorchServe, production config)",
        "",
        "Batch settings as served: "
        + "; ".join(f"{model}: {text}" for model, text in served["settings"].items())
        + f". Top-1 class agreement stock vs ours: {check['agree']}/{len(check['photos'])} "
        "photos.",
        "",
        "| contender | concurrency | requests | req/s (per-round range) | p50 ms | p95 ms "
        "| p99 ms | mean response bytes | errors |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for concurrency in CONCURRENCY:
        for key in ("a_stock", "a_ours", "b", "c"):
            cell = cells.get((key, concurrency))
            if cell is None:
                if key == "c":
                    out.append(
                        f"| {labels[key]} | {concurrency} | 0 | not measured in this mode "
                        "| | | | | |"
                    )
                continue
            out.append(
                f"| {labels[key]} | {concurrency} | {cell.requests} | "
                f"{rate_range(cell, 2 if key == 'c' else 1, always=False)} | "
                f"{fmt(cell.percentile(50), 0)} | {fmt(cell.percentile(95), 0)} | "
                f"{fmt(cell.percentile(99), 0)} | {fmt(cell.mean_bytes, 0)} | {cell.errors} |"
            )
    return out


def ratio_table(cells: Cells) -> list[str]:
    out = [
        "Ratios (throughput and mean response size):",
        "",
        "| concurrency | b/a throughput (stock) | b/a throughput (ours, no map) | "
        "b/c throughput | c/b response size | b/a response size (stock) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency in CONCURRENCY:
        b, a = cells[("b", concurrency)], cells[("a_stock", concurrency)]
        o, c = cells[("a_ours", concurrency)], cells.get(("c", concurrency))
        out.append(
            f"| {concurrency} | {fmt(b.rate / a.rate, 2)} | {fmt(b.rate / o.rate, 2)} | "
            f"{fmt(b.rate / c.rate, 0) + 'x' if c else 'n/a'} | "
            f"{fmt(c.mean_bytes / b.mean_bytes, 0) + 'x' if c else 'n/a'} | "
            f"{fmt(b.mean_bytes / a.mean_bytes, 0)}x |"
        )
    return out


def server_lever_table(cells: Cells) -> list[str]:
    out = [
        "Server settings as a lever (both contenders of a row on one server, in the same "
        "round-robin as the main table; each setting at the concurrency where it matters, "
        "after the production server's row at that concurrency):",
        "",
        "| server setting | concurrency | (a) stock req/s | (b) ours req/s | b/a | (a) p50 ms "
        "| (b) p50 ms | (b) p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency in sorted({c for v in VARIANTS[1:] for c in v.concurrencies}):
        for variant in VARIANTS:
            if variant.key and concurrency not in variant.concurrencies:
                continue
            suffix = f"@{variant.key}" if variant.key else ""
            a = cells.get((f"a_stock{suffix}", concurrency))
            b = cells.get((f"b{suffix}", concurrency))
            if a is None or b is None:
                continue
            out.append(
                f"| {variant.label} | {concurrency} | {fmt(a.rate)} | {fmt(b.rate)} | "
                f"{fmt(b.rate / a.rate, 2)} | {fmt(a.percentile(50), 0)} | "
                f"{fmt(b.percentile(50), 0)} | {fmt(b.percentile(95), 0)} |"
            )
    return out


# --- in process ---------------------------------------------------------------------------------


def median_stages(timings: Sequence[Timing]) -> dict[str, float]:
    """Median milliseconds per batch: each pipeline stage, the whole call and its JSON."""
    stages = {name: med([t.stages[name] for t in timings]) for name in timings[0].stages}
    stages["handle_batch"] = med([t.seconds for t in timings])
    stages["json"] = med([t.json_seconds for t in timings])
    return stages


def stage_table(entries: Sequence[Mapping[str, Any]], repeats: int) -> list[str]:
    """Per batch size: the pipeline's own stages of a class + map batch, the model stage of a
    classification batch, and each path per image (``handle_batch`` and JSON)."""
    out = [
        f"### In process (server stopped): milliseconds per batch, median of {repeats} runs",
        "",
        "Stages as `SaliencyService.handle_batch` reports them (`last_report`), for a batch of "
        "raw photos (class + default map) and, alternated with it, of `saliency=false` requests "
        "(classification); JSON is the handler's `json.dumps` of the answers; per image: "
        "`handle_batch` + JSON over the batch.",
        "",
        "| batch | decode + preprocess | forward (classification) | forward + input gradient "
        "| encode (PNG, answer) | JSON | saliency path per image | classification path per "
        "image |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in entries:
        n = entry["batch"]
        maps = median_stages(entry["saliency"])
        plain = median_stages(entry["classification"])
        out.append(
            f"| {n} | {fmt(maps['decode'])} | {fmt(plain['forward_backward'])} | "
            f"{fmt(maps['forward_backward'])} | {fmt(maps['encode'])} | {fmt(maps['json'])} | "
            f"{fmt((maps['handle_batch'] + maps['json']) / n)} | "
            f"{fmt((plain['handle_batch'] + plain['json']) / n)} |"
        )
    return out


def gradient_paragraph(measured: Mapping[str, Any], runs: int) -> list[str]:
    times = measured["times"]
    return [
        "Forward + input gradient (`vanilla_saliency`) / forward alone (inference mode), "
        f"batch 8, served channels_last layout, {runs} alternated runs: median "
        f"{fmt(measured['median_ratio'], 2)} (best-of {fmt(measured['best_ratio'], 2)}, median "
        f"of paired runs {fmt(measured['paired_median'], 2)}); forward "
        f"{fmt(med(times['forward']))} ms, forward + gradient {fmt(med(times['fwd_grad']))} ms. "
        "The same forward in PyTorch's default NCHW layout (what the stock handler runs): "
        f"{fmt(med(times['forward_nchw']))} ms, so our forward + gradient costs "
        f"{fmt(measured['vs_nchw_forward'], 2)} x the stock handler's forward."
    ]


def operator_table(profile: Mapping[str, Any]) -> list[str]:
    total = profile["total_ms"]
    out = [
        "Where the saliency pass (batch 8, channels_last) spends its time: self CPU time per "
        f"operator from `torch.profiler`, {fmt(total)} ms per batch in all "
        "(profiler overhead included):",
        "",
        "| operator | what it is | ms per batch | share |",
        "|---|---|---:|---:|",
    ]
    for name, ms in profile["top"]:
        out.append(
            f"| `{name}` | {OPERATORS.get(name, '')} | {fmt(ms)} | {100 * ms / total:.0f}% |"
        )
    return out


def lever_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The timed levers; then the PNG encoders and torch.compile, if measured."""
    out = [
        "### Levers, in process (median ms over alternated runs; best-of in brackets)",
        "",
        "| what | variant | median ms | best ms | vs current | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    extra = {"png": png_table, "compile": compile_paragraph}
    for row in rows:
        if row["group"] not in extra:
            out.append(
                f"| {row['group']} | {row['variant']} | {fmt(row['median_ms'])} | "
                f"{fmt(row['best_ms'])} | {fmt(row['vs_base'], 2)} | {row['note']} |"
            )
    for row in rows:
        if row["group"] in extra:
            out += ["", *extra[row["group"]](row)]
    return out


def png_table(row: Mapping[str, Any]) -> list[str]:
    out = [
        "PNG encoding of the 224x224 maps (ms per map, bytes per PNG before base64):",
        "",
        "| encoder | gray map ms | gray bytes | hot RGB ms | hot RGB bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    served = {"gray": SERVED_GRAY_ENCODER, "hot": f"Pillow, level {rendering.PNG_COMPRESS_LEVEL}"}
    by = {(p["encoder"], p["colour"]): p for p in row["rows"]}
    for name in dict.fromkeys(p["encoder"] for p in row["rows"]):
        columns = []
        for colour in ("gray", "hot"):
            found = by.get((name, colour))
            mark = " [current]" if name == served[colour] else ""
            columns += (
                [f"{fmt(found['ms_per_map'], 2)}{mark}", fmt(found["bytes"], 0)]
                if found
                else ["", ""]
            )
        out.append(f"| {name} | " + " | ".join(columns) + " |")
    return out


def compile_paragraph(row: Mapping[str, Any]) -> list[str]:
    firsts = ", ".join(f"batch {k}: {fmt(v, 1)} s" for k, v in row["firsts"].items())
    times, forward = row["times"], row["forward"]
    return [
        "torch.compile (inductor, default mode) of the model, forward + input gradient: time to "
        f"first answer {firsts}, in this order, cold inductor cache (a first call that takes "
        "about a second reused a graph; one that takes tens of seconds compiled one). Steady "
        f"state at batch 8: eager {fmt(med(times['eager']))} ms, compiled "
        f"{fmt(med(times['compiled']))} ms; forward alone eager {fmt(med(forward['eager']))} "
        f"ms, compiled {fmt(med(forward['compiled']))} ms; map rank correlation compiled vs "
        f"eager >= {row['corr']:.4f}."
    ]


def in_process_section(process: Mapping[str, Any], repeats: int) -> list[str]:
    return [
        *stage_table(process["stages"], repeats),
        "",
        *gradient_paragraph(process["ratio"], repeats * 3),
        "",
        *operator_table(process["ratio"]["profile"]),
        "",
        *lever_table(process["levers"]),
        "",
    ]


def render(
    command: str,
    mode: Mode,
    info: Mapping[str, Any],
    served: Mapping[str, Any] | None,
    process: Mapping[str, Any] | None,
    note: str,
) -> str:
    """The whole report of ``scripts/bench.py``."""
    out = header(command, mode.name, info)
    if note:
        out.append(f"Note: {note}  ")
    out += [LOAD_NOTE, ""]
    if served:
        out += [*end_to_end_table(served), "", *ratio_table(served["cells"]), ""]
        if any("@" in key for key, _ in served["cells"]):
            out += [*server_lever_table(served["cells"]), ""]
    if process:
        out += in_process_section(process, mode.repeats)
    return "\n".join(out)


# --- --arch -------------------------------------------------------------------------------------


def render_arch(
    command: str, info: Mapping[str, Any], results: Sequence[Mapping[str, Any]], concurrency: int
) -> str:
    """A Markdown table: one row per architecture, saliency / plain req/s and worker memory."""
    out = [
        f"Command: `{command}`; {info['date']}; {info['machine']['cpu']}, "
        f"{info['machine']['cores']} cores; load average {info['load_start']} -> "
        f"{info['load_end']}; concurrency {concurrency}; random weights, "
        f"{results[0]['batching'] if results else ''}.",
        "",
        "| model | parameters | plain req/s (per-slice range) | saliency req/s (per-slice range) "
        "| saliency / plain | p50 ms plain / saliency | worker VmRSS / VmHWM MiB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        plain, maps = row["cells"]["plain"], row["cells"]["saliency"]
        mib = {k: v / 1024 for k, v in row["memory"].items()}
        out.append(
            f"| {row['arch']} | {row['params'] / 1e6:.1f} M | {rate_range(plain)} | "
            f"{rate_range(maps)} | {ratio(maps.rate, plain.rate)} | "
            f"{fmt(plain.percentile(50), 0)} / {fmt(maps.percentile(50), 0)} | "
            f"{fmt(mib.get('VmRSS', math.nan), 0)} / {fmt(mib.get('VmHWM', math.nan), 0)} | "
            f"{plain.errors + maps.errors} |"
        )
    return "\n".join(out) + "\n"


# --- the file -----------------------------------------------------------------------------------


def write_between_markers(path: Path, block: str, begin: str, end: str, heading: str) -> None:
    """Replace the text between the markers, or append ``heading`` and the markers around
    ``block``; the rest of the file is kept."""
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{block}{end}{rest.split(end, 1)[1]}"
    else:
        text = f"{text.rstrip()}\n\n{heading}\n\n{begin}\n{block}{end}\n".lstrip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
