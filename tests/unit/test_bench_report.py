"""The benchmarks' Markdown reports, rendered from constructed measurements with known ratios.

No server and no timing: every figure below is made up, so each expected cell follows by hand.
"""

from __future__ import annotations

from pathlib import Path

from saliency_service import rendering
from saliency_tools.bench import methods_report as mr
from saliency_tools.bench import report
from saliency_tools.bench.inprocess import Timing
from saliency_tools.bench.levers import SERVED_GRAY_ENCODER
from saliency_tools.bench.load import Cell, Slice
from saliency_tools.bench.maps import MapAgreement
from saliency_tools.bench.modes import CONCURRENCY, QUICK
from saliency_tools.bench.served import contenders
from saliency_tools.bench.serving import OURS, VARIANTS
from saliency_tools.bench.stock import STOCK

MACHINE = {
    "cpu": "Test CPU",
    "cores": "2",
    "threads": "2 intra-op, 2 inter-op",
    "python": "3.11.7",
    "versions": "torch 2.0",
    "capability": "AVX512",
}
INFO = {
    "date": "today",
    "machine": MACHINE,
    "load_start": "0.5 0.5 0.5",
    "load_end": "1.0 1.0 1.0",
    "photos": ["cat.jpg 10x10"],
}


def cell(rate: float, size: int, latency: float = 0.1, requests: int = 20) -> Cell:
    """One slice of ``requests`` answers at ``rate`` req/s, each ``size`` bytes."""
    return Cell([Slice([latency] * requests, [size] * requests, 0, requests / rate)])


def table_row(text: str, header: str, first_cell: str) -> list[str]:
    """The cells of the first row starting with ``first_cell`` in a table under ``header``."""
    lines = text.splitlines()
    for start in (n for n, line in enumerate(lines) if line.startswith(header)):
        for line in lines[start + 2 :]:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == first_cell:
                return cells
    raise AssertionError(f"no row {first_cell!r} under {header!r}")


# --- scripts/bench.py: end to end ---------------------------------------------------------------


def served(captum_at: tuple[int, ...] = CONCURRENCY, levers: bool = False) -> dict:
    rates = {"a_stock": 40.0, "a_ours": 50.0, "b": 36.0, "c": 0.5}
    sizes = {"a_stock": 180, "a_ours": 500, "b": 45_000, "c": 4_500_000}
    cells = {
        (k, c): cell(rates[k], sizes[k])
        for k in rates
        for c in CONCURRENCY
        if k != "c" or c in captum_at
    }
    if levers:
        for variant in VARIANTS[1:]:
            for concurrency in variant.concurrencies:
                cells[(f"a_stock@{variant.key}", concurrency)] = cell(30.0, 180)
                cells[(f"b@{variant.key}", concurrency)] = cell(24.0, 45_000, latency=0.2)
    batching = "batchSize 8, maxBatchDelay 20 ms, 1 worker"
    return {
        "settings": {OURS: batching, STOCK: batching},
        "cells": cells,
        "labels": {k: c.label for k, c in contenders([]).items()},
        "check": {"agree": 2, "photos": ["a", "b"], "captum_shape": (3, 224, 224)},
    }


def test_ratios_of_throughput_and_size_per_concurrency() -> None:
    text = "\n".join(report.ratio_table(served()["cells"]))
    header = "| concurrency | b/a throughput"
    # b/a = 36/40, b/a' = 36/50, b/c = 36/0.5, sizes c/b = 4.5 MB/45 KB, b/a = 45 KB/180 B
    assert table_row(text, header, "8") == ["8", "0.90", "0.72", "72x", "100x", "250x"]
    without = "\n".join(report.ratio_table(served(captum_at=(1, 8))["cells"]))
    assert table_row(without, header, "32")[3:5] == ["n/a", "n/a"]


def test_end_to_end_rows_and_what_was_not_measured() -> None:
    text = "\n".join(report.end_to_end_table(served(captum_at=(1, 8))))
    header = "| contender | concurrency"
    b = table_row(text, header, "(b) ours, class + saliency map")
    # 20 answers in 20/36 s, latencies all 100 ms, 45,000 bytes each, no errors
    assert b[1:] == ["1", "20", "36.0", "100", "100", "100", "45,000", "0"]
    captum = [line for line in text.splitlines() if line.startswith("| (c)")]
    assert [line.split("|")[2].strip() for line in captum] == ["1", "8", "32"]
    assert "not measured in this mode" in captum[2] and "0.50" in captum[1]
    assert f"{OURS}: batchSize 8, maxBatchDelay 20 ms, 1 worker" in text
    assert "Top-1 class agreement stock vs ours: 2/2 photos." in text


def test_server_settings_rows_only_where_each_setting_matters() -> None:
    text = "\n".join(report.server_lever_table(served(levers=True)["cells"]))
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ")][1:]
    shown = [(label.strip(), int(c)) for label, c in rows]
    assert shown[:3] == [(VARIANTS[0].label, 1), ("maxBatchDelay 5 ms", 1), (VARIANTS[0].label, 8)]
    assert ("batchSize 16", 32) in shown and ("batchSize 16", 8) not in shown
    one_thread = table_row(text, "| server setting", "1 worker, OMP_NUM_THREADS=1")
    assert one_thread[1:8] == ["8", "30.0", "24.0", "0.80", "100", "200", "200"]


def test_the_report_has_a_server_lever_table_only_with_extra_servers() -> None:
    quick = report.render("cmd", QUICK, INFO, served(), None, "")
    full = report.render("cmd", QUICK, INFO, served(levers=True), None, "a note")
    assert "Server settings as a lever" not in quick
    assert "Server settings as a lever" in full and "Note: a note  " in full
    assert "Machine: Test CPU, 2 cores (CPU capability AVX512); Python 3.11.7;" in quick
    assert "### In process" not in quick


# --- scripts/bench.py: in process ---------------------------------------------------------------


def timing(seconds: float, decode: float, model: float, encode: float, json: float) -> Timing:
    return Timing(seconds, {"decode": decode, "forward_backward": model, "encode": encode}, json)


def process() -> dict:
    saliency = [  # medians: 0.22 s per call, stages 0.02 / 0.15 / 0.03, JSON 0.004
        timing(0.20, 0.02, 0.15, 0.03, 0.004),
        timing(0.50, 0.09, 0.40, 0.01, 0.009),
        timing(0.22, 0.01, 0.14, 0.04, 0.002),
    ]
    classification = [timing(0.088, 0.02, 0.06, 0.001, 0.0008)]
    ratio = {
        "times": {"forward": [0.04, 0.05], "fwd_grad": [0.1, 0.1], "forward_nchw": [0.09]},
        "median_ratio": 2.2222,
        "best_ratio": 2.5,
        "paired_median": 2.25,
        "vs_nchw_forward": 1.1111,
        "profile": {
            "total_ms": 80.0,
            "top": [("aten::convolution_backward", 30.0), ("aten::unheard_of", 10.0)],
        },
    }
    png_rows = [
        {"encoder": SERVED_GRAY_ENCODER, "colour": "gray", "ms_per_map": 0.5, "bytes": 9e3},
        {"encoder": "Pillow, level 0", "colour": "gray", "ms_per_map": 0.25, "bytes": 5e4},
        {"encoder": "Pillow, level 0", "colour": "hot", "ms_per_map": 0.75, "bytes": 1.5e5},
    ]
    lever_rows = [
        {
            "group": "gradient (batch 8)",
            "variant": "frozen [current]",
            "median_ms": 100.0,
            "best_ms": 90.0,
            "vs_base": 1.0,
            "note": "",
        },
        {"group": "png", "rows": png_rows},
        {
            "group": "gradient (batch 8)",
            "variant": "loss.backward()",
            "median_ms": 150.0,
            "best_ms": 140.0,
            "vs_base": 1.5,
            "note": "textbook",
        },
        {
            "group": "compile",
            "firsts": {8: 37.94, 1: 0.21},
            "times": {"eager": [0.1115], "compiled": [0.2851]},
            "forward": {"eager": [0.048], "compiled": [0.0388]},
            "corr": 0.99995,
        },
    ]
    stages = [{"batch": 8, "saliency": saliency, "classification": classification}]
    return {"stages": stages, "ratio": ratio, "levers": lever_rows}


def test_stage_table_reads_the_pipeline_stages_medians() -> None:
    text = "\n".join(report.stage_table(process()["stages"], 3))
    row = table_row(text, "| batch |", "8")
    # decode, classification model, saliency model, encode, JSON (medians, ms), then per image:
    # (220 + 4) / 8 and (88 + 0.8) / 8; means would give other figures
    assert row == ["8", "20.0", "60.0", "150.0", "30.0", "4.0", "28.0", "11.1"]
    assert text.startswith("### In process (server stopped): milliseconds per batch, median of 3")


def test_gradient_ratio_and_operator_shares() -> None:
    text = "\n".join(report.in_process_section(process(), 2))
    assert "6 alternated runs: median 2.22 (best-of 2.50, median of paired runs 2.25)" in text
    assert "forward 45.0 ms, forward + gradient 100.0 ms" in text
    assert "(what the stock handler runs): 90.0 ms, so our forward + gradient costs 1.11 x" in text
    operator = table_row(text, "| operator |", "`aten::convolution_backward`")
    assert operator[2:] == ["30.0", "38%"]  # 30 of 80 ms
    assert table_row(text, "| operator |", "`aten::unheard_of`")[1:] == ["", "10.0", "12%"]


def test_lever_rows_then_png_encoders_and_compile() -> None:
    text = "\n".join(report.lever_table(process()["levers"]))
    header = "| what | variant"
    assert table_row(text, header, "gradient (batch 8)")[1:] == [
        "frozen [current]",
        "100.0",
        "90.0",
        "1.00",
        "",
    ]
    lines = text.splitlines()
    textbook = "| gradient (batch 8) | loss.backward() | 150.0 | 140.0 | 1.50 | textbook |"
    png_heading = "PNG encoding of the 224x224 maps (ms per map, bytes per PNG before base64):"
    assert lines.index(textbook) < lines.index(png_heading)  # the timed rows stay one table
    served = table_row(text, "| encoder |", SERVED_GRAY_ENCODER)
    assert served[1:] == ["0.50 [current]", "9,000", "", ""]  # never used for colour maps
    pillow = table_row(text, "| encoder |", "Pillow, level 0")
    hot_mark = " [current]" if rendering.PNG_COMPRESS_LEVEL == 0 else ""
    assert pillow[1:] == ["0.25", "50,000", f"0.75{hot_mark}", "150,000"]
    assert "time to first answer batch 8: 37.9 s, batch 1: 0.2 s, in this order" in text
    assert "eager 111.5 ms, compiled 285.1 ms; forward alone eager 48.0 ms" in text
    assert "map rank correlation compiled vs eager >= 1.0000." in text


def test_the_report_gives_figures_not_verdicts() -> None:
    text = report.render("cmd", QUICK, INFO, served(levers=True), process(), "")
    assert "Targets" not in text and "| met |" not in text
    for heading in ("### End to end", "### In process", "### Levers"):
        assert heading in text


# --- scripts/bench.py --arch --------------------------------------------------------------------


def test_the_arch_table_gives_the_ratio_and_the_memory() -> None:
    row = {
        "arch": "resnet50",
        "params": 25_557_032,
        "cells": {"plain": cell(10.0, 500), "saliency": cell(4.0, 45_000)},
        "memory": {"VmRSS": 700 * 1024, "VmHWM": 900 * 1024},
        "batching": "batchSize 8, maxBatchDelay 20 ms, 1 worker",
    }
    table = report.render_arch("bench.py --arch resnet50", INFO, [row], 8)
    assert "| resnet50 | 25.6 M | 10.0 (10.0-10.0) | 4.0 (4.0-4.0) | 0.40 | 100 / 100 " in table
    assert "| 700 / 900 | 0 |" in table and "concurrency 8" in table
    no_memory = report.render_arch("cmd", INFO, [{**row, "memory": {}}], 8)
    assert "| n/a / n/a | 0 |" in no_memory


# --- scripts/bench_methods.py -------------------------------------------------------------------


def methods_results() -> dict:
    rates = {"ig_ours": 4.0, "ig_captum": 0.5, "classify": 50.0, "gradcam": 45.0, "vanilla": 30.0}
    sizes = {"ig_ours": 40_000, "ig_captum": 4_000_000, "classify": 500}
    sizes |= {"gradcam": 50_000, "vanilla": 45_000}
    latency = {"ig_ours": 0.5, "ig_captum": 6.0}
    cells = {
        (name, c): cell(rates[name], sizes[name], latency.get(name, 0.1))
        for name in rates
        for c in mr.CONCURRENCY
    }
    maps = [MapAgreement("cat.jpg", 285, "Egyptian cat", 0.9901, 0.9902, 0.99999, 0.0, -0.4)]
    labels = {
        "ig_ours": "ours, integrated_gradients (steps 15, zero)",
        "ig_captum": "stock /explanations (Captum IG, 15 steps)",
        "classify": "ours, saliency=false",
        "gradcam": "ours, gradcam",
        "vanilla": "ours, vanilla",
    }
    return {
        "archive": "model_store (current)",
        "settings": {OURS: "batchSize 8", STOCK: "batchSize 8"},
        "maps": maps,
        "cells": cells,
        "labels": labels,
    }


def test_methods_report_ratios_from_constructed_numbers() -> None:
    costs = [
        mr.Cost("vanilla", "-", [0.16, 0.24], {"decode": 0.04, "forward_backward": 0.1}),
        mr.Cost("smoothgrad", "samples 25", [4.0, 4.4], {"decode": 0.04, "forward_backward": 4}),
    ]
    text = mr.render("cmd", "quick", INFO, methods_results(), costs)

    ig = table_row(text, "| concurrency | throughput ours / Captum", "8")
    assert ig == ["8", "8.0 x", "12.0 x", "100 x"]  # 4 / 0.5 req/s, 6 / 0.5 s, 4 MB / 40 KB
    trio = table_row(text, "| concurrency | gradcam / classification", "1")
    assert trio == ["1", "0.90", "0.60", "1.50"]
    load = table_row(text, "| contender | concurrency", "ours, gradcam")
    assert load[1:4] == ["8", "20", "45.0"] and load[6] == "50,000"
    captum = table_row(
        text, "| contender | concurrency", "stock /explanations (Captum IG, 15 steps)"
    )
    assert captum[3] == "0.50"  # under 10 req/s: two decimals
    vanilla = table_row(text, "| method | settings", "vanilla")
    assert vanilla[2:6] == ["0.025", "0.020", "1.0", "5.0 / 12.5"]  # median 0.2 s / 8 images
    smooth = table_row(text, "| method | settings", "smoothgrad")
    assert smooth[2] == "0.525" and smooth[4] == "21.0"  # 4.2 / 0.2
    assert "Lowest ours vs Captum: 0.9901 (cat.jpg, class 285)" in text
    assert "Machine: Test CPU, 2 cores; Python" in text  # no CPU capability in this one
    assert "Photos under load: cat.jpg 10x10  " in text


def test_methods_report_without_a_server_has_the_costs_only() -> None:
    cost = mr.Cost("gradcam", "-", [0.08], {"decode": 0.04})
    text = mr.render("cmd", "full", INFO, None, [cost])
    assert "Captum" not in text and "(full mode)" in text
    assert table_row(text, "| method | settings", "gradcam")[2:5] == ["0.010", "0.010", "n/a"]


# --- the file and the command -------------------------------------------------------------------


def test_write_between_markers_appends_once_then_replaces(tmp_path: Path) -> None:
    begin, end = "<!-- x:begin -->", "<!-- x:end -->"
    doc = tmp_path / "docs" / "benchmarks.md"
    report.write_between_markers(doc, "first run\n", begin, end, "## Results")
    assert doc.read_text() == f"## Results\n\n{begin}\nfirst run\n{end}\n"

    doc.write_text("# Benchmarks\n\nearlier text\n")
    report.write_between_markers(doc, "first run\n", begin, end, "## Results")
    report.write_between_markers(doc, "second run\n", begin, end, "## Results")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nearlier text\n\n## Results\n")
    assert text.count("## Results") == 1 and "first run" not in text
    assert f"{begin}\nsecond run\n{end}" in text

    doc.write_text(f"intro\n{begin}\nold\n{end}\nafter\n")
    report.write_between_markers(doc, "new\n", begin, end, "## Results")
    assert doc.read_text() == f"intro\n{begin}\nnew\n{end}\nafter\n"


def test_the_command_shown_leaves_out_no_write() -> None:
    shown = report.command_line("scripts/bench.py", ["--quick", "--no-write", "--note", "a b"])
    assert shown == ".venv/bin/python scripts/bench.py --quick --note 'a b'"
